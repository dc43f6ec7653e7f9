"""Several trials of one study at once in one process: ``--jobs`` threads, each running its trials as the
sequential study does, each trial's proxy run trained by a worker process (:mod:`planner.tune.proxy.pool`).

The threads only wait on their workers and keep the study's books (ask, report, prune, tell), so the study
process stays the only writer of its storage. Ctrl-C and SIGTERM reach the main thread, which stops the
pool: every run in flight ends at once and its trial is settled as interrupted, as in a sequential study.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Callable

from planner.errors import PlannerError
from planner.spec.model import parameter_count
from planner.machine import fork_available
from planner.tune.proxy.pool import MAX_AUTO_JOBS, PoolStopped, ProxyPool, auto_jobs
from planner.tune.storage.lifecycle import owed

if TYPE_CHECKING:
    from planner.tune.options import TuneOptions
    from planner.tune.proxy.source import ProxySetup

TRAINING_BYTES_PER_PARAMETER = 16  # a full fine-tune's float32 state: weight 4 + gradient 4 + AdamW's two moments 8


def study_jobs(options: TuneOptions, proxy: ProxySetup, trainer) -> int:
    """Proxy runs at once: ``--jobs``, else what the usable cores and the available memory hold (a run at most a full
    fine-tune of the proxy); 1 for a proxy trainer given in Python (it may keep its state in this process) and where
    workers cannot be forked. One on a CUDA proxy: runs on one GPU would share its memory."""
    if proxy.device == "cuda":
        if (options.jobs or 1) > 1:
            raise PlannerError(
                f"--jobs must be 1 with a proxy on cuda (runs on one GPU share its memory), but got {options.jobs}"
            )
        return 1
    if not fork_available():
        return 1
    if options.jobs is not None:
        return options.jobs
    if trainer is not None:
        return 1
    run_bytes = TRAINING_BYTES_PER_PARAMETER * parameter_count(proxy.workload.spec)
    return auto_jobs(options.threads, MAX_AUTO_JOBS, run_bytes)


class Tickets:
    """Whether a slot may start another trial: the study still owes one beyond those in flight
    (:func:`~planner.tune.storage.lifecycle.owed`, counted across processes), and the deadline has not passed."""

    def __init__(self, study, total: int, timeout: float | None):
        self.study = study
        self.total = total
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.in_flight = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.deadline is not None and time.monotonic() >= self.deadline:
                return False
            if owed(self.study, self.total) - self.in_flight <= 0:
                return False
            self.in_flight += 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self.in_flight -= 1


def in_slots(pool: ProxyPool, body: Callable[[], None]) -> None:
    """Run ``body`` in one thread per worker of ``pool`` and wait for them all. Ctrl-C (raised in this, the main
    thread) stops the pool and is raised once the threads have ended; so is a thread's own error (a full disk),
    after the pool stopped the others' runs."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            body()
        except BaseException as exc:  # noqa: BLE001 - raised again in the main thread below
            errors.append(exc)
            if not isinstance(exc, PoolStopped):
                pool.stop()

    threads = [threading.Thread(target=run, name=f"planner-slot-{i}", daemon=True) for i in range(pool.jobs)]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.1)  # a short wait: a signal is handled between two of them
    except BaseException:
        pool.stop()
        for thread in threads:
            thread.join(30.0)
        raise
    first = next((e for e in errors if not isinstance(e, PoolStopped)), errors[0] if errors else None)
    if first is not None:
        raise first


def optimize_in_slots(study, objective, pool: ProxyPool, *, total: int, timeout: float | None, callbacks) -> None:
    """``study.optimize`` with ``pool.jobs`` trials at once: each slot starts trials while the study owes them
    (queued ones first, as ``optimize`` pops them), runs each to its end, and calls ``callbacks`` after it."""
    tickets = Tickets(study, total, timeout)

    def body() -> None:
        while not pool.stopping and tickets.take():  # a stopped pool (another slot's error) starts no trial
            try:
                study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=callbacks)
            finally:
                tickets.give_back()

    in_slots(pool, body)
