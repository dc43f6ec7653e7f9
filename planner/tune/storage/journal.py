"""A journal file storage that survives a crash in the middle of a write.

Optuna's journal is one JSON record per line, appended under a lock file. A process killed
mid-append leaves an incomplete last line; Optuna reads past it, but the next append lands on
the same line and from then on every read fails with a JSONDecodeError. Here, before the
storage is used:

- an incomplete last record is cut off (under the journal's lock, so no live write is cut),
  kept in ``<journal>.torn`` and named in one warning;
- a line made of a cut record followed by a whole one (what the old behaviour wrote) is split
  the same way;
- any other unreadable line is one error naming the file and the line number.

Appends defer Ctrl-C until the record is written and the lock released
(:func:`planner.tune.storage.signals.deferred`), so an interrupt no longer cuts a record; a writer killed
while it held the lock does not stall the others (:mod:`planner.tune.storage.journal_lock`).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from planner.errors import PlannerError
from planner.tune.storage.journal_lock import OwnedSymlinkLock
from planner.tune.storage.signals import deferred

RECORD_START = b'{"op_code":'  # every Optuna journal record begins so
TORN_SUFFIX = ".torn"
_TAIL_CHUNK = 1 << 16


class SafeJournalBackend(JournalFileBackend):
    """Optuna's file backend, with the write and the unlock done as one step Ctrl-C cannot split; a write that
    fails (a full disk) is cut off again, so that no incomplete record stays behind."""

    def append_logs(self, logs: list[dict]) -> None:
        data = ("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n").encode("utf-8")
        self._lock.acquire()
        with deferred():
            try:
                _append(self._file_path, data)
            finally:
                self._lock.release()


def _append(path: str, data: bytes) -> None:
    """Append ``data`` whole, or leave the file as it was (the caller holds the journal's lock)."""
    with open(path, "ab", buffering=0) as f:
        end = f.seek(0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[f.write(view) :]
            os.fsync(f.fileno())
        except OSError:
            f.truncate(end)
            raise


def _complete_end(path: Path) -> int | None:
    """Offset just after the last newline when the file ends inside a record; None when it ends cleanly."""
    size = path.stat().st_size
    if size == 0:
        return None
    with open(path, "rb") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return None
        pos = size
        while pos > 0:
            start = max(0, pos - _TAIL_CHUNK)
            f.seek(start)
            i = f.read(pos - start).rfind(b"\n")
            if i >= 0:
                return start + i + 1
            pos = start
    return 0


def _last_line(path: Path) -> bytes:
    """The last complete line (b"" for an empty file); Optuna's reader skips a bad one silently."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        pos = size - 1
        while pos > 0:
            start = max(0, pos - _TAIL_CHUNK)
            f.seek(start)
            i = f.read(pos - start).rfind(b"\n")
            if i >= 0:
                start += i + 1
                break
            pos = start
        else:
            start = 0
        f.seek(start)
        return f.read(size - start)


def _set_aside(path: Path, data: bytes) -> Path:
    side = path.with_name(path.name + TORN_SUFFIX)
    with open(side, "ab") as f:
        f.write(data + b"\n")
        f.flush()
        os.fsync(f.fileno())
    return side


def _warn(message: str) -> None:
    print(f"planner: warning: {message}", file=sys.stderr)


class _Locked:
    """The journal's own lock file (the one Optuna's appends take)."""

    def __init__(self, path: Path):
        self.lock = OwnedSymlinkLock(str(path))

    def __enter__(self):
        self.lock.acquire()
        return self

    def __exit__(self, *exc):
        self.lock.release()


def repair_tail(path: Path) -> int:
    """Cut an incomplete last record off ``path`` (kept aside, one warning); returns the bytes removed."""
    if not path.is_file() or _complete_end(path) is None:
        return 0
    with _Locked(path), deferred():
        cut = _complete_end(path)  # again under the lock: a live writer may just have finished
        if cut is None:
            return 0
        with open(path, "rb") as f:
            f.seek(cut)
            torn = f.read()
        side = _set_aside(path, torn)
        os.truncate(path, cut)
    _warn(
        f"journal {str(path)!r} ended in an incomplete record ({len(torn)} bytes from a write cut short); "
        f"removed before appending and kept in {str(side)!r}"
    )
    return len(torn)


def _is_record(line: bytes) -> bool:
    try:
        obj = json.loads(line)
    except ValueError:
        return False
    return isinstance(obj, dict) and "op_code" in obj


def first_bad_line(path: Path) -> tuple[int, int, bytes] | None:
    """(line number from 1, byte offset, the line) of the first complete line that is not a record."""
    offset = 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if line.endswith(b"\n") and not _is_record(line):
                return number, offset, line
            offset += len(line)
    return None


def split_torn(line: bytes) -> tuple[bytes, bytes] | None:
    """(cut record, whole record) when ``line`` is an incomplete record with a complete one appended to it."""
    body = line.rstrip(b"\r\n")
    pos = body.rfind(RECORD_START)
    while pos > 0:
        if _is_record(body[pos:]):
            return body[:pos], body[pos:]
        pos = body.rfind(RECORD_START, 0, pos)
    return None


def _repair_merged(path: Path, number: int, offset: int, line: bytes) -> bool:
    parts = split_torn(line)
    if parts is None:
        return False
    torn, record = parts
    with _Locked(path), deferred():
        with open(path, "rb") as f:
            data = f.read()
        if data[offset : offset + len(line)] != line:
            return True  # changed meanwhile (another process repaired it): read it again
        side = _set_aside(path, torn)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data[:offset] + record + b"\n" + data[offset + len(line) :])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    _warn(
        f"journal {str(path)!r} line {number} held an incomplete record ({len(torn)} bytes from a write cut short) "
        f"followed by a complete one; the incomplete part was removed and kept in {str(side)!r}"
    )
    return True


def open_journal_storage(path: Path):
    """``JournalStorage`` on ``path`` after :func:`repair_tail`; an unreadable line is a :class:`PlannerError`."""
    path = Path(path)
    if path.is_dir():
        raise PlannerError(f"--storage journal file must be a file, but {str(path)!r} is a directory")
    for _ in range(3):
        repair_tail(path)
        try:
            last = _last_line(path) if path.is_file() else b""
            if last and not _is_record(last):
                raise ValueError("the last line is not a record")
            return JournalStorage(SafeJournalBackend(str(path), lock_obj=OwnedSymlinkLock(str(path))))
        except Exception as exc:  # noqa: BLE001 - Optuna's replay raises whatever the bad line provokes
            bad = first_bad_line(path)
            if bad is None:
                raise PlannerError(
                    f"--storage journal {str(path)!r} must be readable, but reading it failed: "
                    f"{type(exc).__name__}: {exc}"
                ) from None
            number, offset, line = bad
            if not _repair_merged(path, number, offset, line):
                text = line.decode("utf-8", "replace").rstrip()
                shown = text if len(text) <= 80 else text[:77] + "..."
                raise PlannerError(
                    f"--storage journal {str(path)!r} must hold one JSON record per line, but line {number} "
                    f"is not one ({shown!r}): the study cannot be read past it; restore the file from "
                    f"a copy"
                ) from None
    raise PlannerError(f"--storage journal {str(path)!r} must be readable, but it kept changing while being repaired")
