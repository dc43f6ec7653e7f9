"""Faults from outside the input: output paths that only permission bits allow, a full disk under each thing a
command writes, a read-only study file, Ctrl-C while the study is created.

Each ends in one line naming the flag and the path, exit 2 (130 for Ctrl-C), and loses nothing: finished trials
stay stored, no trial stays RUNNING after the resume, no cut file is left, and the resumed counts are right.
A full disk is simulated (the write raises ENOSPC) and, where mount is permitted (root), made real on a tiny tmpfs.
"""

import errno
import io
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys

import optuna
import pytest
import sqlalchemy.exc
from optuna.storages import RDBStorage
from optuna.trial import TrialState

import planner.tune
from planner.cli.main import main
from planner.errors import PlannerError
from planner.tune import TuneOptions, run_tune
from planner.tune.study.record import WORKER_DIED, counted
from planner.tune.proxy.train import run_proxy
from planner.tune.storage.backends import open_storage
from planner.tune.run import Interrupted
from planner.writable import unwritable_reason

# the fastest flags of the tune tests (tests/test_tune_robust.py)
FLAGS = [
    "--device",
    "cpu",
    "--proxy-device",
    "cpu",
    "--steps",
    "4",
    "--eval-every",
    "2",
    "--confirm-seeds",
    "0",
    "--study",
    "t",
    "--quiet",
]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default outputs (studies/, reports/, export/) land here


