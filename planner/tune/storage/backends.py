"""Where a study lives: SQLite under studies/ by default, any Optuna storage URL, or a journal file.

Many ``planner tune`` processes (on one machine or many) share a study through one storage:
SQLite for a few local workers, PostgreSQL/MySQL for many machines, a journal file
(``*.log``/``*.jsonl``, Optuna's ``JournalFileBackend``) for network file systems.
"""

from __future__ import annotations

import errno
import importlib.util
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

from planner.errors import PlannerError
from planner.writable import unwritable_reason

DEFAULT_STORAGE = "sqlite:///studies/planner.db"
JOURNAL_SUFFIXES = (".log", ".jsonl", ".journal")
SCHEMA_RETRIES = 3
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_SQLITE_FULL = "database or disk is full"
_SQLITE_READ_ONLY = ("readonly database", "unable to open database file")
NEARLY_FULL = 1 << 20  # free bytes under which SQLite's "disk I/O error" is taken for a full disk
_RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql")


def _driver_url(url: str) -> str:
    """Pick an installed driver for a bare ``postgresql://``/``mysql://`` URL.

    SQLAlchemy 2.1 maps ``postgresql://`` to psycopg 3; our ``postgres`` extra installs
    psycopg2, so name it when psycopg 3 is absent (same for PyMySQL vs mysqlclient).
    """
    scheme, rest = url.split("://", 1)
    if scheme in ("postgresql", "postgres"):
        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return f"postgresql+psycopg2://{rest}"
        return f"postgresql://{rest}"
    if (
        scheme == "mysql"
        and importlib.util.find_spec("MySQLdb") is None
        and importlib.util.find_spec("pymysql") is not None
    ):
        return f"mysql+pymysql://{rest}"
    return url


def check_storage(url: str) -> str:
    """Validate a storage string; return it normalized. Raises one line naming the rule."""
    url = (url or "").strip()
    if not url:
        raise PlannerError("--storage must be an Optuna storage URL or a journal file path, but got ''")
    if "://" not in url:
        if not url.endswith(JOURNAL_SUFFIXES):
            raise PlannerError(
                f"--storage must be a URL (sqlite:///studies/planner.db, postgresql://user@host/db, mysql://...) "
                f"or a journal file ending in {', '.join(JOURNAL_SUFFIXES)}, but got {url!r}"
            )
        if Path(url).expanduser().is_dir():
            raise PlannerError(f"--storage journal file must be a file, but {url!r} is a directory")
        parent = Path(url).expanduser().parent
        if parent.exists() and not parent.is_dir():
            raise PlannerError(f"--storage journal file's folder must be a directory, but {str(parent)!r} is not")
        return url
    scheme = url.split("://", 1)[0].split("+", 1)[0].lower()
    if scheme not in _RDB_SCHEMES:
        raise PlannerError(
            f"--storage URL scheme must be one of {', '.join(_RDB_SCHEMES)} (or a journal file path), but got {scheme!r} in {url!r}"
        )
    if scheme == "sqlite":
        path = url.split("://", 1)[1]
        if not path.startswith("/") or path in ("/", "/:memory:"):
            raise PlannerError(
                f"--storage sqlite URL must name a file (sqlite:///relative.db or sqlite:////abs.db), but got {url!r}"
            )
    return url


def open_storage(url: str):
    """An Optuna storage object for ``url`` (creating the SQLite/journal folder when missing)."""
    # optuna: deferred to opening a storage, 'planner tune --help' loads this module
    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import RDBStorage

    url = check_storage(url)
    if "://" not in url:
        path = Path(url).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return open_journal(path)
    # dead workers' trials are found by planner.tune.storage.lifecycle (for every storage), not Optuna's heartbeat
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # a generous lock timeout: several processes write one SQLite file
        kwargs = {"engine_kwargs": {"connect_args": {"timeout": 60}}}
    try:
        storage = None
        for attempt in range(SCHEMA_RETRIES):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ExperimentalWarning)  # heartbeats are stable enough for us
                    storage = RDBStorage(_driver_url(url), **kwargs)
                break
            except ImportError:
                raise
            except Exception:
                # two processes creating a fresh database race on its schema: the loser retries
                # and finds the tables the winner made
                if attempt == SCHEMA_RETRIES - 1:
                    raise
                time.sleep(0.5 * (attempt + 1))
    except ImportError as exc:
        raise PlannerError(
            f"--storage {url!r} needs its database driver installed (pip install 'planner[postgres]' for PostgreSQL): {exc}"
        ) from None
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy's connection errors are many; each means "cannot open"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PlannerError(
            _local_problem(url, exc) or f"--storage must be reachable, but {url!r} failed: {first}"
        ) from None
    assert storage is not None  # each attempt either opens it and breaks, or raises on the last
    if url.startswith("sqlite:///"):
        _sqlite_wal(storage.engine)
        _sqlite_serialized(storage.engine)
    return storage


