"""Proxy runs in worker processes (``--jobs``): the figures of an in-process run, the pruner's verdict raised inside
the run, a killed worker, a stopped pool; a study with two jobs against the same study with one."""

import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import optuna
import pytest
from optuna.trial import TrialState

from tune_helpers import tune_options

from planner.tune import TuneOptions, run_tune
from planner.machine import fork_available
from planner.tune.proxy.pool import PoolStopped, ProxyPool, WorkerDied
from planner.tune.proxy.train import run_proxy
from planner.tune.search.space import TrialParams
from planner.tune.run import Interrupted
from planner.tune.storage.backends import open_storage
from planner.tune.storage.signals import interrupts_as_keyboard_interrupt
from planner.tune.study.kinds import Confirm
from planner.tune.study import record
from planner.tune.study.record import INTERRUPTED, counted, kind_of

pytestmark = pytest.mark.skipif(not fork_available(), reason="worker processes are forked (Linux)")

POINT = TrialParams(active_layers=2, period=2, scorer="uniform", train_embeddings=False, train_head=True, lr=3e-3)
RUN = dict(batch_size=4, steps=6, eval_every=2)


@pytest.fixture
def pool(wl):
    pool = ProxyPool(run_proxy, wl, jobs=2, threads=1)
    yield pool
    pool.close()


def test_runs_in_workers_give_the_in_process_figures(wl, pool):
    here = [run_proxy(wl, POINT, seed=s, **RUN) for s in (0, 1)]
    assert here[0].metric != here[1].metric  # the seeds differ: a swapped result would show
    seen: dict[int, list] = {0: [], 1: []}
    with ThreadPoolExecutor(2) as threads:  # both workers at once
        there = list(
            threads.map(lambda s: pool(wl, POINT, seed=s, on_eval=lambda *e: seen[s].append(e), **RUN), (0, 1))
        )
    for s, (a, b) in enumerate(zip(here, there)):
        assert (a.metric, a.evaluations, a.secondary, a.history) == (b.metric, b.evaluations, b.secondary, b.history)
        assert seen[s] == a.evaluations  # every evaluation reached this process as it happened


def test_the_pruners_verdict_is_raised_inside_the_run_and_the_worker_goes_on(wl, pool):
    steps: list[int] = []

    def prune(step, value):
        steps.append(step)
        if step == 4:
            raise optuna.TrialPruned("pruned at 4")

    with pytest.raises(optuna.TrialPruned, match="pruned at 4"):
        pool(wl, POINT, seed=0, on_eval=prune, **RUN)
    assert steps == [2, 4]  # the run stopped at the verdict: no evaluation at 6
    for _ in range(pool.jobs):  # each worker, the one that was stopped included, trains the next run
        assert pool(wl, POINT, seed=0, **RUN).metric == run_proxy(wl, POINT, seed=0, **RUN).metric


def test_a_killed_worker_fails_its_run_naming_it_and_the_rest_go_on(wl):
    pool = ProxyPool(run_proxy, wl, jobs=1, threads=1)
    try:
        victim = pool.pids[0]
        with pytest.raises(WorkerDied, match=f"proxy worker process {victim} ended mid-run"):
            pool(wl, POINT, seed=0, on_eval=lambda *e: os.kill(victim, signal.SIGKILL), **RUN)
        with pytest.raises(WorkerDied, match="every proxy worker process has ended"):
            pool(wl, POINT, seed=0, **RUN)
    finally:
        pool.close()


def test_stop_ends_a_run_in_flight_at_once(wl, pool):
    started, outcome = threading.Event(), []

    def long_run():
        try:
            pool(wl, POINT, seed=0, batch_size=4, steps=100_000, eval_every=1, on_eval=lambda *e: started.set())
        except BaseException as exc:  # noqa: BLE001
            outcome.append(exc)

    thread = threading.Thread(target=long_run)
    thread.start()
    assert started.wait(120)
    pool.stop()
    thread.join(120)  # a hang guard: the run had hours of steps left
    assert not thread.is_alive() and isinstance(outcome[0], PoolStopped)
    assert all(not os.path.exists(f"/proc/{pid}") or _zombie(pid) for pid in pool.pids)


def _zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ")[1].startswith("Z")


def _options(tmp_path, target, wl, jobs, **kw):
    base = dict(n_trials=8, steps=6, eval_every=2, study="t", confirm_seeds=2, confirm_top=1, jobs=jobs)
    return tune_options(tmp_path, target, wl, **{**base, **kw})


def _confirmed_baselines(tmp_path):
    """Each baseline's confirmation runs: (baseline, proxy lr, seed index) -> metric."""
    study = optuna.load_study(study_name="t", storage=open_storage(f"sqlite:///{tmp_path}/s.db"))
    trials = {t.number: t for t in study.trials}
    out = {}
    for t in study.trials:
        kind = kind_of(t)
        if isinstance(kind, Confirm) and str(kind_of(trials[kind.trial])).startswith("baseline"):
            out[(str(kind_of(trials[kind.trial])), t.params["lr"], kind.seed)] = t.value
    return study, out


