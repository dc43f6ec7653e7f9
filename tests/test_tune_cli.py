"""`planner tune` flags, and several processes sharing one study (SQLite, PostgreSQL)."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest

from planner.cli.main import main
from planner.tune.study.baselines import KINDS
from planner.tune.study.record import is_confirm, is_sweep
from planner.tune.storage.backends import open_storage
from tune_helpers import write_user_workload

TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--vram", "24 bananas"], "--vram must be a number with a unit"),
        (["--vram", "0GB"], "--vram must be > 0"),
        (["--vram", "24GB", "--n-trials", "0"], "--n-trials must be > 0"),
        (["--vram", "24GB", "--scorers", "uniform,nope"], "--scorers must name registered scorers"),
        (["--vram", "24GB", "--storage", "mongodb://x/y"], "--storage URL scheme must be one of"),
        (["--vram", "24GB", "--storage", "studies/planner.db"], "--storage must be a URL"),
        (["--vram", "24GB", "--data", "/no/such/file.jsonl"], "--data file must exist"),
        (["--vram", "24GB", "--data", "builtin:nope"], "--data builtin:<task> must name one of"),
        (["--vram", "24GB", "--steps", "-1"], "--steps must be > 0"),
    ],
)
def test_bad_flags_are_one_line_exit_2(argv, needle, capsys):
    assert main(["tune", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_several_problems_in_one_line(capsys):
    assert main(["tune", "--vram", "lots", "--n-trials", "-3", "--scorers", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--vram" in err and "--n-trials" in err and "--scorers" in err


def test_vram_is_required(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["tune"])
    assert exc.value.code == 2 and "--vram" in capsys.readouterr().err


def run_two_workers(storage: str, study: str, tmp_path, n: int):
    """Two `planner tune` commands on one study at once, on a user's workload written to disk (one confirmation seed of
    the best searched plan and of each baseline: the shared confirmation queue, at a quarter of the default's runs)."""
    model_dir, data = write_user_workload(tmp_path, text=True)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "planner.cli.main",
                "tune",
                "--vram",
                "1GB",
                "--model",
                model_dir,
                "--data",
                data,
                "--proxy",
                "target",
                "--proxy-device",
                "cpu",
                "--n-trials",
                str(n),
                "--steps",
                "4",
                "--eval-every",
                "2",
                "--confirm-seeds",
                "1",
                "--confirm-top",
                "1",
                "--jobs",
                "1",  # one run at a time in each: the bound below; --jobs within one process: tests/test_tune_pool.py
                "--storage",
                storage,
                "--study",
                study,
                "--device",
                "cpu",
                "--quiet",
                "--out",
                str(tmp_path / f"plan{i}.yaml"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        for i in range(2)
    ]
    for p in procs:
        out, err = p.communicate(timeout=1200)  # a hang guard only: 300 s ran out on two loaded cores
        assert p.returncode == 0, err[-2000:]
    trials = optuna.load_study(study_name=study, storage=open_storage(storage)).trials
    numbers = [t.number for t in trials]
    assert len(set(numbers)) == len(numbers) == len({t._trial_id for t in trials})
    finished = [t for t in trials if t.state.is_finished() and not is_confirm(t) and not is_sweep(t)]
    # the study's total is shared: together the processes run n trials (each may overshoot by its running one)
    assert n <= len(finished) <= n + 1
    defaults = sorted(t.user_attrs["kind"] for t in trials if t.user_attrs["kind"] in KINDS and not is_sweep(t))
    assert defaults == sorted(KINDS)  # queued once
    assert all(t.state.is_finished() for t in trials if is_confirm(t) or is_sweep(t))
    assert (tmp_path / "plan0.yaml").is_file() and (tmp_path / "plan1.yaml").is_file()


def test_two_processes_share_one_sqlite_study(tmp_path):
    run_two_workers(f"sqlite:///{tmp_path}/shared.db", "shared", tmp_path, n=6)


@pytest.mark.postgres
def test_two_processes_share_one_postgres_study(tmp_path):
    url = os.environ.get("PLANNER_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("PLANNER_TEST_POSTGRES_URL is not set (.ci/run starts a server and sets it)")
    study = f"planner-test-{uuid.uuid4().hex[:8]}"
    try:
        run_two_workers(url, study, tmp_path, n=8)
    finally:
        optuna.delete_study(study_name=study, storage=open_storage(url))
