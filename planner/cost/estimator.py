"""estimate(): peak training memory of one configuration, composed from reduced-depth traces.

Per-layer costs come from tracing one training step of the same model at 2-3 decoder layers
(real tensors when small, ``FakeTensorMode`` when large) whose layers cover every role the
configuration needs; :mod:`planner.cost.compose` replays those segments at full depth, and on
CUDA :mod:`planner.cost.replay` runs their allocations through the caching allocator model.
Traces are cached in-process and on disk (:mod:`planner.cost.cache`), keyed by everything that
changes them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import torch

from planner.config import TrainConfig
from planner.cost import cache
from planner.cost.compose import Family, peak_many, simulate
from planner.cost.roles import FA, FB, ROLES, T, T0
from planner.cost.device import DeviceProfile, default_profile
from planner.optimizers import Optimizer, get_optimizer
from planner.cost.replay import reserved_and_allocated
from planner.cost.segments import TraceResult, cuda_block_bytes
from planner.cost.trace import fingerprint, run_trace
from planner.errors import PlannerError
from planner.levers import active_levers
from planner.plan import Breakdown

COST_MODEL_VERSION = 13  # bump when traces change meaning (invalidates the disk cache)
MAX_TRACE_LAYERS = 3  # decoder layers in one reduced-depth trace
INPUT_ID_BYTES = 8  # input_ids and labels are int64
FAKE_TRACE_ABOVE = 512 * 2**20  # trace under FakeTensorMode when a real trace would hold more than this

_traces: dict[str, TraceResult] = {}
_lock = threading.Lock()


@dataclass
class MemoryEstimate:
    """Predicted peak of one training step (the second one: optimizer state exists)."""

    peak_bytes: int
    breakdown: Breakdown
    trainable_layers: list[int]
    phase: str
    device: str
    allocated_bytes: int = 0  # CUDA: what torch.cuda.max_memory_allocated would report; CPU: = peak_bytes
    reserved_bytes: int = 0  # CUDA: memory_reserved at the peak (excludes context); CPU: = peak_bytes
    details: dict = field(default_factory=dict)
    paged_bytes: int = 0  # CUDA: optimizer state in unified memory, outside the allocator (paged optimizers)

    def to_dict(self) -> dict:
        return {
            "peak_bytes": self.peak_bytes,
            "breakdown": self.breakdown.model_dump(),
            "trainable_layers": list(self.trainable_layers),
            "phase": self.phase,
            "device": self.device,
            "allocated_bytes": self.allocated_bytes,
            "reserved_bytes": self.reserved_bytes,
            "paged_bytes": self.paged_bytes,
        }

    def paged_split(self, vram_bytes: int) -> tuple[int, int]:
        """(bytes of paged optimizer state that stay on the device, bytes paged out to host memory) at a budget:
        unified memory fills what the budget leaves above the allocator's peak, the rest lives on the host."""
        room = max(0, vram_bytes - self.peak_bytes)
        return min(self.paged_bytes, room), max(0, self.paged_bytes - room)


# -- traces -------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _versions() -> str:
    import transformers  # transformers: deferred until a trace is keyed (seconds on top of torch)

    try:  # the installed version, without importing peft (about a second on a cold start)
        pv = version("peft")
    except PackageNotFoundError:  # pragma: no cover
        pv = "-"
    return f"{COST_MODEL_VERSION}/{torch.__version__}/{transformers.__version__}/{pv}"


def _use_fake(spec, cfg: TrainConfig, n_layers: int) -> bool:
    h, v = spec.hidden_size, spec.vocab_size
    inter = int(getattr(spec.config, "intermediate_size", None) or getattr(spec.config, "n_inner", None) or 4 * h)
    elt = 2 if cfg.dtype != "float32" else 4
    params = 2 * v * h + n_layers * (4 * h * h + 3 * h * inter)
    tokens = cfg.batch_size * cfg.seq_len
    approx = params * elt * 4 + tokens * v * 12 + n_layers * tokens * (20 * h + 3 * inter) * 4
    return approx > FAKE_TRACE_ABOVE


_fingerprints: dict[int, tuple[object, str]] = {}


def _fingerprint(spec) -> str:
    hit = _fingerprints.get(id(spec.config))
    if hit is None or hit[0] is not spec.config:
        hit = _fingerprints[id(spec.config)] = (spec.config, fingerprint(spec))
    return hit[1]


# the trainable set is the roles' in a trace; the optimizer runs after the traced backward unless a
# lever moves it inside (planner.levers.base.Lever.optimizer_in_trace)
_SET_BY_ROLES = {"layers": None, "active_layers": None, "min_depth": 0}
_OPTIMIZER_OUTSIDE = {"optimizer": "sgd"}


