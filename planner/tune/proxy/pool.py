"""Proxy runs in worker processes: ``--jobs`` runs train at once, each on its own cores.

The workers are forked from this process once the workload is built and before any thread starts, so each
holds the same workload and proxy trainer without pickling them. A study thread hands a run to an idle
worker (:meth:`ProxyPool.__call__` has :func:`planner.tune.proxy.train.run_proxy`'s signature); the run's
evaluations come back one at a time and are answered in the thread (go on, or the pruner's
``TrialPruned``, raised inside the run); its result or its exception comes back last. A run's figures do
not depend on which worker trains it or on what the others train.

Workers ignore Ctrl-C (the terminal sends it to every process of the command): the study's own process
decides, and :meth:`ProxyPool.stop` ends the workers; runs in flight then raise :class:`PoolStopped`.
A worker also ends when its study process is gone (Linux: the parent-death signal; elsewhere at its next
message).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import pickle
import queue
import signal
import sys
import threading
from typing import Any, Callable

from planner.machine import available_bytes, usable_cores

PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent ends
MAX_AUTO_JOBS = 4  # runs at once by default: TPE learns less from each of many trials started together


class PoolStopped(KeyboardInterrupt):
    """A run in flight when the pool was stopped (Ctrl-C, SIGTERM, another thread's fatal error)."""


class WorkerDied(RuntimeError):
    """The worker process training a run ended without an answer (killed, out of memory)."""


def auto_jobs(threads: int, cap: int, run_bytes: int = 0) -> int:
    """Runs at once by default: as many as the usable cores hold at ``threads`` each and the available memory
    holds at ``run_bytes`` each, at most ``cap``; one where ``threads`` is 0 (PyTorch's default already takes
    every core)."""
    if threads <= 0:
        return 1
    jobs = min(cap, usable_cores() // threads)
    free = available_bytes()
    if run_bytes > 0 and free is not None:
        jobs = min(jobs, free // run_bytes)
    return max(1, jobs)


class ProxyPool:
    """``jobs`` forked workers training proxy runs with ``proxy`` on ``workload``, ``threads`` PyTorch threads each."""

    def __init__(self, proxy: Callable, workload, *, jobs: int, threads: int):
        ctx = multiprocessing.get_context("fork")
        self._idle: queue.Queue[int] = queue.Queue()
        self._conns: list[Any] = []
        self._procs: list[Any] = []
        self._stopping = False
        self._lock = threading.Lock()  # stop() comes from the main thread and from a slot's thread at once
        self._dead: set[int] = set()  # slots whose worker ended mid-run (none is forked again: threads run now)
        for slot in range(jobs):
            ours, theirs = ctx.Pipe()
            process = ctx.Process(
                target=_serve,
                args=(theirs, proxy, workload, threads, list(self._conns)),
                daemon=True,  # ended by multiprocessing when this process exits
                name=f"planner-proxy-{slot}",
            )
            process.start()
            theirs.close()
            self._conns.append(ours)
            self._procs.append(process)
            self._idle.put(slot)

    @property
    def jobs(self) -> int:
        return len(self._procs)

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called: no run may start."""
        return self._stopping

    @property
    def pids(self) -> list[int | None]:
        """The worker processes' ids, by slot."""
        return [process.pid for process in self._procs]

    def __call__(self, workload, params, *, on_eval: Callable[[int, float], None] | None = None, **kwargs):
        """Train one run in an idle worker (waiting for one); the same arguments, result and exceptions as the
        in-process trainer. ``workload`` must be the pool's own (the workers hold it)."""
        slot = self._take()
        conn, healthy = self._conns[slot], False
        verdict: BaseException | None = None  # raised here by on_eval: the run ends with it, raised again here
        try:
            conn.send((params, kwargs))
            while True:
                kind, payload = self._recv(slot)
                if kind == "eval":
                    answer = None
                    try:
                        if on_eval is not None:
                            on_eval(*payload)
                    except BaseException as exc:  # noqa: BLE001 - the pruner's verdict is raised inside the run
                        verdict, answer = exc, _picklable(exc)
                    conn.send(answer)
                    continue
                healthy = True
                if kind == "done":
                    return payload
                raise verdict if verdict is not None else payload
        except (EOFError, OSError) as exc:
            if self._stopping:
                raise PoolStopped("stopped") from None
            self._dead.add(slot)
            process = self._procs[slot]
            process.join(1.0)
            raise WorkerDied(
                f"proxy worker process {process.pid} ended mid-run (exit code {process.exitcode})"
            ) from exc
        finally:
            if healthy:
                self._idle.put(slot)

    def _take(self) -> int:
        while True:
            if self._stopping:
                raise PoolStopped("stopped")
            if len(self._dead) == self.jobs:
                raise WorkerDied(f"every proxy worker process has ended ({self.jobs} of {self.jobs})")
            with contextlib.suppress(queue.Empty):
                return self._idle.get(timeout=0.2)

    def _recv(self, slot: int):
        conn = self._conns[slot]
        while not conn.poll(0.2):  # a stop() ends the wait even if the worker hangs
            if self._stopping:
                raise PoolStopped("stopped")
        return conn.recv()

    def stop(self) -> None:
        """End every worker now; runs in flight raise :class:`PoolStopped` in their threads (which may still be
        waiting on the pipes: those are closed by :meth:`close` or with the pool)."""
        with self._lock:
            self._stopping = True
            for process in self._procs:
                if process.is_alive():
                    process.kill()
            for process in self._procs:
                process.join(5.0)

    def close(self) -> None:
        """End the workers once no thread uses the pool (after the study, or after a stop and its threads)."""
        if not self._stopping:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.send(None)
            for process in self._procs:
                process.join(5.0)
        self.stop()
        for conn in self._conns:
            conn.close()


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - an exception that does not travel is sent as its text
        return RuntimeError(f"{type(exc).__name__}: {exc}"[:500])


def _serve(conn, proxy: Callable, workload, threads: int, others: list) -> None:
    """A worker's loop: runs in, evaluations and results out, until the study process says stop or is gone."""
    for other in others:  # the earlier workers' pipes: held here they would never see their study process end
        other.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent()
    if threads:
        import torch  # torch: deferred, 'planner tune --help' loads this module; loaded in the worker already

        torch.set_num_threads(threads)

    def on_eval(step: int, value: float) -> None:
        conn.send(("eval", (step, value)))
        answer = conn.recv()
        if answer is not None:
            raise answer

    try:
        while (task := conn.recv()) is not None:
            params, kwargs = task
            try:
                result = proxy(workload, params, on_eval=on_eval, **kwargs)
            except (EOFError, BrokenPipeError):
                raise
            except BaseException as exc:  # noqa: BLE001 - every failure goes back to the trial that asked
                conn.send(("raise", _picklable(exc)))
            else:
                conn.send(("done", result))
    except (EOFError, OSError):
        pass  # the study process is gone or stopped this worker
    finally:
        os._exit(0)  # nothing of the study process (its storage connections, its atexit hooks) runs here
