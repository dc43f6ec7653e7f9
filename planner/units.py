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
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": KiB, "mib": MiB, "gib": GiB, "tib": 1024**4,
    "k": KiB, "m": MiB, "g": GiB, "t": 1024**4,
}
_PATTERN = re.compile(r"^\s*([+-]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text: str | int | float, *, name: str = "--vram") -> int:
    """Parse ``24GB``/``24GiB``/``24000MiB``/``24G`` into bytes; the value must be > 0."""
    if isinstance(text, bool):
        raise PlannerError(f"{name} must be a size such as 24GB or 24GiB, but got {text!r}")
    if isinstance(text, (int, float)):
        value, unit = float(text), "b"
    else:
        m = _PATTERN.match(str(text))
        if not m or (m.group(2) and m.group(2).lower() not in _UNITS):
            raise PlannerError(
                f"{name} must be a number with a unit in {{B, KB, MB, GB, TB, KiB, MiB, GiB, TiB, K, M, G, T}}"
                f" (e.g. 24GB or 24GiB), but got {text!r}"
            )
        value, unit = float(m.group(1)), m.group(2).lower() or "b"
    nbytes = int(round(value * _UNITS[unit]))
    if nbytes <= 0:
        raise PlannerError(f"{name} must be > 0 bytes, but got {text!r}")
    return nbytes


def format_bytes(n: int | float, unit: str = "GiB", digits: int = 2) -> str:
    """Format bytes in a binary unit (``GiB`` by default)."""
    scale = _UNITS[unit.lower()]
    return f"{n / scale:,.{digits}f} {unit}"