def trace_config(cfg: TrainConfig) -> TrainConfig:
    """The config a reduced-depth trace runs: ``cfg`` with the fields no trace reads set to one value,
    so configurations that differ only there share traces."""
    update: dict[str, object] = dict(_SET_BY_ROLES)
    if not any(lever.optimizer_in_trace for lever in active_levers(cfg)):
        update.update(_OPTIMIZER_OUTSIDE)
    return cfg.model_copy(update=update)


def trace_key(spec, cfg: TrainConfig, roles: list[str], kernels: str = "cpu") -> str:
    """Everything that changes a trace, hashed: the whole trace config, the model, roles, kernels, versions."""
    key_data = [_fingerprint(spec), trace_config(cfg).model_dump(mode="json"), list(roles), kernels, _versions()]
    return hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:32]


def get_trace(
    spec, cfg: TrainConfig, roles: list[str], *, fake: bool | None = None, kernels: str = "cpu"
) -> TraceResult:
    """The trace of ``spec`` at ``len(roles)`` layers with these roles, from cache when possible.
    ``kernels``: whose attention and dropout kernels the trace counts (``cpu`` or ``cuda``)."""
    fake = _use_fake(spec, cfg, len(roles)) if fake is None else fake
    key = trace_key(spec, cfg, roles, kernels)
    with _lock:
        if key in _traces:
            return _traces[key]
    tr = cache.load("trace", key, TraceResult.from_json)
    if tr is None:
        tr = run_trace(spec, roles, trace_config(cfg), fake=fake, kernels=kernels)
        cache.store("trace", key, tr.to_json())
    tr.key = key
    with _lock:
        _traces[key] = tr
    return tr


def trace_patterns(
    embeddings_grad: bool, roles: set[str], roles0: set[str], max_layers: int = MAX_TRACE_LAYERS
) -> list[list[str]]:
    """Reduced-depth role sequences (at most ``max_layers`` layers) that together cover every role
    in ``roles`` above position 0 and every role in ``roles0`` at position 0 (layer 0's input is
    the embeddings output, which the model may hold until its forward returns)."""
    if embeddings_grad:  # roles T, FA
        if roles <= {"FA"}:
            return [["FA", "FA"]]
        return [["T", "FA", "T"] if r0 == "T" else ["FA", "T", "FA"] for r0 in sorted(roles0)]
    if roles <= {"FB"}:
        return [["FB", "FB"]]
    above: list[str] = [r for r in ("FA", "T") if r in roles]
    patterns: list[list[str]] = []
    if "FB" in roles0:  # FB* T0 (FA|T)*: T0 above position 0 needs an FB below it
        full = ["FB", "T0"] + above
        patterns += [full] if len(full) <= max_layers else [full[:max_layers], ["T0"] + full[max_layers:]]
    if ("T0" in roles0 or not patterns) and not any(p[0] == "T0" for p in patterns):
        patterns.append(["T0"] + (above or ["FA"]))
    return patterns


def embeddings_grad(spec, cfg: TrainConfig) -> bool:
    """Whether the embedding output needs a gradient: trainable embeddings (a tied head weight is
    the embedding, see planner.cost.trainable), or a lever that makes it require grad (gradient
    checkpointing: transformers calls ``enable_input_require_grads``, so every layer backpropagates
    and is recomputed)."""
    return (
        cfg.train_embeddings
        or (spec.tied_embeddings and cfg.train_head)
        or any(lever.input_requires_grad(cfg) for lever in active_levers(cfg))
    )


def get_family(
    spec,
    cfg: TrainConfig,
    roles: set[str],
    roles0: set[str],
    *,
    fake: bool | None = None,
    max_trace_layers: int = MAX_TRACE_LAYERS,
    kernels: str = "cpu",
) -> Family:
    """Segments for every role in ``roles`` (and ``roles0`` at layer 0) of this config's family."""
    patterns = trace_patterns(embeddings_grad(spec, cfg), roles, roles0, max_trace_layers)
    traces = [get_trace(spec, cfg, patterns[0], fake=fake, kernels=kernels)]
    first = traces[0]
    if len(patterns) == 2 and patterns[0][0] == patterns[0][-1] and _position_free(first, patterns[0][0]):
        # the role traced at layer 0 and above it has the same figures: layer 0 is not special
        # in this family, and the other role needs no trace of its own at layer 0
        patterns = patterns[:1]
    traces += [get_trace(spec, cfg, p, fake=fake, kernels=kernels) for p in patterns[1:]]
    fam = Family.merge(traces)
    fam.patterns = patterns
    fam.key = "|".join(tr.key for tr in traces)
    return fam


