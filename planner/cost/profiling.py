"""How ``planner profile`` measures a device profile: per-layer bytes in each role, the device's constants,
and the cost model's prediction of every measured run beside it.

Measurement (one training step after a warm-up step that creates the optimizer state), at the
model's real width with two reduced depths n1 < n2, in three roles:

- ``trainable``: every decoder layer trains;
- ``frozen_above``: only the lowest layer trains, the added layers are frozen above it;
- ``frozen_below``: only the top layer trains, the added layers are frozen below it.

Embeddings and head are frozen in every run so that the added layers are the only difference.
Per-layer bytes are differences between the two depths, divided by ``n2 - n1``:
``activation = Δ(allocated after forward - allocated before forward) / Δn``,
``gradient = Δ(allocated after backward - allocated before forward) / Δn``,
``optimizer = Δ(allocated after the warm-up step - allocated before it) / Δn``.
On CUDA the model is built and initialized on the device, and the allocator's counters are read:
``requested_bytes`` (exact tensor bytes, so per-layer differences are whole tensors, never
negative) at the points, ``max_memory_allocated``/``max_memory_reserved`` for the peaks; on CPU
the same points are read from ``planner.cost.LiveBytesTracker``. The context is what the process
holds beyond the allocator's segments; ``fragmentation`` (reserved/allocated - 1 at the peak) is
kept for reference: estimates take reserved memory from the allocator model.
"""

from __future__ import annotations

import gc
import time
from typing import Any

import torch

from planner.config import TrainConfig
from planner.cost import LiveBytesTracker, estimate
from planner.cost.device import DeviceProfile, LayerMeasurement, default_profile
from planner.cost.measure import StepHooks, make_batch, make_optimizer, prepare_model, state_tensors, training_step
from planner.errors import PlannerError
from planner.spec import build_model
from planner.spec.model import DTYPES

DEFAULT_DEPTHS = (2, 4)
ROLES = ("trainable", "frozen_above", "frozen_below")


class _CudaMeter:
    """The caching allocator's counters."""

    def __init__(self, torch):
        self.torch = torch

    def sync(self):
        self.torch.cuda.synchronize()

    def track(self, tensors):
        """The allocator sees every tensor: nothing to declare."""

    def release(self):
        """Return cached blocks so one run's reserve does not inflate the next run's peak."""
        gc.collect()
        self.torch.cuda.empty_cache()

    def allocated(self) -> int:
        """Bytes tensors requested (``requested_bytes``): exact tensor sizes, without the block rounding and
        unsplit-block slack that make ``memory_allocated`` differences depend on the cache's history."""
        self.sync()
        return int(
            self.torch.cuda.memory_stats().get("requested_bytes.all.current", 0) or self.torch.cuda.memory_allocated()
        )

    def allocated_blocks(self) -> int:
        self.sync()
        return int(self.torch.cuda.memory_allocated())

    def reset_peak(self):
        self.sync()
        self.torch.cuda.reset_peak_memory_stats()

    def peaks(self) -> dict:
        """Peak allocated, reserved and requested bytes (requested: before the allocator's block rounding)."""
        self.sync()
        stats = self.torch.cuda.memory_stats()
        return {
            "allocated": int(self.torch.cuda.max_memory_allocated()),
            "reserved": int(self.torch.cuda.max_memory_reserved()),
            "requested": int(stats.get("requested_bytes.all.peak", 0)) or None,
        }


class _TrackerMeter:
    """Live storage bytes from ``planner.cost.LiveBytesTracker`` (CPU): no allocator, so reserved = allocated."""

    def __init__(self):
        self.tracker = LiveBytesTracker()

    def __enter__(self):
        gc.collect()
        self._gc = gc.isenabled()
        gc.disable()  # frees happen by refcount, at the same points in every run
        self.tracker.__enter__()
        return self

    def __exit__(self, *exc):
        try:
            return self.tracker.__exit__(*exc)
        finally:
            if self._gc:
                gc.enable()

    def release(self):
        """Nothing: every figure is a difference from the bytes live when a run starts."""

    def allocated(self) -> int:
        return int(self.tracker.current_bytes)

    allocated_blocks = allocated

    def reset_peak(self):
        self.tracker.reset_peak()

    def track(self, tensors):
        """Count storages made outside the dispatcher's sight (e.g. weights loaded lazily); idempotent."""
        self.tracker.track(tensors)

    def peaks(self) -> dict:
        peak = int(self.tracker.peak_bytes)
        return {"allocated": peak, "reserved": peak, "requested": peak}