def test_a_study_with_two_jobs_confirms_the_baselines_as_one_job_does(tmp_path, target, wl):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    run_tune(_options(one, target, wl, 1), workload=wl, progress=False)
    run_tune(_options(two, target, wl, 2), workload=wl, progress=False)
    study_one, first = _confirmed_baselines(one)
    study_two, second = _confirmed_baselines(two)
    # the baselines, their sweeps and their confirmations do not depend on the search: the same figures
    assert first and first == second
    for study in (study_one, study_two):
        assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        # the study's trials, sweeps and confirmations aside: exactly --n-trials (two slots do not overrun it)
        assert (
            sum(counted(t) and not record.read(t).is_confirm and not record.read(t).is_sweep for t in study.trials) == 8
        )


def test_ctrl_c_in_a_study_with_two_jobs_loses_nothing(tmp_path, target, wl):
    """A real SIGINT while both slots train: one line to resume (exit 130), every trial in flight failed as
    interrupted and queued again, none left running; the resume runs exactly the rest."""
    opts = _options(tmp_path, target, wl, 2, n_trials=40, confirm_seeds=0)
    storage = open_storage(opts.storage)

    def finished_trials() -> int:
        try:
            return sum(counted(t) for t in optuna.load_study(study_name="t", storage=storage).trials)
        except KeyError:  # not created yet
            return 0

    def interrupt_mid_study() -> None:
        while finished_trials() < 4:
            threading.Event().wait(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    watcher = threading.Thread(target=interrupt_mid_study, daemon=True)
    with interrupts_as_keyboard_interrupt(), pytest.raises(Interrupted, match="resume with: planner tune") as err:
        watcher.start()
        run_tune(opts, workload=wl, progress=False)
    assert err.value.exit_code == 130
    before = optuna.load_study(study_name="t", storage=storage).trials
    assert not [t for t in before if t.state == TrialState.RUNNING]
    stopped = [t for t in before if t.user_attrs.get("reason") == INTERRUPTED]
    # the trials training when it came (none where both slots were between two trials)
    assert len(stopped) <= 2 and all(t.state == TrialState.FAIL and not counted(t) for t in stopped)
    assert 4 <= sum(counted(t) for t in before) < 40  # it stopped mid-study
    retried = sorted(t.user_attrs["retry_of"] for t in before if "retry_of" in t.user_attrs)
    # each once; a searched trial stopped before it drew its point is not (a queued one knows its point)
    assert retried == sorted(t.number for t in stopped if t.params or t.system_attrs.get("fixed_params"))
    run_tune(opts, workload=wl, progress=False)
    after = optuna.load_study(study_name="t", storage=storage).trials
    assert not [t for t in after if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert sum(counted(t) for t in after) == 40


def test_the_default_job_count_holds_to_the_cores_and_the_memory(monkeypatch):
    import planner.tune.proxy.pool as pool_mod

    monkeypatch.setattr(pool_mod, "usable_cores", lambda: 8)
    monkeypatch.setattr(pool_mod, "available_bytes", lambda: 10 * 2**30)
    assert pool_mod.auto_jobs(1, 4) == 4  # the cap
    assert pool_mod.auto_jobs(4, 4) == 2  # 8 cores at 4 threads each
    assert pool_mod.auto_jobs(0, 4) == 1  # PyTorch's default threads take every core
    assert pool_mod.auto_jobs(1, 4, run_bytes=4 * 2**30) == 2  # 10 GiB free hold two 4 GiB runs
    assert pool_mod.auto_jobs(1, 4, run_bytes=16 * 2**30) == 1  # never none


def test_more_than_one_job_on_a_cuda_proxy_is_refused_naming_the_flag(wl):
    from planner.errors import PlannerError
    from planner.tune.proxy.source import ProxySetup
    from planner.tune.study.slots import study_jobs

    cuda = ProxySetup("given", wl.name, "cuda", wl, wl.spec.num_layers, wl.spec.hidden_size)
    with pytest.raises(PlannerError, match="--jobs must be 1 with a proxy on cuda .* but got 2"):
        study_jobs(TuneOptions(vram="24GB", jobs=2), cuda, None)
    assert study_jobs(TuneOptions(vram="24GB"), cuda, None) == 1
    cpu = ProxySetup("given", wl.name, "cpu", wl, wl.spec.num_layers, wl.spec.hidden_size)
    assert study_jobs(TuneOptions(vram="24GB", jobs=3), cpu, None) == 3
    assert study_jobs(TuneOptions(vram="24GB"), cpu, trainer=run_proxy) == 1  # a trainer given in Python


class _StorageError(Exception):
    """An error that does not travel between processes (it holds a lock), as a storage driver's may not."""

    def __init__(self):
        super().__init__("the storage refused")
        self.lock = threading.Lock()


def test_an_error_of_the_evaluation_callback_is_raised_as_itself_and_the_worker_goes_on(wl, pool):
    error = _StorageError()

    def fail(step, value):
        raise error

    with pytest.raises(_StorageError) as raised:
        pool(wl, POINT, seed=0, on_eval=fail, **RUN)
    assert raised.value is error  # not a copy: the caller's handling (a full disk) sees what it raised
    assert pool(wl, POINT, seed=1, **RUN).metric == run_proxy(wl, POINT, seed=1, **RUN).metric
