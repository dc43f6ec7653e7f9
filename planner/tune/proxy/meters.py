"""What a proxy run's training uses, evaluations excluded: the peak on CUDA from the caching allocator
(:class:`CudaMeter`), on the CPU from the live tensor bytes, one peak per draw of the layer sampler (:class:`CpuMeter`).
"""

from __future__ import annotations

import contextlib
import gc

import torch

from planner.cost.measure import state_tensors
from planner.cost.tracker import LiveBytesTracker
from planner.sampling import LayerSampler


class CudaMeter:
    """Training peak on CUDA, evaluations excluded (their peaks are read and reset around each one)."""

    def __init__(self):
        self.torch = torch
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info()
        self.free_before = int(free)
        self.outside = int(total - free - torch.cuda.memory_reserved())  # context, other processes
        torch.cuda.reset_peak_memory_stats()
        self.reserved = self.allocated = 0

    def take(self) -> None:
        self.torch.cuda.synchronize()
        self.reserved = max(self.reserved, int(self.torch.cuda.max_memory_reserved()))
        self.allocated = max(self.allocated, int(self.torch.cuda.max_memory_allocated()))

    def after_eval(self) -> None:
        self.torch.cuda.empty_cache()
        self.torch.cuda.reset_peak_memory_stats()

    def result(self) -> dict:
        return {
            "max_reserved_bytes": self.reserved,
            "max_allocated_bytes": self.allocated,
            "device_used_bytes": self.outside + self.reserved,
            "outside_allocator_bytes": self.outside,
            "free_before_bytes": self.free_before,
        }


class CpuMeter:
    """Training peak on the CPU: live tensor bytes (:class:`planner.cost.tracker.LiveBytesTracker`, the measure the
    CPU cost model is held to) of the training steps, one peak per draw of the sampler. Weights and buffers count
    from the start, optimizer state from its creation, each batch from when the step takes it (assembled
    unobserved, as a data loader does, then counted as one contiguous tensor per field); evaluations are not
    observed. Frees follow reference counts (the cyclic collector is paused), as in :func:`planner.cost.measure_training_peak`."""

    def __init__(self):
        self.tracker = LiveBytesTracker()
        self.draws: dict[tuple[int, ...], int] = {}
        self._draw: tuple[int, ...] | None = None
        self._sampler: LayerSampler | None = None  # the run's layer sampler, given by attach

    def attach(self, model, sampler, optimizer) -> None:
        """Count what lives across steps (weights, buffers, the optimizer's own tensors such as bitsandbytes'
        quantization maps); the peak is cut at every new draw of ``sampler`` (:meth:`on_step`)."""
        self.tracker.track(state_tensors(model, optimizer))
        self._sampler = sampler

    def on_step(self, step: int) -> None:
        """The training loop's per-step hook (:func:`planner.sampling.train_layerwise`'s ``on_step``), called once
        the step's layers are drawn: a new draw closes the peak of the one before and starts its own."""
        assert self._sampler is not None, "the meter is attached to the run before its first step"
        draw = tuple(sorted(int(i) for i in self._sampler.active))
        if draw != self._draw:
            self._close()
            self._draw = draw
            self.tracker.reset_peak()

    def batches(self, batches):
        """``batches``, each assembled unobserved and counted from when the step takes it."""
        it = iter(batches)
        while True:
            with self.tracker.suspended():
                try:
                    batch = next(it)
                except StopIteration:
                    return
                batch = {k: v.clone(memory_format=torch.contiguous_format) for k, v in batch.items()}
            self.tracker.track(batch.values())
            yield batch

    @contextlib.contextmanager
    def observing(self):
        enabled = gc.isenabled()
        gc.disable()
        try:
            with self.tracker:
                yield
                self._close()
        finally:
            if enabled:
                gc.enable()

    def _close(self) -> None:
        if self._draw is not None:
            self.draws[self._draw] = max(self.draws.get(self._draw, 0), self.tracker.peak_bytes)

    def result(self) -> dict:
        ranked = sorted(self.draws.items(), key=lambda kv: -kv[1])
        return {
            "device": "cpu",
            "device_used_bytes": ranked[0][1] if ranked else 0,
            "draws": [{"layers": list(d), "measured_bytes": b} for d, b in ranked],
        }
