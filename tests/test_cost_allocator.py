"""The caching allocator model: the rules of c10/cuda/CUDACachingAllocator.cpp, and the inlined replay."""

import random

import numpy as np
import pytest

from planner.cost.allocator import CachingAllocator, replay_run, round_size, segment_size
from reference_replay import reference_allocator

MiB = 2**20


def test_rounding_and_segment_sizes():
    assert [round_size(n) for n in (1, 512, 513, 4096)] == [512, 512, 1024, 4096]
    assert segment_size(512) == segment_size(MiB) == 2 * MiB  # small pool: 2 MiB segments
    assert segment_size(MiB + 512) == segment_size(10 * MiB - 512) == 20 * MiB  # 1-10 MiB: 20 MiB segments
    assert segment_size(10 * MiB) == 10 * MiB and segment_size(11 * MiB + 1) == 12 * MiB  # own, rounded to 2 MiB


def test_best_fit_split_and_merge():
    a = CachingAllocator()
    x = a.malloc(3 * MiB)  # a 20 MiB segment, split: 17 MiB stay cached
    assert (a.reserved, a.allocated) == (20 * MiB, 3 * MiB)
    y = a.malloc(16 * MiB + 600 * 1024)  # fits the 17 MiB block; the 424 KiB rest is not worth a split
    assert (a.reserved, a.allocated) == (20 * MiB, 20 * MiB)  # the whole block counts as allocated
    a.free(x)
    a.free(y)  # merges with its free neighbour: one 20 MiB block again
    assert a.free_large == [(20 * MiB, 0)] and a.allocated == 0
    z = a.malloc(19 * MiB)
    assert z == 0 and a.reserved == 20 * MiB  # reused, no new segment
    a.free(z)
    a.malloc(21 * MiB)
    assert a.reserved == 42 * MiB and a.peak_reserved == 42 * MiB  # nothing is returned to the device


def test_small_and_large_pools_are_separate():
    a = CachingAllocator()
    s = a.malloc(4096)
    a.free(s)
    a.malloc(2 * MiB)  # a free 2 MiB small segment does not serve a large request
    assert a.reserved == 2 * MiB + 20 * MiB
    blocks = [a.malloc(512) for _ in range(4096)]  # 2 MiB of 512-byte blocks fills the cached small segment
    assert a.reserved == 2 * MiB + 20 * MiB
    a.malloc(512)
    assert a.reserved == 4 * MiB + 20 * MiB
    del blocks


def reference_run(setup, ops, n_step, grads, state, temps):
    """(peak reserved, peak allocated in the second step) of the run through the readable CachingAllocator."""
    a = reference_allocator(setup, ops, n_step, grads, state, temps)
    return a.peak_reserved, a.peak_allocated


