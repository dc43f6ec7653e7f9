"""Nothing lost, in-process: interrupts in finalizers, cut journals, dead workers' trials, seeds, resume and output checks."""

import gc
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import uuid
import weakref
from io import StringIO

import optuna
import pytest
from optuna.trial import TrialState
from tune_helpers import storage_url

from planner.cli.main import main
from planner.errors import PlannerError
from planner.tune import TuneOptions, run_tune
from planner.tune.study.baselines import KINDS
from planner.tune.storage.lifecycle import RUN_KEY, Worker, attach
from planner.tune.storage.processes import process_identity
from planner.tune.study.record import INTERRUPTED, WORKER_DIED, counted, interrupted
from planner.tune.storage.preflight import check_resume
from planner.tune.search.seeding import PerTrialSeed
from planner.tune.storage.signals import Interrupt, deferred, exit_code, interrupts_as_keyboard_interrupt
from planner.tune.proxy.train import run_proxy
from planner.tune.storage.backends import open_storage
from planner.tune.run import Interrupted

STEPS = 4


def options(tmp_path, **kw):
    base = dict(
        vram="1GB",
        n_trials=5,
        steps=STEPS,
        eval_every=2,
        storage=f"sqlite:///{tmp_path}/s.db",
        study="t",
        device="cpu",
        out=str(tmp_path / "plan.yaml"),
        confirm_seeds=0,
    )  # confirmation: test_tune_confirm.py
    return TuneOptions(**{**base, **kw})


STORAGES = ["sqlite", "journal", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture
def study_name():
    """A fresh study name (a PostgreSQL database is shared between tests), deleted there afterwards."""
    name = f"robust-{uuid.uuid4().hex[:10]}"
    yield name
    url = os.environ.get("PLANNER_TEST_POSTGRES_URL")
    if url and name in optuna.get_all_study_names(open_storage(url)):
        optuna.delete_study(study_name=name, storage=open_storage(url))


# ---------------------------------------------------------------- signals


def _interrupt_inside_finalizer():
    """A real SIGINT that arrives while a weakref.finalize callback runs (what the cost trace's tracker does)."""

    class Box:
        pass

    def on_free():
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(20000):  # Python checks for pending signals between bytecodes: here, inside the finalizer
            pass

    gc.collect()  # earlier tests' garbage (storages, pools) is collected first, not inside the timed window
    box = Box()
    weakref.finalize(box, on_free)
    del box
    gc.collect()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 2.0:  # the interrupt must land here, once the finalizer has returned
        pass


@pytest.fixture
def swallowed(monkeypatch):
    """Exceptions Python could not raise ("Exception ignored in: ...") while the test ran."""
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.exc_type))
    return seen


def test_an_interrupt_in_a_finalizer_is_raised_after_it(swallowed):
    with interrupts_as_keyboard_interrupt():
        with pytest.raises(Interrupt) as err:
            _interrupt_inside_finalizer()
    assert swallowed == []
    # raised in the loop after the finalizer (not at the loop's end: the traceback's last frame is that loop)
    assert err.traceback[-1].name in ("_interrupt_inside_finalizer", "_handler")


@pytest.mark.parametrize("container", [weakref.WeakKeyDictionary, weakref.WeakSet])
def test_a_weak_containers_callback_is_a_frame_no_interrupt_is_raised_in(container):
    """The garbage collector runs these callbacks anywhere; a signal landing in one is re-sent, not swallowed."""
    from planner.tune.storage.signals import _unsafe

    class Key:
        pass

    seen = []

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_name in ("remove", "_remove"):
            seen.append(_unsafe(frame))

    key, box = Key(), container()
    box.add(key) if isinstance(box, weakref.WeakSet) else box.__setitem__(key, 1)
    sys.setprofile(profile)
    try:
        del key  # frees the key: the container's callback runs here
    finally:
        sys.setprofile(None)
    assert seen == [True] and len(box) == 0


