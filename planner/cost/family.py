"""A configuration's trace family: the reduced-depth role patterns that cover every role it needs, each
traced once (:mod:`planner.cost.trace`) and kept in process and on disk (:mod:`planner.cost.cache`), keyed by
everything that changes it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from importlib.metadata import PackageNotFoundError, version

import torch

from planner.config import TrainConfig
from planner.cost import cache
from planner.cost.compose import Family
from planner.cost.segments import TraceResult
from planner.cost.trace import fingerprint, run_trace
from planner.levers import active_levers

# bump when traces change meaning (invalidates the disk cache); 14: a trace run beside another (--jobs) could be corrupt
COST_MODEL_VERSION = 14
MAX_TRACE_LAYERS = 3  # decoder layers in one reduced-depth trace
FAKE_TRACE_ABOVE = 512 * 2**20  # trace under FakeTensorMode when a real trace would hold more than this

_traces: dict[str, TraceResult] = {}
_lock = threading.Lock()
# a trace sets process-wide torch state (the default dtype, the attention and dropout functions it counts, the
# RNG): two at once in one process (the study's --jobs threads, each gating its trial) corrupt each other
_tracing = threading.Lock()


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
    with _tracing:
        with _lock:
            if key in _traces:  # traced by another thread while this one waited
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
