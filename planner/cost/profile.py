"""Device profiles: where they live, reading one, and which one an estimate uses.

A profile is measured by ``planner profile`` (:mod:`planner.cost.profiling`) and written to
``$PLANNER_PROFILE_DIR`` (default ``~/.cache/planner/profiles``) as a JSON file named after the device.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from pydantic import ValidationError

from planner.cost.device import DeviceProfile, default_profile
from planner.errors import PlannerError

PROFILE_DIR_ENV = "PLANNER_PROFILE_DIR"
DEFAULT_PROFILE_DIR = Path("~/.cache/planner/profiles")


def profile_dir() -> Path:
    """``$PLANNER_PROFILE_DIR``, else ``~/.cache/planner/profiles``."""
    return Path(os.environ.get(PROFILE_DIR_ENV) or DEFAULT_PROFILE_DIR).expanduser()


def profile_filename(device_name: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3.json``."""
    return (re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-") or "device") + ".json"


def local_device_name(device: str) -> str | None:
    """The local device's name (``torch.cuda.get_device_name()``, or ``cpu``); None when absent."""
    if device == "cpu":
        return "cpu"
    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def load_profile(path: str | Path) -> DeviceProfile:
    """Read a profile JSON, with a one-line error when it is missing or malformed."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise PlannerError(f"--profile must be an existing device profile JSON, but {str(path)!r} was not found")
    try:
        return DeviceProfile.load(path)
    except (ValidationError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()
        raise PlannerError(
            f"--profile must be a device profile JSON (see `planner profile`), but {str(path)!r} is not: "
            f"{' '.join(first[:3]) if first else type(exc).__name__}"
        ) from None


def find_profile(device_name: str, directory: str | Path | None = None) -> tuple[DeviceProfile, Path] | None:
    """The newest profile in ``directory`` measured on ``device_name`` (unreadable files are skipped)."""
    directory = Path(directory).expanduser() if directory is not None else profile_dir()
    if not directory.is_dir():
        return None
    found = []
    for path in directory.glob("*.json"):
        try:
            prof = DeviceProfile.load(path)
        except Exception:  # noqa: BLE001 - a foreign or broken file is not a profile of this device
            continue
        if prof.device_name == device_name:
            found.append((path.stat().st_mtime, path, prof))
    if not found:
        return None
    _, path, prof = max(found, key=lambda t: (t[0], str(t[1])))
    return prof, path


def resolve_profile(
    device: str, path: str | Path | None = None, directory: str | Path | None = None
) -> tuple[DeviceProfile, str]:
    """The profile an estimate on ``device`` uses, and a line saying which it is.

    ``path`` (``--profile``) wins; else, for ``cuda``, a profile in ``directory`` (default
    :func:`profile_dir`) whose ``device_name`` matches the local GPU; else the documented
    defaults of :func:`planner.cost.device.default_profile` (no overhead on ``cpu``).
    """
    if path is not None:
        prof = load_profile(path)
        if prof.device != device:
            raise PlannerError(
                f"--profile must be measured on --device {device}, but {str(path)!r} was measured on {prof.device!r}"
            )
        return prof, f"{path} ({prof.device_name})"
    if device == "cpu":
        return default_profile("cpu"), "cpu (no device overhead)"
    name = local_device_name(device)
    where = directory if directory is not None else profile_dir()
    if name is None:
        return default_profile(device), "documented defaults (no local GPU to match a profile against)"
    hit = find_profile(name, where)
    if hit is None:
        return default_profile(
            device
        ), f"documented defaults (no profile for {name!r} in {where}; run `planner profile`)"
    prof, found = hit
    return prof, f"{found} ({name})"
