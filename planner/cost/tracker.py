"""LiveBytesTracker: the bytes of tensor storage alive at each instant of a traced computation.

A ``TorchDispatchMode`` sees every tensor an op returns; a storage seen for the first time is
an allocation, and a ``weakref.finalize`` on it reports the free. Views and in-place results
share their storage and are counted once. This is what PyTorch's CPU allocator holds for
tensors (kernel-internal scratch buffers are invisible, as they are to
``torch.cuda.memory_allocated`` between ops). It works the same under ``FakeTensorMode``, where
nothing is allocated, so full-width layers of a 70B model can be traced on a laptop.

Storages that exist before tracking starts (parameters, buffers, optimizer state, the batch)
must be declared with :meth:`LiveBytesTracker.track`, otherwise the first view of one would
count as a new allocation.
"""

from __future__ import annotations

import weakref
from typing import Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def _storage(t: torch.Tensor):
    if not isinstance(t, torch.Tensor) or t.is_sparse or t.device.type == "meta":
        return None
    try:
        return t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # tensor subclasses without a storage
        return None


class LiveBytesTracker(TorchDispatchMode):
    """Sums live tensor-storage bytes; ``peak_bytes`` is the largest sum seen since the last reset.

    With ``record=True`` every allocation and free is kept in ``events`` as ``(alloc_id, ±bytes)``
    in order, and :meth:`mark` inserts named boundaries, so a caller can cut the stream into
    segments afterwards. ``alloc_id`` of a storage is found with :meth:`alloc_id`.
    """

    def __init__(self, *, record: bool = False):
        super().__init__()
        self.record = record
        self.current_bytes = 0
        self.peak_bytes = 0
        self.events: list[tuple[int, int]] = []
        self.marks: list[tuple[str, int]] = []
        self._live: dict[int, list[int]] = {}  # id(storage) -> [alloc_id, nbytes]
        self._next_id = 0

    # -- accounting -------------------------------------------------------
    def _add(self, st) -> None:
        key = id(st)
        entry = self._live.get(key)
        nbytes = st.nbytes()
        if entry is not None:
            if entry[1] != nbytes:  # resized in place (out= ops, resize_)
                self._change(entry[0], nbytes - entry[1])
                entry[1] = nbytes
            return
        aid = self._next_id
        self._next_id += 1
        self._live[key] = [aid, nbytes]
        weakref.finalize(st, self._free, key, aid)
        self._change(aid, nbytes)

    def _change(self, aid: int, delta: int) -> None:
        self.current_bytes += delta
        if self.current_bytes > self.peak_bytes:
            self.peak_bytes = self.current_bytes
        if self.record and delta:
            self.events.append((aid, delta))

    def _free(self, key: int, aid: int) -> None:
        entry = self._live.get(key)
        if entry is None or entry[0] != aid:
            return
        del self._live[key]
        self._change(aid, -entry[1])

    def track(self, tensors: Iterable[torch.Tensor]) -> int:
        """Count storages that already exist (parameters, state, inputs); returns the bytes added."""
        before = self.current_bytes
        for t in tensors:
            st = _storage(t)
            if st is not None:
                self._add(st)
        return self.current_bytes - before

    def alloc_id(self, t: torch.Tensor) -> int | None:
        """The allocation id of ``t``'s storage while it is live (None if not tracked)."""
        st = _storage(t)
        entry = self._live.get(id(st)) if st is not None else None
        return entry[0] if entry is not None else None

    def reset_peak(self) -> None:
        self.peak_bytes = self.current_bytes

    def mark(self, label: str) -> None:
        """A named boundary at the current position of the event stream."""
        self.marks.append((label, len(self.events)))

    # -- dispatch ----------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        flat, _ = tree_flatten(out)
        for t in flat:
            if isinstance(t, torch.Tensor):
                st = _storage(t)
                if st is not None:
                    self._add(st)
        return out
