"""Trace one training step of a reduced-depth model and cut its memory events into segments.

The reduced model has the full model's width and 2-3 decoder layers whose roles cover every
role the full configuration needs. Roles of a decoder layer:

- ``T``  trainable, its input needs a gradient (something below trains);
- ``T0`` trainable and the lowest point that needs a gradient (embeddings frozen);
- ``FA`` frozen, above the lowest grad-needing point (keeps what its input gradient needs);
- ``FB`` frozen, below it (keeps nothing, has no backward).

The event stream (allocations and frees, in order) is cut at module boundaries: embedding
forward, each decoder layer's forward (pre-hook to the next pre-hook, so the free of the
layer's input falls in its own segment), final norm + head + loss forward, head backward, each
layer's backward (from the moment the gradient of its output arrives), embedding backward, and
the tail up to the optimizer. Per segment we keep the net change and the peak above its start,
per category (gradients, activations, transient), for raw bytes and for bytes as the CUDA
caching allocator rounds each block. Categories: the final gradients; the hidden states handed
between layers and what a forward keeps for the backward (activations); the rest (transient).
Tensors made once per forward and used by every layer (rotary cos/sin, masks, position ids)
are released by whichever layer runs its backward last; their free is taken out of the layer
segments and kept as ``shared_release``, replayed after the lowest layer's backward, so layer
segments do not depend on position.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from planner.cost.events import templates
from planner.cost.kernels import cuda_kernels
from planner.cost.boundaries import Boundaries
from planner.cost.measure import compute_loss, make_batch, make_optimizer, prepare_model, state_tensors, training_step
from planner.cost.tracker import LiveBytesTracker
from planner.spec import build_model
from planner.spec.parts import model_parts
from planner.levers import active_levers
from planner.levers.quantize import quant_state_tensors, settle

CATEGORIES = ("gradients", "activations", "transient")
GRAD, ACT, TRANS = range(3)
CUDA_MIN_BLOCK = 512  # the caching allocator rounds every block up to a multiple of 512 B


def cuda_block_bytes(nbytes: int) -> int:
    """Bytes ``torch.cuda.memory_allocated`` counts for one tensor of ``nbytes`` (PyTorch CUDACachingAllocator)."""
    if nbytes <= 0:
        return 0
    return -(-nbytes // CUDA_MIN_BLOCK) * CUDA_MIN_BLOCK


@dataclass
class Segment:
    """Net change and peak above the start of one stretch of a training step."""

    delta: tuple[int, int, int] = (0, 0, 0)  # per category, raw bytes
    at_peak: tuple[int, int, int] = (0, 0, 0)  # per category at the raw peak instant (relative to start)
    delta_cuda: int = 0  # net change, CUDA block bytes
    peak_cuda: int = 0  # peak above start, CUDA block bytes

    @property
    def peak(self) -> int:
        return sum(self.at_peak)

    @property
    def net(self) -> int:
        return sum(self.delta)

    def to_json(self):
        return [list(self.delta), list(self.at_peak), self.delta_cuda, self.peak_cuda]

    @classmethod
    def from_json(cls, data):
        return cls(tuple(data[0]), tuple(data[1]), *data[2:4])


@dataclass
class TraceResult:
    """Segments of one traced step. ``layers[(phase, role)]`` for phase in fwd/bwd."""

    roles: list[str]
    # embed_fwd, head_fwd, head_bwd, embed_bwd, shared_release, tail
    segments: dict[str, Segment] = field(default_factory=dict)
    layers: dict[str, Segment] = field(default_factory=dict)  # "fwd:T", "bwd:FA", ...
    layer_by_index: list[dict[str, Segment]] = field(default_factory=list)  # per traced layer, for depth checks
    frees_input: dict[str, bool] = field(default_factory=dict)  # role -> its forward frees its input
    input_bytes: int = 0  # bytes of one layer input (hidden states)
    x0_held: bool = False  # the model's forward holds layer 0's input until it returns
    # layer 0's input outlives its forward whatever its role does above layer 0 (a leaf the graph holds,
    # with checkpointing): composition never frees it there
    x0_kept: bool = False
    # role -> bytes freed at the end of forward (raw, block)
    deferred: dict[str, tuple[int, int]] = field(default_factory=dict)
    peak_bytes: int = 0  # the traced step's own peak (raw, above nothing: includes base)
    base_bytes: int = 0
    params: dict = field(default_factory=dict)  # see param_info()
    events: dict = field(default_factory=dict)  # segment -> allocation/free template (planner.cost.events)
    key: str = field(default="", compare=False, repr=False)  # its cache key (set by planner.cost.estimator.get_trace)

    def to_json(self):
        return {
            "roles": self.roles,
            "segments": {k: v.to_json() for k, v in self.segments.items()},
            "layers": {k: v.to_json() for k, v in self.layers.items()},
            "layer_by_index": [{k: v.to_json() for k, v in d.items()} for d in self.layer_by_index],
            "frees_input": self.frees_input,
            "deferred": self.deferred,
            "input_bytes": self.input_bytes,
            "x0_held": self.x0_held,
            "x0_kept": self.x0_kept,
            "peak_bytes": self.peak_bytes,
            "base_bytes": self.base_bytes,
            "params": self.params,
            "events": self.events,
        }

    @classmethod
    def from_json(cls, data):
        seg = Segment.from_json
        # by name: a field added in the middle must not shift the others
        return cls(
            roles=list(data["roles"]),
            segments={k: seg(v) for k, v in data["segments"].items()},
            layers={k: seg(v) for k, v in data["layers"].items()},
            layer_by_index=[{k: seg(v) for k, v in d.items()} for d in data["layer_by_index"]],
            frees_input=dict(data["frees_input"]),
            input_bytes=data["input_bytes"],
            x0_held=data["x0_held"],
            x0_kept=data.get("x0_kept", False),
            deferred={k: tuple(v) for k, v in data["deferred"].items()},
            peak_bytes=data["peak_bytes"],
            base_bytes=data["base_bytes"],
            params=data["params"],
            events=data["events"],
        )


def trainable_for_roles(roles: list[str]) -> list[int]:
    return [i for i, r in enumerate(roles) if r in ("T", "T0")]


def _segment(events, start, stop, cat_of, skip: AbstractSet[int] = frozenset()) -> Segment:
    cur = [0, 0, 0]
    best = 0
    at_peak = (0, 0, 0)
    cur_c = peak_c = 0
    for n in range(start, stop):
        if n in skip:
            continue
        aid, delta = events[n]
        cur[cat_of(aid)] += delta
        total = cur[0] + cur[1] + cur[2]
        if total > best:
            best = total
            at_peak = (cur[0], cur[1], cur[2])
        sign = 1 if delta > 0 else -1
        cur_c += sign * cuda_block_bytes(abs(delta))
        peak_c = max(peak_c, cur_c)
    return Segment((cur[0], cur[1], cur[2]), at_peak, cur_c, peak_c)


def run_trace(spec, roles: list[str], cfg, *, fake: bool = False, kernels: str = "cpu") -> TraceResult:
    """Trace forward and backward of one step of ``spec`` reduced to ``len(roles)`` layers, trained as
    ``cfg`` says (its trainable set is the roles'; see :func:`planner.cost.estimator.trace_config`).

    ``kernels="cuda"``: attention and dropout keep what their CUDA kernels keep
    (planner.cost.kernels); ``"cpu"``: what the CPU kernels keep. Where a lever runs the optimizer
    inside backward, a first untraced step creates the reduced model's optimizer state, as the
    second step of a real run finds it."""
    layers = trainable_for_roles(roles)
    in_backward = any(lever.optimizer_in_trace for lever in active_levers(cfg))
    mode = FakeTensorMode(allow_non_fake_inputs=False) if fake else contextlib.nullcontext()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        with mode:
            model = build_model(spec, dtype=cfg.dtype, num_layers=len(roles))
            model = prepare_model(model, cfg, layers)
            batch = (
                make_batch(spec.vocab_size, cfg.batch_size, cfg.seq_len)
                if not fake
                else _fake_batch(spec, cfg.batch_size, cfg.seq_len)
            )
            optimizer = make_optimizer(model, cfg, foreach=kernels == "cuda", shadow=fake) if in_backward else None
            if optimizer is not None:
                with _unpacked_batch(fake):
                    training_step(model, optimizer, batch, cfg)
            elif cfg.quantize is not None:  # the measured step is the second: its quantized linears are settled
                with _unpacked_batch(fake):
                    settle(functools.partial(compute_loss, model, batch, cfg))
            tracker = LiveBytesTracker(record=True)
            marks = Boundaries(model, tracker)
            with tracker:
                tracker.track(state_tensors(model, optimizer, batch))
                base = tracker.current_bytes
                tracker.reset_peak()
                with cuda_kernels(kernels == "cuda"), _unpacked_batch(fake):
                    training_step(model, optimizer, batch, cfg, marks, run_optimizer=False)
            marks.remove()
            ids = (tracker.alloc_id(p.grad) for p in model.parameters() if p.grad is not None)
            grads = {aid for aid in ids if aid is not None}
            result = _cut(tracker, roles, grads, marks.input_ids, marks.last_output)
            result.events = templates(tracker.events, tracker.marks, roles, marks.input_ids, marks.last_output, grads)
            result.base_bytes = base
            result.params = param_info(model, layers)
            result.peak_bytes = tracker.peak_bytes
            del model, batch, optimizer
    finally:
        if was_enabled:
            gc.enable()
    _check_roles(result, roles, spec)
    return result


@contextlib.contextmanager
def _unpacked_batch(fake: bool):
    """transformers looks for packed sequences in ``position_ids`` and, seeing a FakeTensor, cannot read
    the answer, so it builds an explicit causal mask (which changes the attention kernel): here the
    batch is one sequence per row, as the real check finds."""
    try:
        from transformers import masking_utils  # transformers: deferred (seconds on top of torch); old ones lack it
    except ImportError:  # pragma: no cover
        original = None
    else:
        original = getattr(masking_utils, "find_packed_sequence_indices", None)
    if not fake or original is None:
        yield
        return

    def unpacked(*args, **kwargs):
        original(*args, **kwargs)  # the same temporaries as the real check
        return None

    masking_utils.find_packed_sequence_indices = unpacked
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = original


def param_info(model, trained: list[int] | None = None) -> dict:
    """Tensor sizes of one trained and one frozen decoder layer, the embeddings and the head:
    ``[numel, bytes/element(, is_lora)]``. The two layers differ where a lever stores frozen weights
    otherwise (quantization); ``frozen_layer`` is absent when the traced model has no frozen layer."""
    parts = model_parts(model)
    trained = list(trained or [])
    frozen = [i for i in range(len(parts.layers)) if i not in trained]

    # tensors bitsandbytes keeps beside quantized weights: per layer, unless every layer shares one (a code map)
    seen: dict[int, int] = {}
    for layer in parts.layers:
        for t in {t.untyped_storage()._cdata: t for t in quant_state_tensors(layer)}.values():
            seen[t.untyped_storage()._cdata] = seen.get(t.untyped_storage()._cdata, 0) + 1

    def layer_info(i):
        out = [[p.numel(), p.element_size(), "lora_" in name] for name, p in parts.layers[i].named_parameters()]
        quant = {t.untyped_storage()._cdata: t for t in quant_state_tensors(parts.layers[i])}
        return out + [[t.untyped_storage().nbytes(), 1, False] for key, t in quant.items() if seen[key] == 1]

    layer_buffers = sum(b.numel() * b.element_size() for b in parts.layers[0].buffers())
    all_buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    shared_quant = {
        t.untyped_storage()._cdata: t
        for layer in parts.layers
        for t in quant_state_tensors(layer)
        if seen[t.untyped_storage()._cdata] > 1
    }
    all_buffers += sum(t.untyped_storage().nbytes() for t in shared_quant.values())
    tied_ids = {id(p) for p in parts.tied}
    out = {
        "layer": layer_info(trained[0] if trained else 0),
        "layer_buffers": layer_buffers,
        "other_buffers": all_buffers - len(parts.layers) * layer_buffers,
        "embeddings": [[p.numel(), p.element_size(), id(p) in tied_ids] for p in parts.embeddings],
        "head": [[p.numel(), p.element_size()] for p in parts.head],
    }
    if frozen:
        out["frozen_layer"] = layer_info(frozen[0])
    return out


def _fake_batch(spec, batch_size, seq_len):
    ids = torch.randint(0, spec.vocab_size, (batch_size, seq_len))
    return {"input_ids": ids, "labels": ids.clone()}


def _check_roles(result: TraceResult, roles, spec):
    """The traced step must have the structure the roles promise (a backward segment per non-FB layer)."""
    for i, r in enumerate(roles):
        has_bwd = "bwd" in result.layer_by_index[i]
        if has_bwd != (r != "FB"):
            raise RuntimeError(
                f"trace of {spec.name}: layer {i} was traced as role {r} but "
                f"{'has' if has_bwd else 'has no'} backward segment (roles={roles})"
            )


def _cut(
    tracker: LiveBytesTracker,
    roles: list[str],
    grad_ids: set[int],
    input_ids: dict[int, int | None],
    last_output: int | None = None,
) -> TraceResult:
    events, marks = tracker.events, tracker.marks
    bounds = marks + [("<end>", len(events))]
    ranges = {label: (a, b) for (label, a), (_, b) in zip(bounds[:-1], bounds[1:])}
    bwd_start = ranges["bwd:head"][0]
    alloc_seg: dict[int, str] = {}
    alloc_bytes: dict[int, int] = {}
    alloc_index: dict[int, int] = {}
    freed_at: dict[int, int] = {}
    k = 0
    for n, (aid, delta) in enumerate(events):
        while k + 1 < len(bounds) and bounds[k + 1][1] <= n:
            k += 1
        if delta > 0 and aid not in alloc_seg:
            alloc_seg[aid] = bounds[k][0]
            alloc_bytes[aid] = delta
            alloc_index[aid] = n
        elif delta < 0:
            freed_at[aid] = n

    def alive_at_backward(aid):
        return freed_at.get(aid, len(events)) >= bwd_start

    # the hidden states handed from layer to layer (the embeddings output, each layer's output) are
    # activations wherever they are freed: a traced layer's output is kept for the backward of the layer
    # above it or freed by the head's forward at the top, and composition puts the same segment at both
    # places (categorized by its fate in the trace, 30 of llama-3-8b's 32 outputs were allocated as
    # transient and freed as activations)
    hidden = {aid for aid in input_ids.values() if aid is not None} | ({last_output} - {None})

    def cat_of(aid):
        if aid in grad_ids:
            return GRAD
        if aid in hidden:
            return ACT
        seg = alloc_seg.get(aid, "")
        if alive_at_backward(aid) and (seg.startswith("fwd:") and seg != "fwd:head"):
            return ACT
        return TRANS

    def inside(n, label):
        a, b = ranges.get(label, (0, 0))
        return a <= n < b

    result = TraceResult(roles=list(roles), layer_by_index=[{} for _ in roles])
    # a layer's input: freed in its own forward (not kept), in its backward (kept), or, for layer 0,
    # when the model's forward returns (the model holds the embeddings output in a local)
    skip: set[int] = set()
    for i, role in enumerate(roles):
        x_id = input_ids.get(i)
        x_freed, x_bytes = (freed_at.get(x_id), alloc_bytes.get(x_id, 0)) if x_id is not None else (None, 0)
        if x_freed is not None and inside(x_freed, f"fwd:{i}"):
            skip.add(x_freed)
            result.frees_input[role] = True
            result.input_bytes = x_bytes
        elif x_freed is not None and inside(x_freed, f"bwd:{i}"):
            result.frees_input[role] = False
        elif i == 0 and x_freed is not None and inside(x_freed, "fwd:head"):
            skip.add(x_freed)
            result.frees_input[role] = True
            result.x0_held = True
            result.input_bytes = x_bytes
        elif i > 0:
            raise RuntimeError(
                f"trace: the input of layer {i} (role {role}) is freed where composition cannot place it"
            )
        # else: layer 0's input is freed by a segment every configuration of the family shares
        # (e.g. with gradient checkpointing it is a leaf that requires grad, freed after backward)
        if i == 0:
            result.x0_kept = x_freed is None or not (inside(x_freed, "fwd:0") or inside(x_freed, "fwd:head"))

    # made in a layer's forward, freed when the forward returns (autocast's cast cache of trainable
    # weights that backward does not keep): replayed after the head forward, per role
    head_a, head_b = ranges["fwd:head"]
    for i, role in enumerate(roles):
        a, b = ranges[f"fwd:{i}"]
        raw = cu = 0
        for n in range(head_a, head_b):
            aid, delta = events[n]
            if delta < 0 and aid != last_output and a <= alloc_index.get(aid, -1) < b:
                skip.add(n)
                raw -= delta
                cu += cuda_block_bytes(-delta)
        result.deferred[role] = (raw, cu)

    x0 = input_ids.get(0)
    shared = {
        aid
        for aid, seg in alloc_seg.items()
        if seg == "fwd:embed" and alive_at_backward(aid) and aid != x0 and aid not in grad_ids
    }
    shared_freed = []
    for label, (start, stop) in ranges.items():
        if label == "end":
            continue
        phase, where = label.split(":")
        if where.isdigit():
            i = int(where)
            if phase == "bwd":
                drop = {n for n in range(start, stop) if events[n][1] < 0 and events[n][0] in shared}
                shared_freed += [events[n] for n in sorted(drop)]
                seg = _segment(events, start, stop, cat_of, skip | drop)
            else:
                seg = _segment(events, start, stop, cat_of, skip)
            result.layer_by_index[i][phase] = seg
            if i == 0:  # layer 0 may differ (its input is the embeddings output): kept apart too
                result.layers[f"{phase}0:{roles[i]}"] = seg
            if i > 0 or f"{phase}:{roles[i]}" not in result.layers:
                result.layers[f"{phase}:{roles[i]}"] = seg
        else:
            name = {
                "fwd:embed": "embed_fwd",
                "fwd:head": "head_fwd",
                "bwd:head": "head_bwd",
                "bwd:embed": "embed_bwd",
                "bwd:end": "tail",
            }[label]
            result.segments[name] = _segment(events, start, stop, cat_of, skip)
    result.segments["shared_release"] = _segment(shared_freed, 0, len(shared_freed), lambda aid: ACT)
    return result


def fingerprint(spec) -> str:
    """A key for everything in the model config that changes a trace (depth excluded)."""
    data = spec.config.to_dict()
    for k in (
        "num_hidden_layers",
        "n_layer",
        "layer_types",
        "_name_or_path",
        "transformers_version",
        "architectures",
        "torch_dtype",
        "dtype",
        "use_cache",
    ):
        data.pop(k, None)
    return json.dumps(data, sort_keys=True, default=str)
