"""What this machine lends a run: the cores this process may use, the memory it can take, whether it forks.

A leaf module: the cost model's replays and the study's proxy workers size their worker processes with it."""

from __future__ import annotations

import multiprocessing
import os
import sys


def fork_available() -> bool:
    """Whether worker processes can be forked here (not on Windows; macOS forks, but its system libraries may not)."""
    return "fork" in multiprocessing.get_all_start_methods() and sys.platform.startswith("linux")


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity where the system says, else every core)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def available_bytes() -> int | None:
    """Memory the system can give without swapping (Linux ``MemAvailable``); None where it does not say."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
