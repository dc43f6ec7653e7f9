"""The journal lock names its holder: a writer killed while holding it does not stall the next one."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

from planner.tune.storage.journal_lock import OwnedSymlinkLock, dead_holder


def _acquire_in_thread(lock):
    done = threading.Event()
    thread = threading.Thread(target=lambda: lock.acquire() and done.set(), daemon=True)
    thread.start()
    return done


def test_a_lock_left_by_a_killed_writer_is_broken_at_once(tmp_path):
    journal = str(tmp_path / "study.log")
    # a writer that takes the lock and dies without releasing it (as kill -9 mid-append leaves it)
    code = (
        "import os, sys; from planner.tune.storage.journal_lock import OwnedSymlinkLock; "
        "OwnedSymlinkLock(sys.argv[1]).acquire(); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code, journal], check=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert os.path.islink(journal + ".lock") and dead_holder(journal + ".lock")
    done = _acquire_in_thread(OwnedSymlinkLock(journal, grace_period=None))  # no grace period to fall back on
    assert done.wait(10), "the dead writer's lock was not broken"
    assert os.readlink(journal + ".lock").split("#")[2] == str(os.getpid())


def test_a_live_holder_is_waited_for(tmp_path):
    journal = str(tmp_path / "study.log")
    holder = OwnedSymlinkLock(journal, grace_period=None)
    holder.acquire()
    assert dead_holder(journal + ".lock") is None
    done = _acquire_in_thread(OwnedSymlinkLock(journal, grace_period=None))
    assert not done.wait(1.0)  # still held
    holder.release()
    assert done.wait(10)


def test_a_lock_of_optuna_itself_is_left_to_its_grace_period(tmp_path):
    journal = str(tmp_path / "study.log")
    os.symlink(journal, journal + ".lock")  # what JournalFileSymlinkLock writes: no holder named
    assert dead_holder(journal + ".lock") is None
