"""A second truth for CPU training memory: the profiler's allocator events, not the cost model's tracker."""

from __future__ import annotations

import torch


def profiled_step_peak(model, optimizer, batch, cfg=None) -> tuple[int, int]:
    """(peak bytes the CPU allocator held during a second training step, counted from the profiler's memory
    events; bytes of what exists across steps: weights, buffers, optimizer state and the batch)."""
    from torch.profiler import ProfilerActivity, profile

    from planner.cost.measure import training_step

    training_step(model, optimizer, batch, cfg)  # the first step creates the optimizer state
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        training_step(model, optimizer, batch, cfg)
    total = peak = 0
    for event in sorted(prof.profiler.kineto_results.events(), key=lambda e: e.start_ns()):
        if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU:
            total += event.nbytes()
            peak = max(peak, total)
    tensors = list(model.parameters()) + list(model.buffers()) + list(batch.values())
    tensors += [v for st in optimizer.state.values() for v in st.values() if torch.is_tensor(v)]
    return peak, sum(t.numel() * t.element_size() for t in tensors)
