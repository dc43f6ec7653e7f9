"""Reserved CUDA memory of a training run: its allocations and frees through the caching allocator model.

The run is what a training script does on a fresh GPU: the model's tensors in construction order
(embeddings, each decoder layer, head, buffers), the batch, the cuBLAS workspaces (one per
handle: the forward's thread and autograd's), then two training steps composed at full depth
from the traced templates (:mod:`planner.cost.events`). The first step creates the optimizer
state after the backward; each step ends with the optimizer's temporaries and
``zero_grad(set_to_none=True)``. ``memory_reserved`` never shrinks, so its peak over the run is
what ``max_memory_reserved`` reads during the second step; allocated is read in that step only.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import multiprocessing
import threading

from planner.cost.roles import T, T0
from planner.cost import cache
from planner.cost.allocator import replay_run
from planner.machine import fork_available, usable_cores
from planner.cost.events import step_ops

INPUT_ID_BYTES = 8  # input_ids, labels (and a padded batch's attention mask) are int64
WORKSPACE_HANDLES = 2  # the forward's thread and autograd's backward thread


def setup_blocks(
    fam,
    roles: list[int],
    *,
    batch_size: int,
    seq_len: int,
    workspace_bytes: int,
    built_on_device: bool = False,
    batch_tensors: int = 2,
) -> list[int]:
    """What a run does before its first step, in order: ``n >= 0`` allocates n bytes, ``-(k + 1)``
    frees the k-th allocation. ``roles``: each decoder layer's role (planner.cost.compose): a trained
    layer's tensors are the traced trained layer's, a frozen one's the traced frozen layer's, which a
    lever may store otherwise (quantized weights and their state).

    By default the model arrives on the device parameter by parameter, as ``from_pretrained``
    (meta-device init, then the checkpoint's tensors) or ``model.to("cuda")`` put it there.
    ``built_on_device``: built there from its config (``from_config`` under ``torch.device("cuda")``):
    a head tied to the input embedding first gets a weight of its own, which tying releases once
    the model is built, and that cached block shapes every later segment (measured: without it,
    the reserved bytes of a tied Qwen2.5-0.5B run built so come out 7% low, tests/fixtures/gpu-truth).
    ``batch_tensors``: the batch's (batch_size, seq_len) int64 tensors (token ids, labels, a padded batch's mask)."""

    p = fam.params
    out = [n * b for n, b, _ in p["embeddings"]]
    buffers = [p["layer_buffers"]] if p["layer_buffers"] else []
    trained = [n * b for n, b, _ in p["layer"]] + buffers
    frozen = [n * b for n, b, _ in p.get("frozen_layer", p["layer"])] + buffers
    for r in roles:
        out += trained if r in (T, T0) else frozen
    out += [n * b for n, b in p["head"]]
    out += [p["other_buffers"]] if p["other_buffers"] else []
    out = [n for n in out if n > 0]
    for n, b, tied in p["embeddings"]:
        if built_on_device and tied and n * b:
            out += [n * b, -(sum(1 for x in out if x >= 0) + 1)]
    out += [batch_size * seq_len * INPUT_ID_BYTES] * batch_tensors
    if workspace_bytes:
        out += [workspace_bytes // WORKSPACE_HANDLES] * WORKSPACE_HANDLES
    return out


_memo: dict[str, tuple[int, int]] = {}


def reserved_and_allocated(
    fam,
    roles: list[int],
    *,
    num_layers: int,
    batch_size: int,
    seq_len: int,
    tensors,
    opt,
    workspace_bytes: int,
    built_on_device: bool = False,
    batch_tensors: int = 2,
) -> tuple[int, int]:
    """Peak reserved over the run and peak allocated during the second step, in bytes (cached in-process
    and on disk by everything they depend on: the traces, the roles, the shapes, the optimizer)."""
    key_data = [
        getattr(fam, "key", None),
        list(roles),
        num_layers,
        batch_size,
        seq_len,
        [list(t) for t in tensors],
        opt.name,
        workspace_bytes,
        built_on_device,
        batch_tensors,
    ]
    key = hashlib.sha256(json.dumps(key_data).encode()).hexdigest()[:32]
    hit = _memo.get(key)
    if hit is None and key_data[0] is not None:
        hit = cache.load("replay", key, lambda data: (int(data[0]), int(data[1])))
    if hit is None:
        kwargs = dict(
            num_layers=num_layers,
            batch_size=batch_size,
            seq_len=seq_len,
            tensors=tensors,
            opt=opt,
            workspace_bytes=workspace_bytes,
            built_on_device=built_on_device,
            batch_tensors=batch_tensors,
        )
        if _pending is not None:  # inside collecting(): noted for run_pending, the caller's result is discarded
            _pending.append((key, key_data[0] is not None, fam, roles, kwargs))
            return 0, 0
        hit = _replay(fam, roles, **kwargs)
        if key_data[0] is not None:
            cache.store("replay", key, list(hit))
    _memo[key] = hit
    return hit


_pending: list | None = None  # inside collecting(): the replays asked for, not run
PARALLEL_MIN_JOBS = 8  # fewer replays than this run in this process: a worker's start is not worth it
_jobs: list = []  # what forked workers read (inherited, never pickled)


@contextlib.contextmanager
def collecting():
    """Inside, :func:`reserved_and_allocated` notes each replay it misses and returns (0, 0) instead of running
    it: a caller estimates every plan of a table once to learn which replays it needs (then
    :func:`run_pending`, then the same estimates again, answered from memory)."""
    global _pending
    _pending = []
    try:
        yield _pending
    finally:
        _pending = None


def run_pending(jobs: list, workers: int | None = None) -> None:
    """Run the noted replays, in ``workers`` forked processes where the platform forks (default: one per usable core,
    each a contiguous run of the table's rows, so rows still resume from their neighbours' states)."""
    global _jobs
    seen, todo = set(), []
    for job in jobs:
        if job[0] not in seen and job[0] not in _memo:
            seen.add(job[0])
            todo.append(job)
    workers = min(workers or usable_cores(), len(todo))
    if workers < 2 or len(todo) < PARALLEL_MIN_JOBS or not fork_available():
        results = [_replay(fam, roles, **kwargs) for _, _, fam, roles, kwargs in todo]
    else:
        _jobs = todo
        bounds = [round(i * len(todo) / workers) for i in range(workers + 1)]
        try:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                chunks = pool.map(_run_chunk, list(zip(bounds, bounds[1:])))
        finally:
            _jobs = []
        results = [r for chunk in chunks for r in chunk]
    for (key, cacheable, *_), hit in zip(todo, results):
        _memo[key] = hit
        if cacheable:
            cache.store("replay", key, list(hit))


def _run_chunk(bounds: tuple[int, int]) -> list[tuple[int, int]]:
    return [_replay(fam, roles, **kwargs) for _, _, fam, roles, kwargs in _jobs[bounds[0] : bounds[1]]]


def _replay(
    fam, roles, *, num_layers, batch_size, seq_len, tensors, opt, workspace_bytes, built_on_device, batch_tensors=2
) -> tuple[int, int]:
    setup = setup_blocks(
        fam,
        roles,
        batch_size=batch_size,
        seq_len=seq_len,
        workspace_bytes=workspace_bytes,
        built_on_device=built_on_device,
        batch_tensors=batch_tensors,
    )
    state = [n for n in opt.state_blocks(tensors) if n > 0]
    temps = [n for n in opt.step_blocks(tensors) if n > 0]
    gc_was_on = gc.isenabled()
    # composing and replaying make tens of thousands of small lists and no reference cycle: the collector
    # would only rescan the caller's heap (torch, transformers, the traces): 1.0 s of a cold 70B table
    gc.disable()
    try:
        marks: list[int] = []
        ops, n_step, grads = step_ops(fam, roles, marks)
        with _lock:
            earlier = list(_checkpoints)
        start = max(
            (
                cp
                for cp_setup, prefix, cp in earlier
                if cp[0] <= len(ops) and cp_setup == setup and ops[: cp[0]] == prefix
            ),
            key=lambda cp: cp[0],
            default=None,
        )
        saved: list = []
        result = replay_run(
            setup, ops, n_step, grads, state, temps, start=start, save_at=_save_points(roles, marks), saved=saved
        )
        with _lock:
            _checkpoints[:] = [(setup, ops[: cp[0]], cp) for cp in saved]
        return result
    finally:
        if gc_was_on:
            gc.enable()


# Plan rows share the start of their first step: the model's tensors, then the forward of the same
# layers up to where their trainable sets part (γ and γ + 1 layers directly above layer 0, or at the
# top). The last replay keeps the allocator state at its first layer and around each change of
# role; the next one resumes from the longest of them whose operations it repeats exactly.
_checkpoints: list[tuple[list[int], list[int], tuple]] = []  # (setup, step prefix, checkpoint)
_lock = threading.Lock()


def _save_points(roles: list[int], marks: list[int]) -> tuple[int, ...]:
    """Where the first step's forward starts layer 0, and the layers at and below each change of role."""
    changes = [i for i in range(1, len(roles)) if roles[i] != roles[i - 1]]
    return tuple(marks[j] for j in [0] + [i for c in changes for i in (c - 1, c)])
