"""LiveBytesTracker against the profiler's allocator events: autograd's gradient accumulation.

Without a Python dispatch mode, autograd adds two gradients of one tensor in place (``aten::add_``,
``input_buffer.cpp``); under the tracker's mode (and with FakeTensors) it falls back to ``a + b``.
The tracker must count what the run without it allocates."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from planner.cost.tracker import LiveBytesTracker


MIN_BYTES = 1024  # the 512 KiB activations and gradients; below: wrapped Python scalars, the loss seed


def _leaf():
    torch.manual_seed(0)
    return torch.randn(512, 256, requires_grad=True)


def _graph(x):
    h = x * 2
    hv = h.view(256, 512)  # a view: its gradient is a view, which autograd never adds in place
    y = (h.sin() + h.cos() * h).sum() + (hv.exp() + hv.tanh()).sum()
    return torch.autograd.grad(y, h)[0]


def _profiled() -> list[int]:
    x = _leaf()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _graph(x)
    events = sorted(prof.profiler.kineto_results.events(), key=lambda e: e.start_ns())
    return [
        e.nbytes()
        for e in events
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU and abs(e.nbytes()) >= MIN_BYTES
    ]


def _accumulations() -> list[str]:
    x = _leaf()
    with profile() as prof:
        _graph(x)
    return [
        e.name
        for e in prof.events()
        if e.name in ("aten::add", "aten::add_")
        and e.cpu_parent is not None
        and "evaluate_function" in e.cpu_parent.name
    ]


def test_accumulations_in_place_as_the_engine_does():
    assert "aten::add_" in _accumulations()  # the case the tracker must emulate occurs here


@pytest.mark.parametrize("fake", [False, True], ids=["real", "fake"])
def test_tracker_events_equal_profiler_events(fake):
    truth = _profiled()
    if fake:
        from torch._subclasses.fake_tensor import FakeTensorMode

        with FakeTensorMode():
            x = _leaf()
            with LiveBytesTracker(record=True) as tracker:
                tracker.track([x])
                _graph(x)
    else:
        x = _leaf()
        with LiveBytesTracker(record=True) as tracker:
            tracker.track([x])
            _graph(x)
    assert [d for _, d in tracker.events[1:] if abs(d) >= MIN_BYTES] == truth  # events[0]: the leaf, declared
