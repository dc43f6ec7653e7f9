"""A trial's life across processes: who runs it, whether that process is alive, and what a dead one leaves.

Every trial records its worker (machine, pid, process start time, run token) in its record's ``worker``
(:class:`planner.tune.study.record.TrialRecord`) and a ``heartbeat`` time, renewed every :data:`HEARTBEAT_SECONDS`
while it runs. A RUNNING trial is dead when its process is gone (same machine: checked at once, so a resume
right after ``kill -9`` sees it) or its heartbeat is older than :data:`STALE_SECONDS` (another machine).
Each run also records its identity on the study before its first trial (:meth:`Worker.announce`), so a trial
left with no worker recorded (created, then the disk filled) is dead once every run recorded before it has ended.
:meth:`Worker.reap` fails dead trials with the reason "worker died ..." and queues each again
(same parameters, same kind, ``retry_of`` its first attempt); :meth:`Worker.settle` does the same
for this process's own trials after Ctrl-C or SIGTERM, with :data:`INTERRUPTED`. Neither counts
toward ``--n-trials`` (:func:`interrupted`).

Optuna's own heartbeat (``RDBStorage(heartbeat_interval=..., failed_trial_callback=...)``) exists
only for SQL storages, waits its grace period even when the process is known dead, and fails the
trial before a callback could record why; this one works the same for journal files.
"""

from __future__ import annotations

import datetime
import os
import signal
import threading
import time
import uuid
from contextlib import contextmanager

from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from planner.tune.study import record
from planner.tune.study.kinds import SEARCH, Baseline
from planner.tune.study.record import INTERRUPTED, WORKER_DIED, counted, interrupted
from planner.tune.storage.processes import process_alive, process_identity
from planner.tune.storage.signals import deferred
from planner.tune.storage.backends import StorageFull, disk_full

HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 300.0  # ten missed heartbeats: a busy machine's thread may be starved for a while

_ACTIVE_RUNS: set[str] = set()  # run tokens of this process's Worker objects still running
RUN_KEY = "planner:run:"  # a study system attribute per run (its worker identity), written before its first trial


def owed(study, total: int) -> int:
    """Trials still to run: up to ``total`` counted ones (confirmation and learning-rate sweep runs are not), and at least every
    queued baseline not yet finished."""
    trials = [(t, record.read(t)) for t in study.get_trials(deepcopy=False)]
    done = {rec.kind for t, rec in trials if counted(t)}
    queued = {rec.kind for t, rec in trials if t.state == TrialState.WAITING}
    baselines = [k for k in queued if isinstance(k, Baseline) and k not in done]
    return max(total - sum(counted(t) and not rec.is_confirm and not rec.is_sweep for t, rec in trials), len(baselines))


class StopAfter:
    """Stop the study once it holds ``total`` finished trials (counted across every process)."""

    def __init__(self, total: int):
        self.total = total

    def __call__(self, study, trial) -> None:
        if owed(study, self.total) <= 0:
            study.stop()


def stored_trials(storage, study_name: str) -> int | None:
    """How many of ``study_name``'s trials in ``storage`` count (:func:`counted`); 0 when it was never created,
    None when the storage cannot be read (an error message must not end in another error)."""
    try:
        study_id = storage.get_study_id_from_name(study_name)
        return sum(counted(t) for t in storage.get_all_trials(study_id, deepcopy=False))
    except KeyError:
        return 0
    except Exception:  # noqa: BLE001 - the storage's own failure: the caller's message stands without the count
        return None


def settle_message(exc: BaseException) -> str:
    name = getattr(exc, "signum", None)
    return "interrupted" if name in (None, 2) else f"interrupted by {signal_name(name)}"


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def attach(study) -> "Worker":
    """This process's :class:`Worker` on ``study``: told of every new trial, announced, dead workers' trials reaped."""
    worker = Worker(study)
    if hasattr(study.sampler, "on_trial"):
        study.sampler.on_trial = worker.own
    worker.announce()
    worker.reap()
    return worker