class _Points:
    """StepHooks that read allocated bytes after the forward and after the backward pass."""

    def __init__(self, meter):
        self.meter = meter
        self.values: dict[str, int] = {}
        values = self.values

        class Hooks(StepHooks):
            def backward_start(self):
                values["forward"] = meter.allocated()

            def backward_end(self):
                values["backward"] = meter.allocated()

        self.hooks = Hooks()


def role_config(role: str, depth: int, *, dtype: str, batch_size: int, seq_len: int):
    """The TrainConfig of one measured run: embeddings and head frozen, layers trained as ``role`` says."""
    layers = {"trainable": list(range(depth)), "frozen_above": [0], "frozen_below": [depth - 1]}[role]
    return TrainConfig(
        batch_size=batch_size, seq_len=seq_len, dtype=dtype, layers=layers, train_embeddings=False, train_head=False
    )


def _one_run(spec, depth: int, role: str, *, device: str, dtype: str, batch_size: int, seq_len: int, meter) -> dict:
    """Allocated bytes at the points of one measured training step (the second one) of ``depth`` layers in ``role``."""
    cfg = role_config(role, depth, dtype=dtype, batch_size=batch_size, seq_len=seq_len)
    layers = cfg.layers
    meter.release()
    m_empty = meter.allocated()
    m_empty_blocks = meter.allocated_blocks()
    with torch.device(device):  # built and initialized on the device: no CPU initialization, no copy
        model = build_model(spec, dtype=dtype, num_layers=depth)
    model = prepare_model(model, cfg, layers)
    optimizer = make_optimizer(model, cfg)
    batch = {k: v.to(device) for k, v in make_batch(spec.vocab_size, batch_size, seq_len).items()}
    meter.track(state_tensors(model, None, batch))
    m_built = meter.allocated()
    training_step(model, optimizer, batch)  # warm-up: creates the optimizer state
    m_state = meter.allocated()
    points = _Points(meter)
    meter.reset_peak()
    training_step(model, optimizer, batch, hooks=points.hooks)
    peaks = meter.peaks()
    out = {
        "weights": m_built - m_empty,
        "optimizer": m_state - m_built,
        "activation": points.values["forward"] - m_state,
        "gradient": points.values["backward"] - m_state,
        "peaks": peaks,
        "step_peak": peaks["allocated"] - m_empty_blocks,
    }
    del model, optimizer, batch
    return out


def _per_layer(runs: dict, role: str, depths: tuple[int, int]) -> LayerMeasurement:
    lo, hi = runs[(role, depths[0])], runs[(role, depths[1])]
    step = depths[1] - depths[0]

    def diff(key):
        # exact tensor bytes differ by whole layers; a role that adds no bytes of a kind reads 0
        return max(0, round((hi[key] - lo[key]) / step))

    return LayerMeasurement(
        role=role,
        activation_bytes=diff("activation"),
        gradient_bytes=diff("gradient"),
        optimizer_bytes=diff("optimizer"),
        weight_bytes=diff("weights"),
    )


def _measure_workspace(torch, meter, dtype) -> int:
    """Bytes the cuBLAS handles keep after one matmul forward and backward (each thread's handle has a workspace)."""
    before = meter.allocated_blocks()
    x = torch.randn(256, 256, device="cuda", dtype=DTYPES[dtype], requires_grad=True)
    (x @ x).float().sum().backward()
    del x
    return max(0, meter.allocated_blocks() - before)


