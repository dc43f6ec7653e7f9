"""A traced training step's memory events cut into segments, and the segments' types.

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
segments do not depend on position. :mod:`planner.cost.trace` runs the step and records the events.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from planner.cost.tracker import LiveBytesTracker

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
    key: str = field(default="", compare=False, repr=False)  # its cache key (set by planner.cost.family.get_trace)

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


def cut_segments(
    tracker: LiveBytesTracker,
    roles: list[str],
    grad_ids: set[int],
    input_ids: dict[int, int | None],
    last_output: int | None = None,
) -> TraceResult:
    """The segments of one traced step: ``tracker``'s events cut at its marks, as the module's docstring says."""
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