class Worker:
    """This process's part in a study: claims trials, renews heartbeats, reaps the dead, settles after Ctrl-C."""

    def __init__(self, study):
        self.study = study
        self.run = uuid.uuid4().hex[:12]
        self.identity = {**process_identity(), "run": self.run}
        self.owned: list[int] = []  # trial ids this run started, oldest first
        self._settled: set[int] = set()
        self.since = datetime.datetime.now()  # trials created before this are another run's (naive, as Optuna's)
        _ACTIVE_RUNS.add(self.run)

    def announce(self) -> None:
        """Record this run on the study before it creates a trial: a trial left with no worker recorded (created,
        then the disk filled) is then known dead as soon as every run recorded before it has ended."""
        self.study._storage.set_study_system_attr(self.study._study_id, RUN_KEY + self.run, self.identity)

    def close(self) -> None:
        _ACTIVE_RUNS.discard(self.run)

    # -- a trial's life -------------------------------------------------------
    def own(self, trial_id: int) -> None:
        """Remember a trial the moment it is created or popped (before any storage write for it)."""
        if trial_id not in self.owned:
            self.owned.append(trial_id)

    @contextmanager
    def running(self, trial):
        """Claim ``trial`` for this process, renew its heartbeat while the block runs; mark it on Ctrl-C."""
        self.own(trial._trial_id)
        storage = self.study._storage
        stop = threading.Event()
        try:
            with deferred():
                record.store_in(storage, trial._trial_id, worker=self.identity, heartbeat=time.time())
            threading.Thread(
                target=self._beat, args=(trial._trial_id, stop), daemon=True, name="planner-heartbeat"
            ).start()
            yield
        except KeyboardInterrupt:
            with deferred():
                record.store_in(storage, trial._trial_id, reason=INTERRUPTED)
            raise
        finally:
            stop.set()

    def _beat(self, trial_id: int, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            try:
                record.store_in(self.study._storage, trial_id, heartbeat=time.time())
            except Exception:  # noqa: BLE001 - the trial finished meanwhile, or the storage hiccuped: next beat
                pass

    # -- the dead and the interrupted -----------------------------------------
    def death(self, trial) -> str | None:
        """Why RUNNING ``trial`` is dead (a reason starting with "worker died"), or None while it may live."""
        rec = record.read(trial)
        who = rec.worker
        now = time.time()
        if who is None:
            # created, then stopped before its worker was written (milliseconds, or a disk that filled in between)
            start = trial.datetime_start
            age = (datetime.datetime.now() - start).total_seconds() if start else 0.0
            if age > STALE_SECONDS:
                return f"{WORKER_DIED} (no worker recorded; started {age:.0f} s ago)"
            if start is not None and start < self.since and self._earlier_runs_ended():
                return f"{WORKER_DIED} (no worker recorded; every earlier run on the study has ended)"
            return None
        host, pid = who.host, who.pid
        where = f"process {pid} on {host.split('|')[0]}"
        if host == self.identity["host"]:
            if pid == os.getpid() and who.started == self.identity["started"]:
                return (
                    None if who.run in _ACTIVE_RUNS else f"{WORKER_DIED} (an earlier run of {where} stopped mid-trial)"
                )
            return None if process_alive(pid, who.started) else f"{WORKER_DIED} ({where} ended mid-trial)"
        silent = now - float(rec.heartbeat or 0.0)
        return f"{WORKER_DIED} ({where}: no heartbeat for {silent:.0f} s)" if silent > STALE_SECONDS else None

    def _earlier_runs_ended(self) -> bool:
        """Whether every other run recorded on the study (:meth:`announce`) has ended; runs on another machine are
        never known to have ended here (their heartbeats tell, per trial)."""
        runs = self.study._storage.get_study_system_attrs(self.study._study_id)
        for key, who in runs.items():
            if not key.startswith(RUN_KEY) or key == RUN_KEY + self.run:
                continue
            if who.get("host") != self.identity["host"]:
                return False
            if who.get("pid") == os.getpid() and who.get("started") == self.identity["started"]:
                if who.get("run") in _ACTIVE_RUNS:
                    return False
            elif process_alive(int(who["pid"]), who.get("started")):
                return False
        return True

    def reap(self, study=None, _trial=None) -> int:
        """Fail every dead RUNNING trial and queue it again; returns how many this process failed.

        Also an ``optimize`` callback (``study, trial`` arguments), so long runs reap as they go.
        """
        n = 0
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            reason = self.death(trial)
            if reason is not None and self._fail(trial, reason):
                n += 1
        return n

    def settle(self) -> None:
        """After Ctrl-C/SIGTERM: this run's unfinished trials are failed as interrupted and queued again."""
        with deferred():
            for trial_id in self.owned:
                if trial_id in self._settled:
                    continue
                trial = self.study._storage.get_trial(trial_id)
                if trial.state == TrialState.RUNNING and self._fail(trial, INTERRUPTED):
                    continue
                # failed as interrupted by its own thread (a --jobs slot), here or between the read and the write
                trial = self.study._storage.get_trial(trial_id)
                if trial.state == TrialState.FAIL and interrupted(trial):
                    self._settled.add(trial_id)
                    self._retry(trial)
            self.close()

    def _fail(self, trial, reason: str) -> bool:
        """Fail ``trial`` with ``reason`` and queue it again; False when another process got there first."""
        storage = self.study._storage
        try:
            record.store_in(storage, trial._trial_id, reason=reason)
            # the state change is atomic in every storage: of two reapers exactly one succeeds
            if not storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                return False
        except UpdateFinishedTrialError:
            return False
        self._settled.add(trial._trial_id)
        self._retry(trial)
        return True

    def _retry(self, trial) -> None:
        """Queue the same point again (a searched trial that never chose its point is simply not repeated)."""
        rec = record.read(trial)
        # a queued trial (a baseline, a retry) stopped before it suggested anything still knows its point
        params = {**trial.system_attrs.get("fixed_params", {}), **trial.params}
        if rec.kind == SEARCH and not params:
            return
        first = rec.retry_of if rec.retry_of is not None else trial.number
        # what a queued trial was queued with (its sweep factor, the confirmed trial and seed) is asked again
        record.enqueue(self.study, params, rec.retry(first))


class GuardedObjective:
    """``objective`` run inside :meth:`Worker.running`: claimed, heart-beating, marked when interrupted; a full disk
    stops the study (:class:`~planner.tune.storage.backends.StorageFull`) instead of failing the trial on that disk."""

    def __init__(self, objective, worker: Worker):
        self.objective = objective
        self.worker = worker

    def __call__(self, trial):

        try:
            with self.worker.running(trial):
                return self.objective(trial)
        except Exception as exc:
            if disk_full(exc) is None:
                raise
            raise StorageFull(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