def _position_free(trace: TraceResult, role: str) -> bool:
    """Whether ``role`` has the same segments at layer 0 as above it in ``trace``."""
    return all(trace.layers.get(f"{ph}0:{role}") == trace.layers.get(f"{ph}:{role}") for ph in ("fwd", "bwd"))


# -- composition ----------------------------------------------------------------
def _trainable_tensors(fam: Family, cfg: TrainConfig, n_layers_trained: int) -> list[tuple[int, int]]:
    lora = bool(cfg.lora_rank)
    """Trainable tensors in the model's parameter order: embeddings, decoder layers, head."""
    per_layer = [(n, b) for n, b, is_lora in fam.params["layer"] if is_lora or not lora]
    out = [(n, b) for n, b, tied in fam.params["embeddings"] if cfg.train_embeddings or (tied and cfg.train_head)]
    out += per_layer * n_layers_trained
    if cfg.train_head:
        out += [(n, b) for n, b in fam.params["head"]]
    return out


def _weights(fam: Family, num_layers: int, n_trained: int, block) -> int:
    """Weights of every parameter: trained layers as traced, frozen ones as a lever may store them (quantized)."""
    p = fam.params
    frozen = p.get("frozen_layer", p["layer"])
    total = sum(block(n * b) for n, b, _ in p["layer"]) * n_trained
    total += sum(block(n * b) for n, b, _ in frozen) * (num_layers - n_trained)
    total += sum(block(n * b) for n, b, _ in p["embeddings"]) + sum(block(n * b) for n, b in p["head"])
    total += block(p["layer_buffers"]) * num_layers + block(p["other_buffers"])
    return total


