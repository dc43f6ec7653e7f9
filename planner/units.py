"""Byte sizes: parsing user input and formatting output.

Units: ``B``; decimal ``KB MB GB TB`` (powers of 1000, as GPU vendors print them);
binary ``KiB MiB GiB TiB`` (powers of 1024); bare ``K M G T`` are binary, as in Slurm's
``--mem=24G`` and ``nvidia-smi``'s MiB-based totals. Case-insensitive.
"""

from __future__ import annotations

import re

from planner.errors import PlannerError

KiB = 1024
MiB = 1024**2
GiB = 1024**3

_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": KiB,
    "mib": MiB,
    "gib": GiB,
    "tib": 1024**4,
    "k": KiB,
    "m": MiB,
    "g": GiB,
    "t": 1024**4,
}
_UNIT_LIST = "{B, KB, MB, GB, TB, KiB, MiB, GiB, TiB, K, M, G, T}"
MAX_BYTES = 1024**6  # 1 EiB: far above any device, far below float overflow
_PATTERN = re.compile(r"^\s*([+-]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text: str | int | float, *, name: str = "--vram") -> int:
    """Parse ``24GB``/``24GiB``/``24000MiB``/``24G``/``512B`` into bytes; the value must be > 0.

    Text needs a unit (a bare ``24`` would be 24 bytes, never what is meant); a Python int or
    float is a number of bytes.
    """
    if isinstance(text, bool):
        raise PlannerError(f"{name} must be a size such as 24GB or 24GiB, but got {text!r}")
    if isinstance(text, (int, float)):
        value, unit = float(text), "b"
    else:
        m = _PATTERN.match(str(text))
        if not m or (m.group(2) and m.group(2).lower() not in _UNITS):
            raise PlannerError(
                f"{name} must be a number with a unit in {_UNIT_LIST} (e.g. 24GB or 24GiB), but got {text!r}"
            )
        value, unit = float(m.group(1)), m.group(2).lower()
        if value > 0 and not unit:
            raise PlannerError(
                f"{name} must be a number with a unit in {_UNIT_LIST} (e.g. 24GB or 24GiB; bytes are "
                f"{m.group(1)}B), but got the bare number {text!r}"
            )
    nbytes = value * _UNITS[unit or "b"]
    if nbytes > MAX_BYTES:  # 1e400GB is infinity
        raise PlannerError(f"{name} must be at most {MAX_BYTES:,} bytes (1 EiB), but got {text!r}")
    if not nbytes > 0 or round(nbytes) <= 0:  # NaN fails too
        raise PlannerError(f"{name} must be > 0 bytes, but got {text!r}")
    return int(round(nbytes))


def format_bytes(n: int | float, unit: str = "GiB", digits: int = 2) -> str:
    """Format bytes in a binary unit (``GiB`` by default)."""
    scale = _UNITS[unit.lower()]
    return f"{n / scale:,.{digits}f} {unit}"


def human_bytes(n: int | float) -> str:
    """Bytes in the largest binary unit that keeps the number >= 1 (tiny test budgets stay readable)."""
    for unit in ("GiB", "MiB", "KiB"):
        if abs(n) >= _UNITS[unit.lower()]:
            return format_bytes(n, unit)
    return f"{int(n)} B"
