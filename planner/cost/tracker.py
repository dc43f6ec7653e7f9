"""LiveBytesTracker: the bytes of tensor storage alive at each instant of a traced computation.

A ``TorchDispatchMode`` sees every tensor an op returns; a storage seen for the first time is
an allocation, and a ``weakref.finalize`` on it reports the free. Views and in-place results
share their storage and are counted once. This is what PyTorch's CPU allocator holds for
tensors (kernel-internal scratch buffers are invisible, as they are to
``torch.cuda.memory_allocated`` between ops). It works the same under ``FakeTensorMode``, where
nothing is allocated, so full-width layers of a 70B model can be traced on a laptop.

The one place a dispatch mode changes what it watches: autograd accumulates two gradients of
one tensor in place (``old.add_(new)``, ``torch/csrc/autograd/input_buffer.cpp``) when the gradient
already buffered is a dense non-view tensor that nothing else holds and neither is a tensor
subclass; a Python mode (or a ``FakeTensor``) makes it fall back to ``old + new``. The tracker
counts that fallback as the in-place add it stands for: when the engine releases ``old`` right
after the add, the sum keeps ``old``'s allocation, with no allocation or free.

Storages that exist before tracking starts (parameters, buffers, optimizer state, the batch)
must be declared with :meth:`LiveBytesTracker.track`, otherwise the first view of one would
count as a new allocation.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Iterable

import torch
from torch._prims_common import is_non_overlapping_and_dense_or_false as is_non_overlapping_and_dense
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_flatten


_ADD = torch.ops.aten.add.Tensor


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
        self._current = 0
        self._peak = 0
        self.events: list[tuple[int, int]] = []
        self.marks: list[tuple[str, int]] = []
        self._live: dict[int, list[int]] = {}  # id(storage) -> [alloc_id, nbytes]
        self._next_id = 0
        # a gradient accumulation seen but not settled: (sum storage, its bytes, operand storage ids)
        self._pending: tuple | None = None

    @property
    def current_bytes(self) -> int:
        self._settle()
        return self._current

    @property
    def peak_bytes(self) -> int:
        self._settle()
        return self._peak

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
        self._current += delta
        if self._current > self._peak:
            self._peak = self._current
        if self.record and delta:
            self.events.append((aid, delta))

    def _free(self, key: int, aid: int) -> None:
        entry = self._live.get(key)
        if entry is None or entry[0] != aid:
            return
        pending = self._pending
        if pending is not None:
            st, nbytes, stealable, operands = pending
            if key in stealable and entry[1] == nbytes:
                # the engine dropped this operand right after the add: in place, the sum is this allocation
                self._pending = None
                del self._live[key]
                self._live[id(st)] = entry
                weakref.finalize(st, self._free, id(st), aid)
                return
            if key not in operands:
                self._settle()
        del self._live[key]
        self._change(aid, -entry[1])

    def _settle(self) -> None:
        if self._pending is not None:
            st = self._pending[0]
            self._pending = None
            self._add(st)

    def _accumulation(self, args, out) -> bool:
        """Whether ``out = args[0] + args[1]`` is autograd adding up two gradients of one tensor."""
        if len(args) != 2 or torch._C._current_autograd_node() is None:
            return False
        a, b = args
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and isinstance(out, torch.Tensor)):
            return False
        if a.shape != out.shape or b.shape != out.shape or a.dtype != out.dtype or b.dtype != out.dtype:
            return False
        st = _storage(out)
        if st is None or id(st) in self._live:
            return False
        operands, stealable = set(), set()
        for i, t in enumerate((a, b)):
            s = _storage(t)
            if s is not None and id(s) in self._live:
                operands.add(id(s))
                # only the gradient already in the buffer is reused (``old.add_(new)``), and only when
                # can_accumulate_inplace holds: dense, not a view (so it owns its storage alone)
                if i == 0 and not t._is_view() and is_non_overlapping_and_dense(t):
                    stealable.add(id(s))
        if not stealable:
            return False
        self._pending = (st, st.nbytes(), stealable, operands)
        return True

    def track(self, tensors: Iterable[torch.Tensor]) -> int:
        """Count storages that already exist (parameters, state, inputs); returns the bytes added."""
        self._settle()
        before = self._current
        for t in tensors:
            st = _storage(t)
            if st is not None:
                self._add(st)
        return self._current - before

    def alloc_id(self, t: torch.Tensor) -> int | None:
        """The allocation id of ``t``'s storage while it is live (None if not tracked)."""
        self._settle()
        st = _storage(t)
        entry = self._live.get(id(st)) if st is not None else None
        return entry[0] if entry is not None else None

    def reset_peak(self) -> None:
        self._settle()
        self._peak = self._current

    @contextlib.contextmanager
    def suspended(self):
        """A block the tracker does not observe (its allocations are not counted; frees of counted storages still are):
        work outside the step it measures, e.g. an evaluation or the data loader's batch assembly."""
        self._settle()
        with _disable_current_modes():  # the mode stack's own switch; the mode is re-entered on exit
            yield

    def mark(self, label: str) -> None:
        """A named boundary at the current position of the event stream."""
        self._settle()
        self.marks.append((label, len(self.events)))

    def __exit__(self, *exc):
        self._settle()
        return super().__exit__(*exc)

    # -- dispatch ----------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self._settle()
        out = func(*args, **(kwargs or {}))
        if func is _ADD and not kwargs and self._accumulation(args, out):
            return out
        flat, _ = tree_flatten(out)
        for t in flat:
            if isinstance(t, torch.Tensor):
                st = _storage(t)
                if st is not None:
                    self._add(st)
        return out