def test_sigterm_is_an_interrupt_and_a_deferred_section_raises_at_its_end():
    done = []
    with interrupts_as_keyboard_interrupt():
        with pytest.raises(Interrupt) as err:
            with deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(20000):
                    pass
                done.append(True)  # the section ran to its end
    assert done == [True] and err.value.signum == signal.SIGTERM and exit_code(err.value) == 143
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored


def test_three_signals_cut_a_deferred_section_short():
    with interrupts_as_keyboard_interrupt():
        with pytest.raises(Interrupt):
            with deferred():
                for _ in range(3):
                    os.kill(os.getpid(), signal.SIGINT)
                    for _ in range(20000):
                        pass
                pytest.fail("the third signal must interrupt the section")


# ---------------------------------------------------------------- journal


def _journal_with_trials(path, n=3):
    study = optuna.create_study(storage=open_storage(str(path)), study_name="j")
    for i in range(n):
        study.enqueue_trial({"x": float(i)}, user_attrs={"kind": "search"})
    return study


def test_a_cut_last_record_is_set_aside_before_appending(tmp_path, capsys):
    path = tmp_path / "s.log"
    _journal_with_trials(path)
    whole = path.read_bytes()
    cut = b'{"op_code":5,"worker_id":"x","trial_id":0,"user_attr":{"reas'
    path.write_bytes(whole + cut)
    study = optuna.load_study(storage=open_storage(str(path)), study_name="j")
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"({len(cut)} bytes" in err and "incomplete record" in err
    assert path.read_bytes() == whole and (tmp_path / "s.log.torn").read_bytes() == cut + b"\n"
    study.enqueue_trial({"x": 9.0})  # appending works and the study stays readable
    again = optuna.load_study(storage=open_storage(str(path)), study_name="j")
    assert len(again.trials) == 4
    assert capsys.readouterr().err == ""  # nothing more to repair


def test_a_cut_record_with_a_whole_one_appended_is_split(tmp_path, capsys):
    # what appending onto a cut line used to leave: every later read failed with a JSONDecodeError
    path = tmp_path / "s.log"
    _journal_with_trials(path, n=2)
    lines = path.read_bytes().splitlines(keepends=True)
    cut = lines[-1][:25]
    path.write_bytes(b"".join(lines[:-1]) + cut + lines[-1])
    study = optuna.load_study(storage=open_storage(str(path)), study_name="j")
    assert len(study.trials) == 2
    assert "line" in capsys.readouterr().err and (tmp_path / "s.log.torn").read_bytes() == cut + b"\n"


@pytest.mark.parametrize("command", ["tune", "report"])
def test_garbage_in_the_middle_is_one_error_naming_the_line(tmp_path, capsys, command):
    path = tmp_path / "s.log"
    _journal_with_trials(path)
    lines = path.read_bytes().splitlines(keepends=True)
    lines.insert(2, b"this is not json\n")
    path.write_bytes(b"".join(lines))
    argv = (
        ["tune", "--vram", "1GB", "--storage", str(path), "--study", "j", "--out", str(tmp_path / "p.yaml")]
        if command == "tune"
        else ["report", "--study", "j", "--storage", str(path), "--out", str(tmp_path / "r")]
    )
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "line 3" in err and str(path) in err and "Traceback" not in err


# ---------------------------------------------------------------- dead workers


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _running_trial(study, worker, params=None, kind="baseline:lisa", heartbeat=None):
    """A RUNNING trial as a worker leaves it when it is killed (``kill -9``) mid-trial."""
    study.enqueue_trial(params or {"x": 0.5}, user_attrs={"kind": kind})
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    trial.set_user_attr("worker", worker)
    trial.set_user_attr("heartbeat", time.time() if heartbeat is None else heartbeat)
    return trial.number


