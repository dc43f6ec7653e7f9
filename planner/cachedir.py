"""Cache directories built once and shared by processes: an exclusive lock while one is built, and a staged
directory that replaces the final one by an atomic rename (a reader sees all of it or nothing); where the cache
lives, the hash of the weights a built directory records, and transformers kept quiet while a model is saved into
one or loaded from it."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable

from planner.errors import PlannerError


def cache_root() -> Path:
    """``$PLANNER_CACHE_DIR``, else ``~/.cache/planner``."""
    return Path(os.environ.get("PLANNER_CACHE_DIR") or Path.home() / ".cache" / "planner").expanduser()


def weights_sha256(model) -> str:
    """SHA-256 of every tensor's name and bytes, in name order (what "the same weights" means)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def quiet_transformers():
    """Hide transformers' per-file progress bars while a model is saved or loaded."""
    from transformers.utils import logging  # transformers: deferred, this module is light (seconds on top of torch)

    was = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            logging.enable_progress_bar()


def say(msg: str) -> None:
    """One progress line on stderr, prefixed ``planner:``."""
    print(f"planner: {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive advisory lock (POSIX ``flock``; elsewhere the atomic rename alone protects)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            import fcntl  # POSIX only: imported where it is used
        except ImportError:  # pragma: no cover - Windows
            yield
            return
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def staged_dir(final: Path):
    """A temporary directory beside ``final``, renamed onto it when the block succeeds (a leftover ``final``
    without its completion marker is replaced) and removed when the block fails."""
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def build_once(final: Path, complete: Callable[[Path], bool], build: Callable[[Path], None]) -> Path:
    """``final`` once ``complete(final)``: otherwise, under its lock and unless another process finished meanwhile,
    ``build(tmp)`` fills a staged directory renamed onto it. An unwritable cache is one line naming the setting."""
    if complete(final):
        return final
    try:
        with file_lock(final.with_name(final.name + ".lock")):
            if not complete(final):  # another process may have finished while we waited
                with staged_dir(final) as tmp:
                    build(tmp)
    except OSError as exc:
        raise PlannerError(
            f"the model cache must be writable (set PLANNER_CACHE_DIR), but {str(final.parent)!r} is not: {exc}"
        ) from None
    return final
