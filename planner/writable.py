"""Whether a command can write where it will write, proven by trying before any work; and writes that leave no
partial file behind.

``os.access`` answers from permission bits, which root (uid 0) passes everywhere: a folder under /proc passes it,
and the file is refused only once the work is done. Here the folder a file goes into is tried instead: a probe file
is created and removed in it (inside a probe folder made and removed in the nearest existing folder, where the
folders are still missing). Nothing is left behind. An existing file is not opened (see :func:`_read_only`).

:func:`write_atomic` writes a file through a temporary one in the same folder, renamed over it only once complete:
a full disk or an interrupt leaves the old file, or none, never a cut one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import uuid
from pathlib import Path

PROBE_PREFIX = ".planner-probe-"
NAME_MAX = 255  # where the file system does not say (os.pathconf)


def _nearest_existing(path: Path) -> Path:
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return NAME_MAX


def _long_name(path: Path, existing: Path) -> str | None:
    """The reason when a name on ``path`` below ``existing`` is longer than the file system allows."""
    limit = _name_max(existing)
    for name in path.relative_to(existing).parts:
        size = len(os.fsencode(name))
        if size > limit:
            shown = name if len(name) <= 24 else name[:21] + "..."
            return f"cannot be created: the name {shown!r} is {size} bytes, over the file system's limit of {limit}"
    return None


def _probe(folder: Path, *, nested: bool) -> OSError | None:
    """Create and remove a file in ``folder`` (``nested``: inside a new folder there); the error, or None."""
    try:
        where = tempfile.mkdtemp(prefix=PROBE_PREFIX, dir=folder) if nested else str(folder)
        try:
            fd, probe = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=where)
            os.close(fd)
            os.unlink(probe)
        finally:
            if nested:
                os.rmdir(where)
    except OSError as exc:
        return exc
    return None


def _read_only(path: Path) -> str | None:
    """Why the existing file ``path`` cannot be written, asked without opening it: closing any descriptor of a file
    drops every POSIX lock this process holds on it, SQLite's included. For an existing file the system's answer is
    right for root too: permission bits do not stop root, a read-only mount or an immutable file does, and both show."""
    if os.access(path, os.W_OK):
        return None
    try:
        read_only_mount = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        read_only_mount = False
    return f"is read-only ({os.strerror(errno.EROFS if read_only_mount else errno.EACCES)})"


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def unwritable_reason(path: str | Path, *, directory: bool = False) -> str | None:
    """Why a file (``directory``: files inside a folder) cannot be written at ``path``, whose folders may still be
    missing, as the end of a sentence about ``path`` (``"is a directory"``); None when it can. Found by trying."""
    path = Path(path).expanduser()
    folder = path if directory else path.parent
    try:
        existing = _nearest_existing(folder)
        if (reason := _long_name(path, existing)) is not None:
            return reason
        if not directory and os.path.lexists(path):
            if path.is_dir():
                return "is a directory"
            if (reason := _read_only(path)) is not None:
                return reason
        if directory and path.exists() and not path.is_dir():
            return "is a file, not a directory"
        if not existing.is_dir():
            return f"cannot be created: {str(existing)!r} is a file"
    except OSError as exc:  # a name too long for the system, a loop of links
        return f"cannot be reached ({_why(exc)})"
    error = _probe(existing, nested=existing != folder)
    if error is None:
        return None
    if existing == folder and os.path.lexists(path) and not directory:
        return f"cannot be replaced: its folder {str(folder)!r} refuses new files ({_why(error)})"
    if existing == path and directory:
        return f"refuses new files ({_why(error)})"
    return f"cannot be created: {str(existing)!r} refuses new files ({_why(error)})"


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` (its folders created) through a temporary file renamed over it once complete;
    on an error (a full disk) the temporary file is removed and ``path`` is as it was."""
    raw = data.encode("utf-8") if isinstance(data, str) else data

    def write(tmp: Path) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the mode a plain open gives (umask applies)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())

    return replace_atomic(path, write)


def replace_atomic(path: str | Path, write) -> Path:
    """``write(tmp)`` a temporary file beside ``path`` (its folders created), then rename it over ``path``; on an
    error the temporary file is removed and ``path`` is as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name[:64]}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path