@pytest.mark.parametrize("kind", STORAGES)
def test_a_dead_workers_trial_is_failed_and_retried(tmp_path, kind, study_name):
    storage = open_storage(storage_url(kind, tmp_path))
    study = optuna.create_study(storage=storage, study_name=study_name)
    first_run = Worker(study)
    me = first_run.identity
    dead = _running_trial(study, {**me, "pid": _dead_pid(), "started": None, "run": "x"})
    mine = _running_trial(study, me, params={"x": 0.25})  # this process's trial, its run still active: alive
    far_alive = _running_trial(study, {**me, "host": "elsewhere"}, params={"x": 0.75})  # fresh heartbeat elsewhere
    far_dead = _running_trial(
        study, {**me, "host": "elsewhere"}, params={"x": 0.125}, kind="search", heartbeat=time.time() - 3600
    )
    worker = attach(optuna.load_study(storage=storage, study_name=study_name))
    trials = study.trials
    assert {t.number for t in trials if t.state == TrialState.RUNNING} == {mine, far_alive}
    for n in (dead, far_dead):
        assert trials[n].state == TrialState.FAIL and trials[n].user_attrs["reason"].startswith(WORKER_DIED)
        assert interrupted(trials[n]) and not counted(trials[n])
    retries = [t for t in trials if t.state == TrialState.WAITING]
    assert [(t.user_attrs["retry_of"], t.user_attrs["kind"], t.system_attrs["fixed_params"]) for t in retries] == [
        (dead, "baseline:lisa", {"x": 0.5}),
        (far_dead, "search", {"x": 0.125}),
    ]
    assert "process" in trials[dead].user_attrs["reason"] and "no heartbeat" in trials[far_dead].user_attrs["reason"]
    assert worker.reap() == 0  # a second reaper finds nothing more to do
    worker.close()
    first_run.close()  # the run that owned `mine` is over: a later run in this process reaps it
    assert Worker(study).reap() == 1 and study.trials[mine].state == TrialState.FAIL


@pytest.mark.parametrize("kind", STORAGES)
def test_a_trial_left_with_no_worker_is_reaped_once_every_earlier_run_has_ended(tmp_path, kind, study_name):
    """A trial created just before the disk filled has no worker recorded: dead at once when every run announced on
    the study before it has ended; left alone while one may live (here, or on another machine), or when it is new."""
    storage = open_storage(storage_url(kind, tmp_path))
    me = process_identity()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    study = optuna.create_study(storage=storage, study_name=study_name)
    still_running = Worker(study)  # a run of this process that has not ended
    runs = {
        "dead": {**me, "pid": _dead_pid(), "started": None, "run": "dead"},
        "alive": {**me, "pid": sleeper.pid, "started": None, "run": "alive"},
        "far": {**me, "host": "elsewhere", "run": "far"},
        "ended": {**me, "run": "ended"},  # an earlier run of this process (a resume from Python)
        "open": still_running.identity,
    }
    try:
        for earlier in (["dead", "alive"], ["dead", "far"], ["ended", "open"], ["dead", "ended"]):
            study = optuna.create_study(storage=storage, study_name=f"{study_name}-{'-'.join(earlier)}")
            study.ask()  # created, then the disk filled: no worker record
            for name in earlier:
                storage.set_study_system_attr(study._study_id, RUN_KEY + name, runs[name])
            worker = attach(study)
            new = study.ask().number  # this run's own trial before its worker is written: never reaped
            trials = study.trials
            worker.close()
            assert trials[new].state == TrialState.RUNNING
            assert (trials[0].state == TrialState.FAIL) == (earlier == ["dead", "ended"]), earlier
        assert "every earlier run on the study has ended" in trials[0].user_attrs["reason"] and interrupted(trials[0])
    finally:
        still_running.close()
        sleeper.kill()
        sleeper.wait()


def _reap_in_child(url, name, barrier, out):
    study = optuna.load_study(storage=open_storage(url), study_name=name)
    barrier.wait()
    out.put(Worker(study).reap())


def _in_four_children(target, url: str, study_name: str) -> list:
    """Run ``target(url, study_name, barrier, out)`` in four forked processes released together; what each put."""
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=target, args=(url, study_name, barrier, out)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    return [out.get(timeout=5) for _ in procs]


