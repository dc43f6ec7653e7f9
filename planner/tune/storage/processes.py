"""Which process is which: a machine key, a process's identity (pid and its start time) and whether it still
runs. A leaf module: the journal's lock and the trials' lifecycle both ask it."""

from __future__ import annotations

import os
import socket


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def machine_key() -> str:
    """Host name, boot and pid namespace: two processes with one key see each other's pids."""
    try:
        pidns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        pidns = "-"
    return f"{socket.gethostname()}|{(_read('/proc/sys/kernel/random/boot_id') or '-')[:8]}|{pidns}"


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of ``pid`` from /proc, or None where unknown."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
    return fields[0], fields[19]


def process_alive(pid: int, started: str | None) -> bool:
    """Whether ``pid`` is the same live process that recorded ``started`` (zombies and reused pids are dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    stat = _proc_stat(pid)
    if stat is None:
        return True  # no /proc (macOS): existence is all we know
    state, start = stat
    return state not in ("Z", "X") and (started is None or start == started)


def process_identity() -> dict:
    """This process: machine (:func:`machine_key`), pid and the pid's start time (a reused pid has another)."""
    stat = _proc_stat(os.getpid())
    return {"host": machine_key(), "pid": os.getpid(), "started": stat[1] if stat else None}


def ended_here(who: dict) -> bool:
    """Whether the process ``who`` (a :func:`process_identity`) ran on this machine and runs no more."""
    return who.get("host") == machine_key() and not process_alive(int(who["pid"]), who.get("started"))
