"""A study being created by another worker is waited for, not set up twice (planner.tune.storage.creation)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import optuna

from planner.tune.storage.creation import CREATED_BY, READY, wait_for_creation
from planner.tune.storage.processes import _proc_stat, machine_key, process_identity


def _study():
    return optuna.create_study(storage=optuna.storages.InMemoryStorage(), study_name="t")


def _parent() -> dict:  # a live process of this machine other than this one
    stat = _proc_stat(os.getppid())
    return {"host": machine_key(), "pid": os.getppid(), "started": stat[1] if stat else None}


def test_a_ready_study_needs_no_repair():
    study = _study()
    study.set_user_attr(CREATED_BY, _parent())
    study.set_user_attr(READY, True)
    assert wait_for_creation(study, timeout=0.1) is True


def test_a_live_creator_is_waited_for_until_ready():
    study = _study()
    study.set_user_attr(CREATED_BY, _parent())
    timer = threading.Timer(0.5, lambda: study.set_user_attr(READY, True))
    timer.start()
    assert wait_for_creation(study, timeout=30) is True  # would be False (repair) without the wait
    timer.join()


def test_a_dead_creator_or_a_bare_study_is_repaired():
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json; from planner.tune.storage.processes import process_identity; print(json.dumps(process_identity()))",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    ).stdout
    import json

    dead = _study()
    dead.set_user_attr(CREATED_BY, json.loads(out))  # exited: gone
    assert wait_for_creation(dead, timeout=30) is False
    mine = _study()
    mine.set_user_attr(CREATED_BY, process_identity())  # this process, cut while it created the study
    assert wait_for_creation(mine, timeout=30) is False
    assert wait_for_creation(_study(), timeout=30, bare_grace=0.2) is False  # nothing stored at all
    old = _study()
    old.set_user_attr("steps", 150)  # an older planner's study: settings, no creator
    assert wait_for_creation(old, timeout=30, bare_grace=30) is False