@pytest.mark.parametrize("kind", STORAGES)
def test_four_reapers_at_once_retry_a_dead_trial_once(tmp_path, kind, study_name):
    url = storage_url(kind, tmp_path)
    study = optuna.create_study(storage=open_storage(url), study_name=study_name)
    me = Worker(study).identity
    for i in range(4):
        _running_trial(study, {**me, "pid": _dead_pid(), "started": None, "run": "x"}, params={"x": i / 8})
    assert sum(_in_four_children(_reap_in_child, url, study_name)) == 4  # each dead trial failed by exactly one reaper
    trials = optuna.load_study(storage=open_storage(url), study_name=study_name).trials
    assert sorted(t.user_attrs["retry_of"] for t in trials if t.state == TrialState.WAITING) == [0, 1, 2, 3]


def _pop_in_child(url, name, barrier, out):
    study = optuna.load_study(storage=open_storage(url), study_name=name)
    barrier.wait()
    got = []
    for _ in range(10):
        got.append(study.ask().number)
    out.put(got)


@pytest.mark.parametrize("kind", STORAGES)
def test_four_workers_never_pop_one_queued_trial_twice(tmp_path, kind, study_name):
    url = storage_url(kind, tmp_path)
    study = optuna.create_study(storage=open_storage(url), study_name=study_name)
    for i in range(40):
        study.enqueue_trial({"x": float(i)})
    popped = [n for got in _in_four_children(_pop_in_child, url, study_name) for n in got]
    assert len(popped) == 40 and len(set(popped)) == 40


# ---------------------------------------------------------------- Ctrl-C inside a trial, in-process


class InterruptingProxy:
    """Proxy training interrupted (as by Ctrl-C) on its n-th run. The baselines' gates are decided when the study is
    created (their cheapest forms), so a Ctrl-C inside a baseline's trial lands in its training."""

    def __init__(self, n):
        self.n, self.calls = n, 0

    def __call__(self, *args, **kw):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return run_proxy(*args, **kw)


def test_ctrl_c_in_a_baseline_trial_loses_nothing(tmp_path, wl):
    with pytest.raises(Interrupted) as err:  # the baselines run first: the second proxy run is a baseline's
        run_tune(options(tmp_path, n_trials=8), workload=wl, progress=False, proxy=InterruptingProxy(2))
    study = optuna.load_study(storage=open_storage(f"sqlite:///{tmp_path}/s.db"), study_name="t")
    cut = next(t for t in study.trials if t.state == TrialState.FAIL)
    assert f"interrupted: {cut.number} finished trials" in str(err.value) and err.value.exit_code == 130
    assert cut.user_attrs["kind"] in KINDS and cut.number > 0
    assert cut.user_attrs["reason"] == INTERRUPTED and not counted(cut)
    result = run_tune(options(tmp_path, n_trials=8), workload=wl, progress=False)
    assert result.counts["interrupted"] == 1 and result.counts["fail"] == 0  # the summary's "N failed" leaves it out
    trials = optuna.load_study(storage=open_storage(f"sqlite:///{tmp_path}/s.db"), study_name="t").trials
    assert sum(counted(t) for t in trials) == 8 and not [t for t in trials if t.state == TrialState.RUNNING]
    for kind in KINDS:  # every baseline finished, the interrupted one as a retry
        assert [t for t in trials if t.user_attrs.get("kind") == kind and counted(t)], kind
    assert [t.user_attrs["retry_of"] for t in trials if t.user_attrs.get("retry_of") is not None] == [cut.number]


# ---------------------------------------------------------------- seeds


def _draw(trial):
    return trial.suggest_float("x", 0, 1) + 0 * trial.suggest_int("k", 0, 1000)