@pytest.fixture
def tune(monkeypatch, wl, capsys):
    """``planner tune`` in-process with the tiny workload as the proxy: (exit code, stdout, stderr)."""
    real = planner.tune.run_tune

    def run(*argv, n=4, proxy=None):
        extra = {"proxy": proxy} if proxy else {}
        monkeypatch.setattr(planner.tune, "run_tune", lambda options, **kw: real(options, workload=wl, **extra, **kw))
        code = main(["tune", *FLAGS, "--n-trials", str(n), *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err and "Should not reach" not in err, err
    return err


def trials(storage: str, study: str = "t"):
    return optuna.load_study(storage=open_storage(storage), study_name=study).trials


def summary_counts(out: str) -> dict:
    """The numbers of the summary's ``trials:`` line."""
    line = next(line for line in out.splitlines() if line.startswith("trials: "))
    return {name: int(n) for n, name in re.findall(r"(-?\d+) (trained|gated|pruned early|failed|interrupted)", line)}


def toward_n(ts) -> int:
    """Trials that count toward --n-trials (learning-rate sweeps and confirmation runs come on top)."""
    from planner.tune.study.record import is_sweep
    from planner.tune.study.record import is_confirm

    return sum(counted(t) and not is_sweep(t) and not is_confirm(t) for t in ts)


def assert_resumed(storage: str, n: int, out: str) -> list:
    """Nothing RUNNING, ``n`` counted trials, a summary whose counts match the storage (none negative)."""
    ts = trials(storage)
    assert [t.number for t in ts if t.state == TrialState.RUNNING] == []
    assert toward_n(ts) == n
    counts = summary_counts(out)
    assert min(counts.values()) >= 0, out
    pruned = [t for t in ts if t.state == TrialState.PRUNED and counted(t)]
    assert counts["gated"] == sum(bool(t.user_attrs.get("gated")) for t in pruned)
    assert counts["gated"] + counts["pruned early"] == len(pruned)
    return ts


# ---------------------------------------------------------------- output paths, tried before any work


def test_the_probe_does_not_trust_permission_bits(monkeypatch, tmp_path):
    """``os.access`` says yes to root for everything: the check must try, and leave nothing behind."""
    monkeypatch.setattr(os, "access", lambda *a, **k: True)
    assert "'/proc' refuses new files" in unwritable_reason("/proc/forbidden/x.json")
    assert "'/proc' refuses new files" in unwritable_reason("/proc/forbidden", directory=True)
    (tmp_path / "f").write_text("x")
    assert unwritable_reason(tmp_path / "f" / "plan.yaml") == f"cannot be created: {str(tmp_path / 'f')!r} is a file"
    assert unwritable_reason(tmp_path / "a" / "b" / "plan.yaml") is None
    assert unwritable_reason(tmp_path / "r", directory=True) is None
    assert "over the file system's limit" in unwritable_reason(tmp_path / ("x" * 600) / "plan.yaml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # no probe file or folder stays


def test_profile_out_is_refused_before_measuring(monkeypatch, capsys):
    import planner.cost.profiling as profiling

    def measure(*a, **k):
        raise AssertionError("measured before the output was checked")

    monkeypatch.setattr(profiling, "measure_profile", measure)
    assert main(["profile", "--model", "gpt2", "--device", "cpu", "--out", "/proc/forbidden/x.json"]) == 2
    err = one_line(capsys.readouterr().err)
    assert "--out must be a file path this user can write, but '/proc/forbidden/x.json' cannot be created" in err


def test_tune_out_is_refused_before_the_study(tune, tmp_path):
    code, out, err = tune(
        "--vram", "1GB", "--storage", f"sqlite:///{tmp_path}/s.db", "--out", "/proc/forbidden/plan.yaml"
    )
    assert code == 2 and out == ""
    assert "--out must be a writable file path, but '/proc/forbidden/plan.yaml' cannot be created" in one_line(err)
    assert not (tmp_path / "s.db").exists()  # no study: nothing ran


# ---------------------------------------------------------------- a full disk, simulated


class FullDisk:
    """Every file opened for writing under one of ``roots`` takes half of a write, then fails with ENOSPC (a disk
    that fills mid-write); Python's ``open`` is patched (``io.open``, ``builtins.open``, hence ``os.fdopen``)."""

    def __init__(self, monkeypatch):
        self.roots: list[str] = []
        self.hits = 0
        real = io.open

        def fake_open(file, mode="r", *args, **kwargs):
            f = real(file, mode, *args, **kwargs)
            if not any(c in mode for c in "wax+"):
                return f
            name = os.readlink(f"/proc/self/fd/{file}") if isinstance(file, int) else os.path.abspath(os.fspath(file))
            return _Filling(f, name, self) if any(name.startswith(r) for r in self.roots) else f

        monkeypatch.setattr(io, "open", fake_open)
        monkeypatch.setattr("builtins.open", fake_open)


class _Filling:
    def __init__(self, f, name, disk):
        self._f, self._name, self._disk = f, name, disk

    def write(self, data):
        self._disk.hits += 1
        half = len(data) // 2
        if half:
            self._f.write(data[:half])
            self._f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._name)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __iter__(self):
        return iter(self._f)


@pytest.fixture
def full_disk(monkeypatch):
    return FullDisk(monkeypatch)


def _sqlite_full() -> Exception:
    """What Optuna's RDB storage raises when SQLite answers "database or disk is full"."""
    cause = sqlalchemy.exc.OperationalError("COMMIT", {}, sqlite3.OperationalError("database or disk is full"))
    error = optuna.exceptions.StorageInternalError("An exception is raised during the commit.")
    error.__cause__ = cause
    return error


@pytest.fixture
def sqlite_full(monkeypatch):
    """Every write of Optuna's RDB storage fails as on a full disk once ``on``; the disk fills (``on``) as the first
    gated trial is stored as pruned (what left a gated trial RUNNING, later counted as "-1 pruned early")."""

    class State:
        on = False
        armed = True
        hits = 0

    state = State()
    writes = (
        "create_new_trial",
        "set_trial_param",
        "set_trial_intermediate_value",
        "set_trial_user_attr",
        "set_trial_system_attr",
        "set_study_user_attr",
        "set_study_system_attr",
        "set_trial_state_values",
    )

    def failing(name, method):
        def write(self, *args, **kwargs):
            if (
                state.armed
                and name == "set_trial_state_values"
                and kwargs.get("state", args[1:2] or None) in (TrialState.PRUNED, (TrialState.PRUNED,))
                and self.get_trial(args[0]).user_attrs.get("gated")
            ):
                state.on, state.armed = True, False
            if state.on:
                state.hits += 1
                raise _sqlite_full()
            return method(self, *args, **kwargs)

        return write

    for name in writes:
        monkeypatch.setattr(RDBStorage, name, failing(name, getattr(RDBStorage, name)))
    return state


def _gating_budget(wl, target) -> int:
    """A budget between the tiny target's cheapest plan and its full fine-tuning: some trials are gated."""
    from planner.config import TrainConfig
    from planner.tune.search.gate import BudgetGate
    from planner.tune.target_space import build_space

    opts = TuneOptions(vram=1, model=target, seq_len=wl.seq_len, batch_size=8, dtype="float32", device="cpu")
    t, _ = opts.validate_all()
    gate = BudgetGate(t.spec, 1, device="cpu")
    walk = ({}, {"optimizer_in_backward": True}, {"optimizer_in_backward": True, "loss_chunks": 8})
    from dataclasses import replace

    space = build_space(t, opts)
    low = min(
        gate.predict(space.train_config(replace(p, levers=tuple(sorted(w.items()))))).peak_bytes
        for p in space.cheapest_points()
        for w in walk
    )
    high = max(
        gate.predict(
            TrainConfig(batch_size=8, seq_len=wl.seq_len, active_layers=wl.spec.num_layers, gradient_checkpointing=c)
        ).peak_bytes
        for c in (False, True)
    )
    return (low + high) // 2


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_full_disk_under_sqlite_storage_is_one_line_and_the_resume_counts_right(
    tune, sqlite_full, wl, target, tmp_path, jobs
):
    storage = f"sqlite:///{tmp_path}/s.db"
    flags = [
        "--jobs",
        jobs,
        "--vram",
        f"{_gating_budget(wl, target)}B",
        "--model",
        target,
        "--seq-len",
        str(wl.seq_len),
        "--batch-size",
        "8",
        "--dtype",
        "float32",
        "--storage",
        storage,
        "--out",
        str(tmp_path / "plan.yaml"),
    ]
    code, _, err = tune(*flags, n=8)
    assert sqlite_full.on, "a gated trial must have been stored as pruned"
    assert code == 2, err
    one_line(err)
    assert f"--storage must have room to write, but writing '{tmp_path}/s.db' failed: the disk is full" in err
    assert "finished trials of study 't' are stored in" in err and "free space and resume with: planner tune" in err
    # the disk took no more writes: the trial it filled on (a gated one) and, with two jobs, the other slot's
    # trial are left running; the resume settles them
    cut = [t for t in trials(storage) if t.state == TrialState.RUNNING]
    assert 1 <= len(cut) <= int(jobs) and any(t.user_attrs.get("gated") for t in cut)
    kept = [t.number for t in trials(storage) if counted(t)]
    assert not (tmp_path / "plan.yaml").exists()

    sqlite_full.on = False  # space again (the disk fills once: the trigger is spent)
    code, out, err = tune(*flags, n=8)
    assert code == 0, err
    ts = assert_resumed(storage, 8, out)
    assert set(kept) <= {t.number for t in ts if counted(t)}  # every finished trial stayed
    for c in cut:
        again = ts[c.number]
        assert again.state == TrialState.FAIL and again.user_attrs["reason"].startswith(WORKER_DIED)
        assert not counted(again)
        assert [t.user_attrs["kind"] for t in ts if t.user_attrs.get("retry_of") == c.number] == [c.user_attrs["kind"]]


class FillingProxy:
    """The real proxy trainer; on its ``n``-th run the disk under ``root`` fills once the run is trained."""

    def __init__(self, n, disk, root):
        self.n, self.calls, self.disk, self.root = n, 0, disk, str(root)

    def __call__(self, *args, **kw):
        self.calls += 1
        result = run_proxy(*args, **kw)
        if self.calls == self.n:
            self.disk.roots.append(self.root)
        return result


def test_a_full_disk_under_a_journal_leaves_no_cut_record(tune, full_disk, tmp_path, capsys):
    folder = tmp_path / "j"
    storage = str(folder / "s.log")
    flags = ["--vram", "1GB", "--storage", storage, "--out", str(tmp_path / "plan.yaml")]
    code, _, err = tune(*flags, n=5, proxy=FillingProxy(2, full_disk, folder))
    assert full_disk.hits and code == 2, err
    assert (
        f"--storage must have room to write, but writing '{storage}' failed: the disk is full (No space left on device)"
        in one_line(err)
    )
    assert (folder / "s.log").read_bytes().endswith(b"\n")  # the half record written was cut off again
    kept = [t.number for t in trials(storage) if counted(t)]
    assert kept  # the first run's trial stayed

    full_disk.roots.clear()
    code, out, err = tune(*flags, n=5)
    assert code == 0 and "incomplete record" not in err, err
    assert not (folder / "s.log.torn").exists()
    ts = assert_resumed(storage, 5, out)
    assert set(kept) <= {t.number for t in ts if counted(t)}


def test_a_full_disk_at_out_leaves_no_plan_file_and_a_rerun_writes_it(tune, full_disk, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    full_disk.roots.append(str(out_dir))
    storage = f"sqlite:///{tmp_path}/s.db"
    flags = ["--vram", "1GB", "--storage", storage, "--out", str(out_dir / "plan.yaml")]
    code, _, err = tune(*flags, n=4)
    assert code == 2, err
    assert (
        f"--out must be writable, but writing '{out_dir}/plan.yaml' failed (No space left on device): no plan file "
        f"was written; the study 't' is stored in {storage}" in one_line(err)
    )
    assert list(out_dir.iterdir()) == []  # neither a cut plan.yaml nor a temporary file
    done = len(trials(storage))
    assert toward_n(trials(storage)) == 4

    full_disk.roots.clear()
    code, out, err = tune(*flags, n=4)
    assert code == 0 and (out_dir / "plan.yaml").read_text().startswith("version: 1"), err
    assert len(trials(storage)) == done  # nothing trained again


def test_a_full_disk_at_the_report_folder_leaves_no_cut_file(full_disk, tmp_path, capsys):
    from plan_factory import make_plan

    plan = make_plan().save(tmp_path / "plan.yaml")
    out = tmp_path / "r"
    out.mkdir()
    (out / "report.md").write_text("the previous report\n")
    full_disk.roots.append(str(out))
    assert main(["report", str(plan), "--out", str(out), "--dpi", "30"]) == 2
    err = one_line(capsys.readouterr().err)
    assert (
        f"--out must be a directory with room for the report, but writing into '{out}' failed (No space left on device)"
        in err
    )
    assert [p.name for p in out.iterdir()] == ["report.md"] and (
        out / "report.md"
    ).read_text() == "the previous report\n"


def test_a_full_disk_at_the_plan_file_keeps_the_old_plan(full_disk, tmp_path):
    from plan_factory import make_plan

    path = make_plan().save(tmp_path / "plan.yaml")
    before = path.read_text()
    full_disk.roots.append(str(tmp_path))
    with pytest.raises(OSError) as err:
        make_plan(active_layers=1).save(path)
    assert err.value.errno == errno.ENOSPC
    assert path.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["plan.yaml"]


# ---------------------------------------------------------------- a full disk and a read-only file, for real


@pytest.fixture
def mounts(tmp_path):
    """``mount(name, *options)``: a fresh tmpfs (or ``bind=SRC``: a bind mount) under ``tmp_path``, unmounted after the
    test; skipped where mount is not permitted (it needs root)."""
    made = []

    def mount(name, options, bind=None):
        where = tmp_path / name
        where.mkdir()
        cmd = (
            ["mount", "--bind", str(bind), str(where)]
            if bind
            else ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)]
        )
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            pytest.skip(f"mount is not permitted here ({proc.stderr.strip() or proc.returncode}): it needs root")
        made.append(where)
        if bind:
            remount(where, "remount,bind," + options)
        return where

    def remount(where, options):
        subprocess.run(["mount", "-o", options, str(where)], check=True, capture_output=True)

    mount.remount = remount
    yield mount
    for where in reversed(made):
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(folder, leave: int) -> None:
    """Fill ``folder``'s file system up to ``leave`` free bytes."""
    free = shutil.disk_usage(folder).free
    with open(folder / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_real_full_disk_under_sqlite_storage(tune, mounts, tmp_path, jobs):
    fs = mounts("fs", "size=2m")
    storage = f"sqlite:///{fs}/s.db"
    # with two jobs the second slot's trial may be created just before the disk fills, with no worker recorded: the
    # resume reaps it as its run has ended (lifecycle.Worker.announce)
    flags = ["--jobs", jobs, "--vram", "1GB", "--storage", storage, "--out", str(tmp_path / "plan.yaml")]
    assert tune(*flags, n=4)[0] == 0
    fill(fs, 100 * 1024)  # less than the next trials' records need
    code, _, err = tune(*flags, n=12)
    assert code == 2, err
    assert "--storage must have room to write" in one_line(err) and f"'{fs}/s.db'" in err and "the disk is full" in err

    (fs / "filler").unlink()
    mounts.remount(fs, "remount,size=16m")  # the study's write-ahead log grows past 2 MB by itself
    code, out, err = tune(*flags, n=12)
    assert code == 0, err
    assert_resumed(storage, 12, out)


def test_a_real_full_disk_at_out(tune, mounts, tmp_path):
    fs = mounts("fs", "size=64k")
    fill(fs, 0)
    flags = ["--vram", "1GB", "--storage", f"sqlite:///{tmp_path}/s.db", "--out", str(fs / "plan.yaml")]
    code, _, err = tune(*flags, n=4)
    assert code == 2 and "(No space left on device): no plan file was written" in one_line(err), err
    assert [p.name for p in fs.iterdir()] == ["filler"]
    (fs / "filler").unlink()
    assert tune(*flags, n=4)[0] == 0 and (fs / "plan.yaml").stat().st_size > 0


def _make_study(url: str) -> None:
    """A study with one finished trial, written by another process (so that no connection of this one stays open)."""
    code = (
        "import optuna; from planner.tune.storage.backends import open_storage; "
        f"optuna.create_study(storage=open_storage({url!r}), study_name='t').optimize(lambda t: 1.0, n_trials=1)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_a_read_only_study_file_is_named_read_only(tune, mounts, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    _make_study(f"sqlite:///{src}/s.db")
    assert sorted(p.name for p in src.iterdir()) == ["s.db"]
    ro = mounts("ro", "ro", bind=src)
    storage = f"sqlite:///{ro}/s.db"
    code, _, err = tune("--vram", "1GB", "--storage", storage, "--out", str(tmp_path / "plan.yaml"))
    assert code == 2
    assert f"--storage must be a writable file path, but '{ro}/s.db' is read-only (Read-only file system)" in one_line(
        err
    )
    assert main(["report", "--study", "t", "--storage", storage, "--out", str(tmp_path / "r")]) == 2
    err = one_line(capsys.readouterr().err)
    assert f"--storage must be a SQLite file that can be written (with its folder), but '{ro}/s.db' is read-only" in err


# ---------------------------------------------------------------- Ctrl-C while the study is created


def test_ctrl_c_while_the_sampler_bounds_active_layers_ends_like_any_interrupt(tune, monkeypatch, tmp_path):
    """A real SIGINT while the gate-bounded sampler computes its γ bound (study creation, before any trial)."""
    import planner.tune.search.samplers as bounded  # where the study's sampler looks the bound up

    real = bounded.largest_fitting_active_layers

    def interrupted(space, gate):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: delivered while the bound is computed
        return real(space, gate)

    monkeypatch.setattr(bounded, "largest_fitting_active_layers", interrupted)
    storage = f"sqlite:///{tmp_path}/s.db"
    flags = ["--vram", "1GB", "--storage", storage, "--out", str(tmp_path / "plan.yaml")]
    code, out, err = tune(*flags, n=4)
    assert code == 130, err
    assert one_line(err).startswith(
        "planner tune: error: interrupted: 0 finished trials of study 't' are stored in "
        f"{storage}; resume with: planner tune --vram 1GB --study t --storage {storage}"
    )
    assert [t for t in trials(storage) if t.state == TrialState.RUNNING] == []

    monkeypatch.setattr(bounded, "largest_fitting_active_layers", real)
    code, out, err = tune(*flags, n=4)
    assert code == 0, err
    assert_resumed(storage, 4, out)


def test_ctrl_c_during_study_creation_through_the_python_api(monkeypatch, tmp_path, wl):
    """No signal handler installed (a script calling run_tune): the KeyboardInterrupt ends as Interrupted too."""
    import planner.tune.search.samplers as bounded  # where the study's sampler looks the bound up

    def interrupted(space, gate):
        raise KeyboardInterrupt

    monkeypatch.setattr(bounded, "largest_fitting_active_layers", interrupted)
    options = TuneOptions(
        vram="1GB",
        n_trials=3,
        steps=4,
        eval_every=2,
        storage=f"sqlite:///{tmp_path}/s.db",
        study="t",
        device="cpu",
        out=str(tmp_path / "plan.yaml"),
        confirm_seeds=0,
    )
    with pytest.raises(BaseException) as err:  # a bare KeyboardInterrupt would stop the test run
        run_tune(options, workload=wl, progress=False)
    assert isinstance(err.value, Interrupted) and isinstance(err.value, PlannerError), repr(err.value)
    assert err.value.exit_code == 130 and "resume with: planner tune --vram 1GB --study t" in str(err.value)


def test_ctrl_c_on_a_full_disk_is_still_one_line_and_resumes(tune, sqlite_full, tmp_path):
    """Ctrl-C in a trial while the storage takes no writes: marking the trial interrupted fails too; one line all the same."""
    sqlite_full.armed = False

    def proxy(*args, **kw):
        sqlite_full.on = True
        raise KeyboardInterrupt

    storage = f"sqlite:///{tmp_path}/s.db"
    flags = ["--vram", "1GB", "--storage", storage, "--out", str(tmp_path / "plan.yaml")]
    code, _, err = tune(*flags, n=4, proxy=proxy)
    assert code == 2 and "--storage must have room to write" in one_line(err), err
    sqlite_full.on = False
    code, out, err = tune(*flags, n=4)
    assert code == 0, err
    assert_resumed(storage, 4, out)
