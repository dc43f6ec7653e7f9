"""The cost model's disk cache: traces and allocator replays, one JSON file per entry.

Where: ``$PLANNER_COST_CACHE`` (``0`` disables it), else ``~/.cache/planner/cost``. An entry is
``{"schema", "kind", "key", "sha256", "data"}``: the schema version of this code, what it holds,
the key it was stored under and the SHA-256 of its data. An entry whose schema, kind, key or
checksum does not match, or whose data the reader cannot parse, is reported in one warning,
ignored and overwritten by a fresh computation: a truncated, foreign or edited file never
reaches an estimate.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

# bump when an entry's layout or meaning changes (2: in-place gradient accumulation, reduction scratch, tied-head build; 3: models built in the dtype asked for, not their config's)
CACHE_SCHEMA = 3


class CacheWarning(UserWarning):
    """An unreadable or altered cache entry was ignored."""


def cache_dir() -> Path | None:
    env = os.environ.get("PLANNER_COST_CACHE")
    if env == "0":
        return None
    return Path(env).expanduser() if env else Path.home() / ".cache" / "planner" / "cost"


def _digest(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _path(kind: str, key: str) -> Path | None:
    root = cache_dir()
    # the schema is in the name: entries of an older planner are left unread, not reported as damaged
    return None if root is None else root / f"{kind}-v{CACHE_SCHEMA}-{key}.json"


def load(kind: str, key: str, parse):
    """``parse(data)`` of a valid entry, else None (with one warning when a file was there but invalid)."""
    path = _path(kind, key)
    if path is None or not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text())
        problem = None
        if not isinstance(entry, dict):
            problem = "not a JSON object"
        elif entry.get("schema") != CACHE_SCHEMA:
            problem = f"schema {entry.get('schema')!r}, expected {CACHE_SCHEMA}"
        elif entry.get("kind") != kind or entry.get("key") != key:
            problem = "stored under another key"
        elif entry.get("sha256") != _digest(entry.get("data")):
            problem = "its checksum does not match its data"
        if problem is None:
            return parse(entry["data"])
    except Exception as exc:  # noqa: BLE001 - anything unreadable is a stale entry, never a failed estimate
        problem = f"{type(exc).__name__}: {str(exc).strip()[:80]}"
    warnings.warn(f"cost cache entry {path} is invalid ({problem}); computing it again", CacheWarning, stacklevel=3)
    return None


def store(kind: str, key: str, data) -> None:
    """Write an entry atomically; a cache that cannot be written is skipped (it is an optimization)."""
    path = _path(kind, key)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(
            json.dumps({"schema": CACHE_SCHEMA, "kind": kind, "key": key, "sha256": _digest(data), "data": data})
        )
        tmp.replace(path)
    except OSError:
        pass