@pytest.mark.parametrize("name", ["random", "tpe"])
def test_resumes_and_parallel_workers_draw_new_points_one_process_repeats_itself(tmp_path, name):
    from planner.tune.search.samplers import make_sampler

    def study_on(url, sampler):
        return optuna.create_study(storage=url, study_name="s", sampler=sampler, load_if_exists=True)

    def points(study):
        return [tuple(sorted(t.params.items())) for t in study.trials]

    # a study of 16 trials run in four resumes of 4: every point new; the same with a fixed sampler seed repeats
    for wrapped, expect_repeats in ((True, False), (False, True)):
        url = f"sqlite:///{tmp_path}/{name}{wrapped}.db"
        for _ in range(4):
            sampler = make_sampler(name, 0)
            study_on(url, PerTrialSeed(sampler, 0) if wrapped else sampler).optimize(_draw, n_trials=4)
        drawn = points(study_on(url, None))
        assert (len(set(drawn)) < len(drawn)) == expect_repeats
    # one process alone is reproducible
    a = study_on(f"sqlite:///{tmp_path}/a.db", PerTrialSeed(make_sampler(name, 3), 3))
    b = study_on(f"sqlite:///{tmp_path}/b.db", PerTrialSeed(make_sampler(name, 3), 3))
    a.optimize(_draw, n_trials=8)
    b.optimize(_draw, n_trials=8)
    assert points(a) == points(b)


# ---------------------------------------------------------------- resume and outputs


def test_a_resume_with_other_steps_or_seed_is_refused_naming_both(tmp_path, wl):
    run_tune(options(tmp_path, n_trials=3), workload=wl, progress=False)
    before = len(optuna.load_study(storage=open_storage(f"sqlite:///{tmp_path}/s.db"), study_name="t").trials)
    with pytest.raises(PlannerError) as err:
        run_tune(options(tmp_path, n_trials=4, steps=STEPS + 2), workload=wl, progress=False)
    assert f"--steps is {STEPS} in the study but {STEPS + 2} now" in str(err.value)
    with pytest.raises(PlannerError, match="--seed is 0 in the study but 7 now"):
        run_tune(options(tmp_path, n_trials=4, seed=7), workload=wl, progress=False)
    assert len(optuna.load_study(storage=open_storage(f"sqlite:///{tmp_path}/s.db"), study_name="t").trials) == before


def test_any_stored_setting_that_differs_is_refused():
    stored = {"steps": 6, "target_shape": [4, 64], "proxy": "builtin-v2", "search_space": {"a": (1, 2)}, "created": 1}
    check_resume("s", stored, {**stored, "search_space": {"a": [1, 2]}, "created": 2, "new_key": 1})  # same values
    with pytest.raises(PlannerError) as err:
        check_resume("s", stored, {**stored, "target_shape": [8, 64], "proxy": "mine"})
    msg = str(err.value)
    assert len(msg.splitlines()) == 1 and "[4, 64] in the study but [8, 64] now" in msg
    assert "--proxy is 'builtin-v2' in the study but 'mine' now" in msg


def test_a_study_that_names_the_active_layer_count_gamma_is_refused_in_one_line(tmp_path, wl):
    run_tune(options(tmp_path, n_trials=3), workload=wl, progress=False)
    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    study = optuna.load_study(storage=storage, study_name="t")
    # a trial as an earlier planner stored it: γ under its old parameter name
    old = study.trials[-1]
    params = {("gamma" if k == "active_layers" else k): v for k, v in old.params.items()}
    dists = {("gamma" if k == "active_layers" else k): v for k, v in old.distributions.items()}
    study.add_trial(
        optuna.trial.create_trial(params=params, distributions=dists, values=old.values, user_attrs=old.user_attrs)
    )
    before = len(study.trials)
    with pytest.raises(PlannerError) as err:
        run_tune(options(tmp_path, n_trials=5), workload=wl, progress=False)
    msg = str(err.value)
    assert len(msg.splitlines()) == 1 and "['gamma']" in msg and "'active_layers'" in msg and "new --study" in msg
    assert len(optuna.load_study(storage=storage, study_name="t").trials) == before


