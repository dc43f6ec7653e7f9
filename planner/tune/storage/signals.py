"""Ctrl-C and SIGTERM as one interrupt, delivered where it cannot be lost.

Python runs a signal handler between any two bytecodes, including inside a ``weakref.finalize``
callback (the cost model's live-bytes tracker frees through one), a weak container's callback
(a ``WeakKeyDictionary`` dropping a freed key) or a ``__del__``. A
``KeyboardInterrupt`` raised there is printed as "Exception ignored in: <finalize object>" and
swallowed: the run goes on. Inside SQLAlchemy it can leave a pooled connection half-reset.

:func:`interrupts_as_keyboard_interrupt` installs one handler for SIGINT and SIGTERM: it raises
:class:`Interrupt` (a ``KeyboardInterrupt``) at once, unless the main thread is inside such a
frame or a :func:`deferred` section; then the signal is re-sent a few milliseconds later and
raised as soon as the frame is left (a deferred section raises it when it ends).
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager

REDELIVER_SECONDS = 0.005  # a finalizer or a storage call returns within milliseconds
FORCE_AFTER = 3  # signals received during one deferred section before it is cut short anyway
# frames a KeyboardInterrupt must not be raised in: their callers swallow it or cannot clean up
_UNSAFE_MODULES = ("sqlalchemy.", "optuna.storages._rdb.", "optuna.storages._cached_storage")
# weakref.finalize.__call__ (and the callback it runs) and the weak containers' own callbacks (WeakKeyDictionary's
# and WeakValueDictionary's `remove`, WeakSet's `_remove`) run when the garbage collector frees an object, anywhere:
# an interrupt raised in them is printed as "Exception ignored"
_WEAKREF_MODULES = ("weakref", "_weakrefset")


class Interrupt(KeyboardInterrupt):
    """SIGINT or SIGTERM, as a KeyboardInterrupt that remembers which."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


_state = threading.local()
_pending: dict = {"signum": None, "count": 0}


def _depth() -> int:
    return getattr(_state, "depth", 0)


def _unsafe(frame) -> bool:
    while frame is not None:
        code = frame.f_code
        if code.co_name == "__del__":
            return True
        module = frame.f_globals.get("__name__", "")
        if module.startswith(_UNSAFE_MODULES) or module in _WEAKREF_MODULES:
            return True
        frame = frame.f_back
    return False


def _redeliver(signum: int) -> None:
    timer = threading.Timer(REDELIVER_SECONDS, os.kill, (os.getpid(), signum))
    timer.daemon = True
    timer.start()


def _handler(signum, frame):
    if _depth() > 0:
        _pending["signum"] = signum
        _pending["count"] += 1
        if _pending["count"] < FORCE_AFTER:
            return
    elif _unsafe(frame):
        _redeliver(signum)
        return
    _pending["signum"], _pending["count"] = None, 0
    raise Interrupt(signum)


@contextmanager
def deferred():
    """A section an interrupt waits for (a journal append, bookkeeping after Ctrl-C); raised at its end.

    A third signal during the section interrupts it anyway (a hung storage must not trap the user).
    """
    _state.depth = _depth() + 1
    try:
        yield
    finally:
        _state.depth -= 1
        if _state.depth == 0 and _pending["signum"] is not None:
            signum = _pending["signum"]
            _pending["signum"], _pending["count"] = None, 0
            raise Interrupt(signum)


@contextmanager
def interrupts_as_keyboard_interrupt():
    """SIGINT and SIGTERM raise :class:`Interrupt` safely while the block runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def exit_code(exc: BaseException) -> int:
    """The shell's convention: 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + getattr(exc, "signum", signal.SIGINT)