def _local_problem(url: str, exc: BaseException) -> str | None:
    """What is wrong with a local SQLite file that failed to open, when it is a full disk or a read-only file."""

    path = local_storage_path(url)
    if path is None or "://" not in url:
        return None
    text = str(exc)
    if disk_full(exc) is not None or ("disk I/O error" in text and _free_bytes(path) < NEARLY_FULL):
        return f"--storage must have room to write, but the disk holding {str(path)!r} is full ({_free_bytes(path):,} bytes free)"
    if any(s in text for s in _SQLITE_READ_ONLY):
        reason = unwritable_reason(path)
        if reason is not None:  # SQLite writes even to read: its -wal and -shm files lie beside the database
            return f"--storage must be a SQLite file that can be written (with its folder), but {str(path)!r} {reason}"
    return None


def _free_bytes(path: Path) -> int:
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return NEARLY_FULL


class StorageFull(BaseException):
    """A write failed for want of disk space; the original error is ``__cause__``.

    A BaseException, as KeyboardInterrupt is: Optuna catches an objective's Exception and stores the trial's
    failure, on the same full disk ("Should not reach"); this one passes through and stops the study.
    """


def disk_full(exc: BaseException | None) -> BaseException | None:
    """The error in ``exc``'s chain (causes and contexts, SQLAlchemy's ``orig``) that says the disk is full:
    ENOSPC or EDQUOT, or SQLite's "database or disk is full"; None when there is none."""
    seen, stack = set(), [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return e
        if type(e).__name__ == "OperationalError" and _SQLITE_FULL in str(e):
            return e
        stack += [getattr(e, "orig", None), e.__context__, e.__cause__]
    return None


def full_disk_message(exc: BaseException, storage: str) -> str:
    """The first half of one line naming what could not be written for want of space: the storage (``--storage``)
    or the file the error names."""
    full = disk_full(exc)
    why = (
        (full.strerror or str(full))
        if isinstance(full, OSError)
        else _SQLITE_FULL
        if full is not None
        else "no space left"
    )
    local = local_storage_path(storage)
    filename = getattr(full, "filename", None)
    if filename is None or (local is not None and Path(filename).expanduser().resolve() == local.resolve()):
        where = repr(str(local)) if local is not None else repr(storage)
        return f"--storage must have room to write, but writing {where} failed: the disk is full ({why})"
    return f"the disk must have room to write, but writing {str(filename)!r} failed: the disk is full ({why})"


def _sqlite_wal(engine) -> None:
    """Write-ahead log: a commit needs no fsync and readers never block the writer.

    Optuna commits every user attribute separately; with SQLite's default rollback journal
    each commit is an fsync (~20 ms here), which made bookkeeping cost more than a tiny trial.
    """
    from sqlalchemy import event  # sqlalchemy (optuna's RDB storage, ~0.4 s): deferred, as optuna is in open_storage

    def on_connect(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(engine, "connect", on_connect)
    engine.dispose()  # connections opened while creating the tables predate the listener


def _sqlite_serialized(engine) -> None:
    """Every transaction takes SQLite's write lock when it begins (``BEGIN IMMEDIATE``).

    Python's sqlite3 starts a transaction only at the first write, so Optuna's read-then-write
    steps (pop a queued trial: read WAITING, write RUNNING; fail a dead worker's trial) were not
    atomic: two workers could both pop one queued baseline and train it twice.
    """
    from sqlalchemy import event  # sqlalchemy (optuna's RDB storage, ~0.4 s): deferred, as optuna is in open_storage

    def on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # the driver's own BEGIN off: ours below

    def on_begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "begin", on_begin)
    engine.dispose()


def local_storage_path(url: str) -> Path | None:
    """The file a SQLite URL or a journal path writes, or None for a server."""
    url = url.strip()
    if "://" not in url:
        return Path(url).expanduser()
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///") :]).expanduser()
    return None


def open_journal(path: Path):
    """A journal file storage, repaired or refused first (see :mod:`planner.tune.storage.journal`)."""
    from planner.tune.storage.journal import (
        open_journal_storage,
    )  # deferred: it imports optuna, which `--help` need not load

    return open_journal_storage(path)