@pytest.mark.parametrize("where", ["out-dir", "out-under-file", "storage-under-file"])
def test_unwritable_outputs_fail_before_any_work(tmp_path, capsys, where):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    argv = [
        "tune",
        "--vram",
        "1GB",
        "--device",
        "cpu",
        "--storage",
        f"sqlite:///{tmp_path}/s.db",
        "--out",
        str(tmp_path / "plan.yaml"),
    ]
    if where == "out-dir":
        argv[-1] = str(tmp_path)
    elif where == "out-under-file":
        argv[-1] = str(a_file / "plan.yaml")
    else:
        argv[6] = f"sqlite:///{a_file}/s.db"
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert ("--storage" if where.startswith("storage") else "--out") in err
    assert not (tmp_path / "s.db").exists()  # no study was created: nothing ran


def test_the_generated_study_name_is_printed_first(tmp_path, wl):
    from rich.console import Console

    buf = StringIO()
    result = run_tune(
        options(tmp_path, study=None, n_trials=3), workload=wl, progress=False, console=Console(file=buf, width=200)
    )
    first = buf.getvalue().splitlines()[0]
    assert first.startswith(f"study {result.plan.study_name!r}") and result.plan.study_name.startswith("tune-")


def test_a_retry_killed_before_it_chose_its_point_is_retried_with_that_point(tmp_path):
    study = optuna.create_study(storage=open_storage(storage_url("journal", tmp_path)), study_name="rr")
    study.enqueue_trial({"x": 0.3}, user_attrs={"kind": "search", "retry_of": 5})
    popped = study.ask()  # killed right after popping: no parameter suggested yet
    worker = Worker(study)
    study._storage.set_trial_user_attr(
        popped._trial_id, "worker", {**worker.identity, "pid": _dead_pid(), "started": None, "run": "x"}
    )
    assert worker.reap() == 1
    waiting = [t for t in study.trials if t.state == TrialState.WAITING]
    assert [(t.user_attrs["retry_of"], t.system_attrs["fixed_params"]) for t in waiting] == [(5, {"x": 0.3})]
    worker.close()


def test_an_interrupt_while_a_trial_is_claimed_marks_it_interrupted(tmp_path, monkeypatch):
    import contextlib

    import planner.tune.storage.lifecycle as lifecycle

    raised = []

    @contextlib.contextmanager
    def deferred_then_interrupt():  # a Ctrl-C that waited for the claim's writes, raised as they end
        yield
        if not raised:
            raised.append(True)
            raise Interrupt()

    study = optuna.create_study(storage=open_storage(storage_url("sqlite", tmp_path)), study_name="c")
    worker = Worker(study)
    monkeypatch.setattr(lifecycle, "deferred", deferred_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        study.optimize(lifecycle.GuardedObjective(_draw, worker), n_trials=1)
    trial = study.trials[0]
    assert (
        raised and trial.state == TrialState.FAIL and trial.user_attrs["reason"] == INTERRUPTED and not counted(trial)
    )
    worker.close()


def test_settle_retries_a_trial_its_own_thread_failed_as_interrupted_after_settle_read_it(tmp_path):
    """With --jobs, a slot's thread may fail its trial as interrupted between settle's read (still running) and
    settle's own write: the trial is queued again all the same, once."""
    import copy

    from planner.tune.study import record
    from planner.tune.study.kinds import Baseline

    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", study_name="race")
    record.enqueue(study, {"x": 1.0}, record.TrialRecord(kind=Baseline("lisa")))
    worker = attach(study)
    trial = study.ask()
    worker.own(trial._trial_id)
    record.store(trial, reason=INTERRUPTED)
    stale = copy.deepcopy(study._storage.get_trial(trial._trial_id))  # what settle reads: still running
    study.tell(trial, state=TrialState.FAIL)  # the slot's thread, meanwhile
    real, reads = study._storage.get_trial, []

    def get_trial(trial_id):
        reads.append(trial_id)
        return stale if len(reads) == 1 else real(trial_id)

    study._storage.get_trial = get_trial
    worker.settle()
    retries = [t for t in study.get_trials() if t.user_attrs.get("retry_of") == trial.number]
    assert len(retries) == 1 and retries[0].state == TrialState.WAITING
    assert retries[0].user_attrs["kind"] == "baseline:lisa"
