"""Whether a file can be written where a command will write it, checked before any work and without side effects."""

from __future__ import annotations

import os
from pathlib import Path


def unwritable_reason(path: str | Path) -> str | None:
    """Why a file cannot be written at ``path`` (its folders may still be missing), as the end of a sentence
    about ``path`` (``"is a directory"``), or None when it can."""
    path = Path(path).expanduser()
    if path.is_dir():
        return "is a directory"
    if path.exists():
        return None if os.access(path, os.W_OK) else "is not writable"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot be created: {str(parent)!r} is a file"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot be created: {str(parent)!r} is not writable"
    return None
