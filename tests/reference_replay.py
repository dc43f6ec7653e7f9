"""The training run planner.cost.allocator.replay_run replays, op by op through the reference CachingAllocator."""

from __future__ import annotations

from planner.cost.allocator import CachingAllocator


def reference_allocator(setup, ops, n_step, grads, state, temps) -> CachingAllocator:
    """The run ``replay_run`` describes, through the readable CachingAllocator, op by op; the allocator after it
    (its peaks: the second step's allocated, the run's reserved; its segments)."""
    a, built = CachingAllocator(), []
    for n in setup:
        if n >= 0:
            built.append(a.malloc(n))
        else:
            a.free(built[-n - 1])
    for step in (1, 2):
        if step == 2:
            a.reset_peak()
        addrs, k = [0] * n_step, 0
        for op in ops:
            if op >= 0:
                addrs[k], k = a.malloc(op), k + 1
            else:
                a.free(addrs[-op - 1])
        if step == 1:
            for n in state:
                a.malloc(n)
        t = [a.malloc(n) for n in temps]
        for x in reversed(t):
            a.free(x)
        for g in grads:
            a.free(addrs[g])
    return a
