"""The journal's lock file, naming its holder so that a holder killed mid-write does not stall the next writer.

Optuna's ``JournalFileSymlinkLock`` takes the lock by creating ``<journal>.lock`` as a symbolic link and
breaks a lock only after it has stood unchanged for its grace period (30 s): after a ``kill -9`` during an
append, every other process waits that long. Here the link's target names the holder (machine, pid and
the pid's start time, as :mod:`planner.tune.storage.lifecycle` identifies workers); a waiter on the same machine
that finds the holder gone breaks the lock at once. Holders on other machines, or still alive, are waited
for as Optuna does, grace period included.
"""

from __future__ import annotations

import os

from optuna.storages.journal import JournalFileSymlinkLock

from planner.tune.storage.processes import ended_here, process_identity

_SEP = "#"  # path#machine#pid#start: machine keys and pids never hold one


def holder_target(path: str) -> str:
    """The link target that names this process as the holder of ``path``'s lock."""
    me = process_identity()
    return _SEP.join((path, me["host"], str(me["pid"]), me["started"] or "-"))


def dead_holder(lock_file: str) -> str | None:
    """The lock's target when it names a process of this machine that no longer runs, else None."""
    try:
        target = os.readlink(lock_file)
    except OSError:
        return None
    parts = target.rsplit(_SEP, 3)
    if len(parts) != 4 or not parts[2].isdigit():
        return None  # Optuna's own lock: nothing known about its holder
    holder = {"host": parts[1], "pid": int(parts[2]), "started": None if parts[3] == "-" else parts[3]}
    return target if ended_here(holder) else None


class OwnedSymlinkLock(JournalFileSymlinkLock):
    """``JournalFileSymlinkLock`` whose link names its holder; a dead local holder's lock is broken at once."""

    def __init__(self, filepath: str, grace_period: int | None = 30):
        super().__init__(filepath, grace_period)
        self._lock_target_file = holder_target(filepath)

    def acquire(self) -> bool:
        while True:
            try:
                os.symlink(self._lock_target_file, self._lock_file)
                return True
            except FileExistsError:
                target = dead_holder(self._lock_file)
                if target is None:
                    return super().acquire()  # a live or unknown holder: Optuna's wait
                try:
                    if os.readlink(self._lock_file) == target:  # still the dead one's link
                        self.release()
                except (OSError, RuntimeError):
                    pass  # another waiter broke it first