def test_inlined_replay_equals_the_allocator():
    rng = random.Random(0)
    for trial in range(20):
        setup = [rng.choice((512, 3 * MiB, 40 * MiB)) for _ in range(20)]
        setup += [setup[0], -21]  # a block made and released while the model is built
        sizes = [
            rng.choice((1, 100, 700 * 1024, MiB, MiB + 1, 2 * MiB, 5 * MiB, 12 * MiB, 33 * MiB + 7)) for _ in range(400)
        ]
        ops, live = [], []
        for i, n in enumerate(sizes):
            ops.append(n)
            live.append(i)
            if rng.random() < 0.6:
                ops.append(-live.pop(rng.randrange(len(live))) - 1)
        grads = live[: len(live) // 2]
        ops += [-g - 1 for g in live[len(live) // 2 :]]
        state, temps = [8 * MiB, 8 * MiB, 1024], [4 * MiB, 700]
        assert replay_run(setup, ops, len(sizes), grads, state, temps) == reference_run(
            setup, ops, len(sizes), grads, state, temps
        ), f"trial {trial}"


@pytest.mark.parametrize(
    "arch,hidden,seq_len,embeddings", [("llama", 64, 128, True), ("qwen2", 128, 512, False), ("gpt2", 64, 256, False)]
)
def test_replay_of_composed_steps_equals_the_allocator(tiny, monkeypatch, arch, hidden, seq_len, embeddings):
    """Composed training steps (traced templates of a 12-layer model, random trainable sets and the plan
    table's worst-case draws) give the same reserved and allocated peaks through replay_run and through
    CachingAllocator; scaled by 2**k the same sequences reach every pool and segment rule (tiny models
    only fill the small pool). The plan rows in table order, through the estimator's path (rows resume
    from the last row's checkpoints), give the same peaks too."""
    from planner.config import TrainConfig
    from planner.cost.roles import ROLES
    from planner.cost.estimator import _role_matrix, _trainable_tensors
    from planner.cost.family import embeddings_grad, get_family
    from planner.cost.events import step_ops
    from planner.optimizers import get_optimizer
    from planner.cost import replay
    from planner.cost.estimator import worst_case_sets
    from planner.cost.replay import setup_blocks

    rng = random.Random(f"{arch}-{hidden}")
    spec = tiny(arch, num_layers=12, hidden=hidden)
    cfg = TrainConfig(
        batch_size=2,
        seq_len=seq_len,
        dtype="float32",
        active_layers=3,
        train_embeddings=embeddings,
        train_head=embeddings,
    )
    masks = np.array([[rng.random() < p for _ in range(12)] for p in (0.1, 0.3, 0.6) for _ in range(3)])
    masks[:, rng.randrange(12)] |= ~masks.any(axis=1)  # every draw trains a layer
    n_random = len(masks)
    masks = np.concatenate([masks] + [worst_case_sets(12, active_layers, 0) for active_layers in range(1, 13)])
    roles = _role_matrix(masks, embeddings_grad(spec, cfg))
    fam = get_family(spec, cfg, {ROLES[r] for r in roles.ravel()}, {ROLES[r] for r in roles[:, 0]}, kernels="cuda")
    opt = get_optimizer("adamw")
    for row, mask in zip(roles[:n_random], masks):
        tensors = _trainable_tensors(fam, cfg, int(mask.sum()))
        setup = setup_blocks(
            fam, [int(r) for r in row], batch_size=2, seq_len=seq_len, workspace_bytes=MiB, built_on_device=True
        )  # a tied head: a block made and released before the steps
        ops, n_step, grads = step_ops(fam, [int(r) for r in row])
        state, temps = opt.state_blocks(tensors), opt.step_blocks(tensors)
        for scale in (1, 2**6, 2**10, 2**13):
            run = (
                [n * scale if n >= 0 else n for n in setup],
                [n * scale if n >= 0 else n for n in ops],
                n_step,
                grads,
                [n * scale for n in state],
                [n * scale for n in temps],
            )
            assert replay_run(*run) == reference_run(*run), (list(row), scale)
    resumed = []
    monkeypatch.setattr(
        replay,
        "replay_run",
        lambda *a, start=None, **kw: (resumed.append(start is not None), replay_run(*a, start=start, **kw))[1],
    )
    replay._checkpoints.clear()
    for row, mask in zip(roles, masks):
        tensors = _trainable_tensors(fam, cfg, int(mask.sum()))
        kw = dict(batch_size=2, seq_len=seq_len, workspace_bytes=MiB, built_on_device=True)
        ops, n_step, grads = step_ops(fam, [int(r) for r in row])
        truth = reference_run(
            setup_blocks(fam, [int(r) for r in row], **kw),
            ops,
            n_step,
            grads,
            opt.state_blocks(tensors),
            opt.step_blocks(tensors),
        )
        assert replay._replay(fam, [int(r) for r in row], num_layers=12, tensors=tensors, opt=opt, **kw) == truth, list(
            row
        )
    assert sum(resumed) >= (len(masks) - n_random) // 2  # the table's rows share their first layers


def test_a_plan_table_replayed_in_worker_processes_equals_one_replayed_here(tiny, monkeypatch, tmp_path):
    """candidate_plans runs a CUDA table's replays in forked workers (planner.cost.replay.run_pending):
    every row's reserved and allocated bytes must be what the same replays give in this process."""
    import planner.cost.replay as replay
    from planner.config import TrainConfig
    from planner.cost.plans import candidate_plans
    from planner.machine import fork_available

    if not fork_available():
        pytest.skip("no fork on this platform: the table is replayed in this process anyway")
    monkeypatch.setenv("PLANNER_COST_CACHE", "0")
    spec = tiny("llama", num_layers=4)
    cfg = TrainConfig(batch_size=2, seq_len=32, dtype="float32")

    def table(min_jobs, workers):
        replay._memo.clear()
        replay._checkpoints.clear()
        monkeypatch.setattr(replay, "PARALLEL_MIN_JOBS", min_jobs)
        monkeypatch.setattr(replay, "usable_cores", lambda: workers)
        return [
            (c.name, c.estimate.reserved_bytes, c.estimate.allocated_bytes, c.peak_bytes)
            for c in candidate_plans(spec, cfg, device="cuda")
        ]

    here, forked = table(10**9, 1), table(1, 2)
    assert len(here) >= 8 and here == forked