def measure_profile(
    spec,
    *,
    device: str = "cuda",
    dtype: str = "float32",
    batch_size: int = 1,
    seq_len: int = 512,
    depths: tuple[int, int] = DEFAULT_DEPTHS,
    on_step=None,
) -> DeviceProfile:
    """Measure per-layer bytes in each role and the device constants by real training steps on ``device``.

    ``on_step(done, total, text)`` is called after each measured run and each model check."""
    total_steps = 2 * len(ROLES) * len(depths)
    done = [0]

    def report(text: str):
        done[0] += 1
        if on_step is not None:
            on_step(done[0], total_steps, text)

    def measured(role, n, meter):
        t0 = time.perf_counter()
        run = _one_run(spec, n, role, meter=meter, **kwargs)
        report(f"measured {role} at {n} layers: step peak {run['step_peak']:,} B ({time.perf_counter() - t0:.1f} s)")
        return run

    if not (isinstance(depths, tuple) and len(depths) == 2 and 2 <= depths[0] < depths[1]):
        raise PlannerError(f"depths must be two layer counts 2 <= n1 < n2, but got {depths!r}")
    kwargs: dict[str, Any] = dict(device=device, dtype=dtype, batch_size=batch_size, seq_len=seq_len)
    meter: _CudaMeter | _TrackerMeter
    if device == "cuda":
        if not torch.cuda.is_available():
            raise PlannerError(
                f"--device cuda needs a CUDA GPU, but torch {torch.__version__} sees none "
                "(torch.cuda.is_available() is False); use --device cpu"
            )
        meter = _CudaMeter(torch)
        workspace = _measure_workspace(torch, meter, dtype)
        runs = {(role, n): measured(role, n, meter) for role in ROLES for n in depths}
        free, total = torch.cuda.mem_get_info()
        # the context (and kernel images) is what the process holds beyond the allocator's reserve
        context = max(0, int(total - free - torch.cuda.memory_reserved()))
        name, total = torch.cuda.get_device_name(), int(total)
    elif device == "cpu":
        meter = _TrackerMeter()
        with meter:
            runs = {(role, n): measured(role, n, meter) for role in ROLES for n in depths}
        workspace = context = 0
        name, total = "cpu", None
    else:
        raise PlannerError(f"--device must be cuda or cpu, but got {device!r}")
    peaks = runs[("trainable", depths[1])]["peaks"]
    fragmentation = _fragmentation(peaks)
    checks = []
    for role in ROLES:
        for n in depths:
            t0 = time.perf_counter()
            checks.append(model_check(spec, role, n, runs[(role, n)]["step_peak"], workspace=workspace, **kwargs))
            report(
                f"cost model check {role} at {n} layers: error {100 * checks[-1]['error']:+.2f}% "
                f"({time.perf_counter() - t0:.1f} s)"
            )
    return DeviceProfile(
        device=device,
        device_name=name,
        total_bytes=total,
        torch_version=torch.__version__,
        context_bytes=context,
        workspace_bytes=workspace,
        fragmentation=fragmentation,
        measured_model=spec.name,
        layers=[_per_layer(runs, role, depths) for role in ROLES],
        # measurement conditions and raw peaks, kept so a profile can be checked later
        measured_batch_size=batch_size,
        measured_seq_len=seq_len,
        measured_dtype=dtype,
        measured_depths=list(depths),
        peak_allocated_bytes=peaks["allocated"],
        peak_reserved_bytes=peaks["reserved"],
        peak_requested_bytes=peaks["requested"],
        checks=checks,
    )


def model_check(
    spec,
    role: str,
    depth: int,
    measured: int,
    *,
    device: str,
    dtype: str,
    batch_size: int,
    seq_len: int,
    workspace: int = 0,
) -> dict:
    """The cost model's allocated peak for one measured run next to the measured one.

    Measured: ``max_memory_allocated`` (CUDA) or the tracker's peak (CPU) during the second step,
    less what was allocated before the model was built (the cuBLAS workspaces, ``workspace``).
    Predicted: ``estimate(...).allocated_bytes`` of the same configuration with this device's
    workspaces (which it counts as allocated), less those workspaces.
    """
    cfg = role_config(role, depth, dtype=dtype, batch_size=batch_size, seq_len=seq_len)
    prof = default_profile(device).model_copy(update={"workspace_bytes": workspace})
    predicted = int(estimate(spec.with_layers(depth), cfg, device=device, profile=prof).allocated_bytes) - workspace
    return {
        "role": role,
        "layers": depth,
        "measured_bytes": int(measured),
        "predicted_bytes": predicted,
        "error": (predicted - measured) / measured if measured else 0.0,
    }


def _fragmentation(peaks: dict) -> float:
    """``reserved/allocated - 1`` at the peak; never below 0. Recorded for reference: it differs from one
    configuration to the next (0.9% to 21% on an H200), which is why estimates replay the allocator."""
    allocated, reserved = peaks["allocated"], peaks["reserved"]
    if not allocated:
        return 0.0
    return max(0.0, reserved / allocated - 1)
