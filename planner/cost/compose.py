"""Compose traced segments into a full-depth training step: a running sum whose maximum is the peak.

A full-depth configuration is the sequence

    embedding fwd, layer 0..L-1 fwd, head fwd, head bwd, layer L-1..0 bwd (not FB), shared release,
    embedding bwd (when the embeddings train), tail, optimizer step

of segments from :mod:`planner.cost.segments`; each adds its net change to the running total and
may rise above it by its own peak. The step's peak is ``base + max_k(sum_{j<k} net_j + peak_k)``
(exact for a stack of identical decoder layers: no sum of separate maxima). ``peak_many`` does
this for many trainable sets at once with numpy (the sampler's worst-case search), ``simulate``
for one, with the breakdown per category at the peak instant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from planner.cost.roles import FA, FB, ROLES, T, T0
from planner.cost.segments import ACT, GRAD, TRANS, Segment, TraceResult, cuda_block_bytes


@dataclass
class Family:
    """Segments for every role of one family: same model width, shape, dtype, amp, checkpointing,
    LoRA rank, embedding/head flags and whether any decoder layer trains."""

    segments: dict[str, Segment]
    layers: dict[str, Segment]
    frees_input: dict[str, bool]
    input_bytes: int
    x0_held: bool
    x0_kept: bool  # layer 0's input is never freed in the forward (planner.cost.segments.TraceResult.x0_kept)
    deferred: dict[str, tuple[int, int]]
    params: dict
    events: dict  # segment -> allocation/free template (planner.cost.events)
    # set by planner.cost.family.get_family: the role sequences it traced, and their traces' keys
    patterns: list[list[str]] = field(default_factory=list, compare=False, repr=False)
    key: str | None = field(default=None, compare=False, repr=False)

    @classmethod
    def merge(cls, traces: list[TraceResult]) -> "Family":
        first = traces[0]
        layers, frees, deferred, events = {}, {}, {}, dict(first.events)
        for tr in traces:
            for k, v in tr.layers.items():
                # figures from a layer above position 0 win over one traced only at position 0
                if k not in layers or (not k.split(":")[0].endswith("0") and k.split(":")[1] in tr.roles[1:]):
                    layers[k] = v
                    if k in tr.events:
                        events[k] = tr.events[k]
            frees.update(tr.frees_input)
            deferred.update(tr.deferred)
        return cls(
            dict(first.segments),
            layers,
            frees,
            first.input_bytes,
            first.x0_held,
            first.x0_kept,
            deferred,
            first.params,
            events,
        )

    def layer(self, phase: str, role: int, index: int = 1) -> Segment:
        """Segment of a layer in ``role``; layer 0 uses its own figures when traced at position 0."""
        if phase == "bwd" and role == FB:
            return Segment()
        if index == 0 and f"{phase}0:{ROLES[role]}" in self.layers:
            return self.layers[f"{phase}0:{ROLES[role]}"]
        return self.layers[f"{phase}:{ROLES[role]}"]


def _sequence(fam: Family, roles: list[int], opt_peak: tuple[int, int]) -> list[tuple[str, Segment]]:
    seq = [("embedding forward", fam.segments["embed_fwd"])]
    drop_x0 = Segment()
    for i, r in enumerate(roles):
        seg = fam.layer("fwd", r, i)
        if fam.frees_input.get(ROLES[r], False) and not (i == 0 and fam.x0_kept):
            if i == 0 and fam.x0_held:
                drop_x0 = _free(fam.input_bytes)
            else:
                seg = _then_free(seg, fam.input_bytes)
        seq.append((f"forward of layer {i}", seg))
    raw, cu = (sum(fam.deferred.get(ROLES[r], (0, 0))[k] for r in roles) for k in range(2))
    end_fwd = Segment((0, 0, -raw), (0, 0, 0), -cu, 0)
    seq.append(("head forward (final norm, logits, loss)", _then(_then(drop_x0, fam.segments["head_fwd"]), end_fwd)))
    seq.append(("head backward (loss, logits, final norm)", fam.segments["head_bwd"]))
    for i in reversed(range(len(roles))):
        if roles[i] != FB:
            seq.append((f"backward of layer {i}", fam.layer("bwd", roles[i], i)))
    lowest = next((i for i, r in enumerate(roles) if r != FB), None)
    where = f"backward of layer {lowest}" if lowest is not None else "head backward (loss, logits, final norm)"
    seq.append((where, fam.segments["shared_release"]))
    if "embed_bwd" in fam.segments:
        seq.append(("embedding backward", fam.segments["embed_bwd"]))
    seq.append(("end of backward", fam.segments["tail"]))
    seq.append(("optimizer step", Segment((0, 0, 0), (0, 0, opt_peak[0]), 0, opt_peak[1])))
    return seq


def _free(nbytes: int) -> Segment:
    """The free of a layer input (a hidden state: an activation, see planner.cost.segments)."""
    return Segment((0, -nbytes, 0), (0, 0, 0), -cuda_block_bytes(nbytes), 0)


def _then_free(seg: Segment, nbytes: int) -> Segment:
    d = list(seg.delta)
    d[ACT] -= nbytes
    return Segment((d[0], d[1], d[2]), seg.at_peak, seg.delta_cuda - cuda_block_bytes(nbytes), seg.peak_cuda)


def _add(a: Sequence[int], b: Sequence[int]) -> tuple[int, int, int]:
    """Two per-category triples (gradients, activations, transient) summed."""
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2])


def _then(first: Segment, second: Segment) -> Segment:
    """Two segments back to back as one."""
    d = _add(first.delta, second.delta)
    if first.peak >= sum(first.delta) + second.peak:
        at = first.at_peak
    else:
        at = _add(first.delta, second.at_peak)
    return Segment(
        d, at, first.delta_cuda + second.delta_cuda, max(first.peak_cuda, first.delta_cuda + second.peak_cuda)
    )


@dataclass
class Simulated:
    peak: int  # above base, raw bytes
    at_peak: tuple[int, int, int]  # gradients, activations, transient at the raw peak instant
    phase: str  # where the raw peak happens
    peak_cuda: int  # above base, CUDA block bytes
    phase_cuda: str


def simulate(fam: Family, roles: list[int], opt_peak: tuple[int, int]) -> Simulated:
    """Run the composed step for one trainable set."""
    cur = [0, 0, 0]
    best, best_at, phase = -1, (0, 0, 0), ""
    cur_c, best_c, phase_c = 0, -1, ""
    for label, seg in _sequence(fam, roles, opt_peak):
        total = sum(cur) + seg.peak
        if total > best:
            best, best_at, phase = total, _add(cur, seg.at_peak), label
        if cur_c + seg.peak_cuda > best_c:
            best_c, phase_c = cur_c + seg.peak_cuda, label
        cur = [c + d for c, d in zip(cur, seg.delta)]
        cur_c += seg.delta_cuda
    return Simulated(best, best_at, phase, best_c, phase_c)


def peak_many(fam: Family, role_matrix: np.ndarray, opt_peaks: np.ndarray, *, cuda: bool) -> np.ndarray:
    """Peak above base for each row of ``role_matrix`` (configs × layers of role codes), vectorized.

    The same sequence as :func:`simulate`, as a configs × segments matrix of net changes ``d`` and
    peaks ``p``: peak = max_k(cumsum(d)_k - d_k + p_k).
    """
    c, n = role_matrix.shape
    x_in = cuda_block_bytes(fam.input_bytes) if cuda else fam.input_bytes

    def stat(seg: Segment):
        return (seg.delta_cuda, seg.peak_cuda) if cuda else (seg.net, seg.peak)

    present = np.flatnonzero(np.bincount(role_matrix.ravel(), minlength=4))

    def table(phase: str, index: int) -> np.ndarray:
        out = np.zeros((4, 2), dtype=np.int64)
        for r in present:
            out[r] = stat(fam.layer(phase, int(r), index))
            if phase == "fwd" and fam.frees_input.get(ROLES[r], False) and not (index == 0 and fam.x0_kept):
                out[r, 0] -= x_in  # the layer's input is freed as its forward returns
        return out

    fd, fd0, bd, bd0 = table("fwd", 1), table("fwd", 0), table("bwd", 1), table("bwd", 0)
    fixed_head = [stat(fam.segments[name]) for name in ("embed_fwd",)]
    tail = (
        [fam.segments["shared_release"]]
        + ([fam.segments["embed_bwd"]] if "embed_bwd" in fam.segments else [])
        + [fam.segments["tail"]]
    )
    k = 1 + n + 1 + 1 + 1 + 1 + n + len(tail) + 1
    d = np.zeros((c, k), dtype=np.int64)
    p = np.zeros((c, k), dtype=np.int64)
    d[:, 0], p[:, 0] = fixed_head[0]
    d[:, 1 : 1 + n] = fd[role_matrix, 0]
    p[:, 1 : 1 + n] = fd[role_matrix, 1]
    r0 = role_matrix[:, 0]
    d[:, 1], p[:, 1] = fd0[r0, 0], fd0[r0, 1]
    col = 1 + n
    if fam.x0_held:  # layer 0's input is held by the model until its forward returns
        frees0 = np.array([fam.frees_input.get(ROLES[r], False) for r in range(4)])[r0]
        d[:, 1] += np.where(frees0, x_in, 0)
        d[:, col] = np.where(frees0, -x_in, 0)
    col += 1
    d[:, col], p[:, col] = stat(fam.segments["head_fwd"])
    col += 1
    deferred = np.array([fam.deferred.get(ROLES[r], (0, 0))[1 if cuda else 0] for r in range(4)], dtype=np.int64)
    d[:, col] = -deferred[role_matrix].sum(axis=1)
    col += 1
    d[:, col], p[:, col] = stat(fam.segments["head_bwd"])
    col += 1
    rev = role_matrix[:, ::-1]
    d[:, col : col + n] = bd[rev, 0]
    p[:, col : col + n] = bd[rev, 1]
    d[:, col + n - 1], p[:, col + n - 1] = bd0[r0, 0], bd0[r0, 1]
    col += n
    for seg in tail:
        d[:, col], p[:, col] = stat(seg)
        col += 1
    p[:, col] = opt_peaks
    before = np.cumsum(d, axis=1) - d
    return (before + p).max(axis=1)


__all__ = ["Family", "simulate", "peak_many", "ROLES", "FB", "T0", "FA", "T", "GRAD", "ACT", "TRANS"]
