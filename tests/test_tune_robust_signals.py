"""Nothing lost, with real processes and real signals: `planner tune` killed mid-trial, then resumed."""

import os
import random
import signal
import subprocess
import sys
import time
import uuid

import optuna
import pytest
from optuna.trial import TrialState

from planner.cli.main import main
from planner.tune.study.baselines import KINDS
from planner.tune.study.record import INTERRUPTED, WORKER_DIED, counted
from planner.tune.storage.backends import open_storage
from tune_helpers import storage_url, write_user_workload

N_TRIALS = 4
STEPS = 40  # about 2 s of training per trial here: long enough to be caught mid-trial


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    return write_user_workload(tmp_path_factory.mktemp("wl"), text=True)


def argv(workload, storage, study, out, n=N_TRIALS):
    model, data = workload
    # the user's model as its own proxy, in its own shape (seq 1024): slow enough to be caught mid-trial
    return [
        "tune",
        "--vram",
        "1GB",
        "--model",
        model,
        "--proxy",
        "target",
        "--data",
        data,
        "--n-trials",
        str(n),
        "--steps",
        str(STEPS),
        "--eval-every",
        str(STEPS // 2),
        "--storage",
        storage,
        "--study",
        study,
        "--device",
        "cpu",
        "--quiet",
        "--out",
        str(out),
        "--confirm-seeds",
        "0",
    ]  # confirmation runs: tests/test_tune_confirm.py


def start(workload, storage, study, out):
    return subprocess.Popen(
        [sys.executable, "-m", "planner.cli.main", *argv(workload, storage, study, out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def trials(storage, study):
    try:
        return optuna.load_study(storage=open_storage(storage), study_name=study).trials
    except KeyError:  # not created yet
        return []


def wait_for_trial(proc, storage, study, number=0, timeout=180):
    """Block until trial ``number`` is training in ``proc`` (past the budget gate)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        ts = trials(storage, study)
        if len(ts) > number and ts[number].state == TrialState.RUNNING and "trainable_layers" in ts[number].user_attrs:
            return
        time.sleep(0.2)
    pytest.fail("the first trial never started")


def kill_then_resume(workload, tmp_path, kind, signum):
    storage, study = storage_url(kind, tmp_path), f"k-{uuid.uuid4().hex[:8]}"
    proc = start(workload, storage, study, tmp_path / "plan.yaml")
    try:
        wait_for_trial(proc, storage, study)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    first = trials(storage, study)[0]
    assert first.user_attrs["kind"] == "baseline:lisa"
    if signum == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL and first.state == TrialState.RUNNING  # what kill -9 leaves
    else:
        assert proc.returncode == 128 + signum, err[-2000:]
        assert "Traceback" not in err and "Exception ignored" not in err
        msg = [line for line in err.splitlines() if line.strip()]
        assert len(msg) == 1 and "0 finished trials" in msg[0] and f"--study {study}" in msg[0]
        assert first.state == TrialState.FAIL and first.user_attrs["reason"] == INTERRUPTED
        if signum == signal.SIGTERM:
            assert "interrupted by SIGTERM" in msg[0]
    assert main(argv(workload, storage, study, tmp_path / "plan.yaml")) == 0  # the resume
    after = trials(storage, study)
    try:
        assert [t.number for t in after if t.state == TrialState.RUNNING] == []
        assert not counted(after[0]) and after[0].state == TrialState.FAIL
        assert after[0].user_attrs["reason"].startswith(WORKER_DIED if signum == signal.SIGKILL else INTERRUPTED)
        assert sum(counted(t) for t in after) == N_TRIALS
        for k in KINDS:  # every baseline finished once, the killed one as a retry of trial 0
            assert len([t for t in after if t.user_attrs.get("kind") == k and counted(t)]) == 1, k
        retry = [t for t in after if t.user_attrs.get("retry_of") == 0]
        assert len(retry) == 1 and retry[0].user_attrs["kind"] == "baseline:lisa"
        assert after[0].params.items() <= retry[0].params.items()  # the same point
    finally:
        if kind == "postgres":
            optuna.delete_study(study_name=study, storage=open_storage(storage))


def test_sigkill_mid_baseline_on_a_journal(workload, tmp_path):
    kill_then_resume(workload, tmp_path, "journal", signal.SIGKILL)


def test_sigterm_mid_baseline_on_sqlite(workload, tmp_path):
    kill_then_resume(workload, tmp_path, "sqlite", signal.SIGTERM)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["int", "term", "kill"])
def test_every_signal_on_every_storage(workload, tmp_path, kind, signum):
    kill_then_resume(workload, tmp_path, kind, signum)


@pytest.mark.postgres
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill"])
def test_signals_on_postgres(workload, tmp_path, signum):
    kill_then_resume(workload, tmp_path, "postgres", signum)


@pytest.mark.slow
def test_ctrl_c_at_random_moments_is_never_swallowed(workload, tmp_path):
    """SIGINT or SIGTERM at random moments of start-up, gate, training and storage writes, five times."""
    storage, study = str(tmp_path / "s.log"), "r"
    rng = random.Random(0)
    for _ in range(5):
        proc = start(workload, storage, study, tmp_path / "plan.yaml")
        time.sleep(rng.uniform(2.0, 20.0))
        signum = rng.choice([signal.SIGINT, signal.SIGTERM])
        proc.send_signal(signum)
        try:
            _, err = proc.communicate(timeout=60)  # honoured: the process ends
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode in (0, 128 + signum, -signum), err[-2000:]
        assert "Exception ignored" not in err
        assert [t.number for t in trials(storage, study) if t.state == TrialState.RUNNING] == []
    assert main(argv(workload, storage, study, tmp_path / "plan.yaml")) == 0
    after = trials(storage, study)
    assert sum(counted(t) for t in after) == N_TRIALS
    assert {t.user_attrs.get("kind") for t in after if counted(t)} >= set(KINDS)