def _opt_peaks(fam, cfg, opt, device, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Optimizer-step temporaries per trainable-layer count: raw and CUDA block bytes."""
    out: list[list[int]] = [[], []]
    for k in counts:
        tensors = _trainable_tensors(fam, cfg, int(k))
        for i, block in enumerate((lambda n: n, cuda_block_bytes)):
            out[i].append(opt.step_peak(tensors, device, block))
    return np.array(out[0], dtype=np.int64), np.array(out[1], dtype=np.int64)


def worst_case_sets(num_layers: int, active_layers: int, min_depth: int) -> np.ndarray:
    """Candidate draws of γ layers from ``min_depth..L-1``: for each lowest layer l, the other γ-1
    directly above l, or at the top (rows of a configs × layers boolean matrix). At the backward
    of a layer i, live memory is the activations of layers <= i plus the gradients of trainable
    layers > i: moving a trainable layer across i trades its larger activations for its gradients,
    so the worst draw puts all of them on one side, the top or right above l. Checked against
    brute force over every draw in tests."""
    L = num_layers
    low = np.arange(min_depth, L - active_layers + 1)[:, None]
    j = np.arange(L)[None, :]
    above = (j >= low) & (j < low + active_layers)
    top = (j == low) | (j >= L - (active_layers - 1))
    return np.concatenate([above, top]) if active_layers > 1 else above


def _role_matrix(masks: np.ndarray, e_grad: bool) -> np.ndarray:
    c, L = masks.shape
    if e_grad:
        return np.where(masks, T, FA).astype(np.int64)
    low = np.where(masks.any(axis=1), masks.argmax(axis=1), L)[:, None]
    j = np.arange(L)[None, :]
    return np.where(masks, np.where(j == low, T0, T), np.where(j > low, FA, FB)).astype(np.int64)


def estimate(
    spec,
    cfg: TrainConfig,
    *,
    device: str = "cuda",
    profile: DeviceProfile | None = None,
    fake: bool | None = None,
    max_trace_layers: int = MAX_TRACE_LAYERS,
    built_on_device: bool = False,
) -> MemoryEstimate:
    """Predict the peak memory of one training step of ``spec`` under ``cfg`` on ``device``.

    ``device="cpu"`` predicts PyTorch CPU allocator bytes (no overhead); ``"cuda"`` adds the
    device overhead of ``profile`` (or planner.cost.device defaults) in the ``overhead`` bucket.
    For ``active_layers`` configs the sampler's worst draw is predicted and returned in
    ``trainable_layers``. ``built_on_device``: the model is built on the GPU from its config rather
    than loaded or moved there (see :func:`planner.cost.replay.setup_blocks`; reserved bytes only).
    """
    if device not in ("cpu", "cuda"):
        raise PlannerError(f"--device must be 'cpu' or 'cuda', but got {device!r}")
    L = spec.num_layers
    cfg.check_against(L)
    opt = get_optimizer(cfg.optimizer)
    for lever in active_levers(cfg):
        opt = lever.optimizer_strategy(opt, cfg)
    profile = profile or default_profile(device)
    e_grad = embeddings_grad(spec, cfg)
    cuda = device == "cuda"
    if cfg.active_layers is not None:
        masks = worst_case_sets(L, cfg.active_layers, cfg.min_depth)
    else:
        layers = cfg.trainable_layers(L)
        masks = np.zeros((1, L), dtype=bool)
        masks[0, layers] = True
    has_layers = bool(masks.any())
    if not has_layers and not (cfg.train_embeddings or cfg.train_head):
        raise PlannerError("a training config must train something, but it trains no layer, embeddings or head")
    roles = _role_matrix(masks, e_grad)
    present = np.bincount(roles.ravel(), minlength=4)
    needed = {ROLES[r] for r in np.flatnonzero(present)}
    roles0 = {ROLES[r] for r in np.flatnonzero(np.bincount(roles[:, 0], minlength=4))}
    try:
        fam = get_family(spec, cfg, needed, roles0, fake=fake, max_trace_layers=max_trace_layers, kernels=device)
    except PlannerError:
        raise
    except Exception as exc:  # noqa: BLE001 - a model transformers builds but the trace cannot run
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise PlannerError(
            f"the cost model must trace {spec.name} ({spec.model_type}) at reduced depth, "
            f"but the traced training step failed: {type(exc).__name__}: {first}"
        ) from exc
    counts = masks.sum(axis=1)
    opt_raw, opt_cuda = _opt_peaks(fam, cfg, opt, device, np.unique(counts))
    lookup = {int(k): i for i, k in enumerate(np.unique(counts))}
    idx = np.array([lookup[int(k)] for k in counts])
    if len(masks) == 1:
        best = 0
    else:
        peaks = peak_many(fam, roles, (opt_cuda if cuda else opt_raw)[idx], cuda=cuda)
        best = int(np.argmax(peaks))
    chosen = [int(i) for i in np.flatnonzero(masks[best])]
    k = lookup[int(counts[best])]
    sim = simulate(fam, list(int(r) for r in roles[best]), (int(opt_raw[k]), int(opt_cuda[k])))

    tensors = _trainable_tensors(fam, cfg, len(chosen))
    weights = _weights(fam, L, len(chosen), lambda n: n)
    state = opt.state_bytes(tensors, device)
    paged = 0
    replayed_opt: Optimizer | _StateOffAllocator = opt
    if cuda and opt.paged:  # cudaMallocManaged state: outside the caching allocator and its counters
        paged, state, replayed_opt = state, 0, _StateOffAllocator(opt)
    batch = 2 * cfg.batch_size * cfg.seq_len * INPUT_ID_BYTES
    grads, acts, trans = sim.at_peak
    raw_peak = weights + state + batch + sim.peak
    overhead, allocated, reserved = 0, raw_peak, raw_peak
    if cuda:
        # the step's allocations and frees through the caching allocator model (planner.cost.replay):
        # max_memory_reserved, and max_memory_allocated with the blocks handed out whole
        reserved, allocated = reserved_and_allocated(
            fam,
            [int(r) for r in roles[best]],
            num_layers=L,
            batch_size=cfg.batch_size,
            seq_len=cfg.seq_len,
            tensors=tensors,
            opt=replayed_opt,
            workspace_bytes=profile.workspace_bytes,
            built_on_device=built_on_device,
        )
        overhead = reserved - raw_peak + profile.context_bytes
    breakdown = Breakdown(
        weights=weights, gradients=grads, optimizer=state, activations=acts, transient=trans + batch, overhead=overhead
    )
    peak = raw_peak + overhead
    return MemoryEstimate(
        peak_bytes=peak,
        breakdown=breakdown,
        trainable_layers=chosen,
        phase=sim.phase_cuda if cuda else sim.phase,
        device=device,
        allocated_bytes=allocated,
        reserved_bytes=reserved,
        paged_bytes=paged,
        details=_details(spec, masks, fam),
    )


class _StateOffAllocator:
    """An optimizer strategy whose state the caching allocator never sees (paged), its step temporaries as before."""

    def __init__(self, strategy):
        self.inner, self.name = strategy, strategy.name

    def state_blocks(self, tensors):
        return []

    def step_blocks(self, tensors):
        return self.inner.step_blocks(tensors)


def _details(spec, masks, fam) -> dict:
    out = {"candidates": int(len(masks)), "traces": getattr(fam, "patterns", [])}
    types = set(getattr(spec.config, "layer_types", None) or [])
    if len(types) > 1:
        # a role's figures come from whichever layer types the reduced model's first layers have:
        # per-type differences (e.g. SDPA with a sliding-window mask) are not composed
        out["approximate"] = (
            f"decoder layers of several types {sorted(types)}: per-type differences are not "
            "composed (up to 3% off on a tiny qwen2 with sliding and full layers)"
        )
    return out
