"""A model of PyTorch's CUDA caching allocator: replay allocations and frees, read reserved bytes.

The rules of ``c10/cuda/CUDACachingAllocator.cpp`` (torch 2.x, default settings: no
``max_split_size``, no ``expandable_segments``, no garbage collection threshold):

- every request is rounded up to a multiple of 512 B (``kMinBlockSize``);
- requests of at most 1 MiB (``kSmallSize``) are served from the small pool, whose segments
  are 2 MiB (``kSmallBuffer``); larger ones from the large pool;
- a request is served by the smallest cached free block of its pool that is large enough
  (best fit; ties: lowest address); none: a new segment (``cudaMalloc``) of 2 MiB for small
  requests, 20 MiB (``kLargeBuffer``) for requests under 10 MiB (``kMinLargeAlloc``), else the
  request rounded up to 2 MiB (``kRoundLarge``);
- the block is split when the rest is worth keeping: at least 512 B in the small pool, more
  than 1 MiB in the large pool; otherwise the whole block is handed out (and counted as
  allocated);
- a freed block merges with free neighbours of its segment; segments are never returned to
  the device (only an out-of-memory retry or ``empty_cache`` would do it).

``memory_reserved`` is the sum of the segments, ``memory_allocated`` the sum of the handed-out
blocks. One stream is assumed (the training step runs on the default stream; autograd's
backward thread uses the same stream).
"""

from __future__ import annotations

from bisect import bisect_left, insort

MIN_BLOCK = 512  # kMinBlockSize
SMALL_SIZE = 1 << 20  # kSmallSize: largest small-pool request
SMALL_BUFFER = 2 << 20  # kSmallBuffer: small-pool segment
LARGE_BUFFER = 20 << 20  # kLargeBuffer: segment for 1-10 MiB requests
MIN_LARGE_ALLOC = 10 << 20  # kMinLargeAlloc
ROUND_LARGE = 2 << 20  # kRoundLarge
SEGMENT_GAP = 1 << 40  # addresses of separate segments never touch
KEY_SHIFT = 64  # a free block's sort key: size above the address bits (addresses stay below 2**64)


def round_size(nbytes: int) -> int:
    """The block size a request of ``nbytes`` gets (``round_size``)."""
    return MIN_BLOCK if nbytes < MIN_BLOCK else -(-nbytes // MIN_BLOCK) * MIN_BLOCK


def segment_size(size: int) -> int:
    """The segment ``cudaMalloc`` gets when no cached block serves a block of ``size`` (``get_allocation_size``)."""
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return -(-size // ROUND_LARGE) * ROUND_LARGE


class CachingAllocator:
    """The readable reference model. Blocks by address: ``[size, allocated, prev address or -1,
    next address or -1, small]``; free blocks also sit in their pool as ``(size, address)``."""

    __slots__ = (
        "blocks",
        "free_small",
        "free_large",
        "next_segment",
        "allocated",
        "reserved",
        "peak_allocated",
        "peak_reserved",
        "segments",
    )

    def __init__(self):
        self.blocks: dict[int, list] = {}
        self.free_small: list[tuple[int, int]] = []  # (size, address), sorted: best fit by bisect
        self.free_large: list[tuple[int, int]] = []
        self.next_segment = 0
        self.allocated = self.reserved = self.peak_allocated = self.peak_reserved = 0
        self.segments: list[tuple[int, int, bool]] = []  # (address, size, small)

    def reset_peak(self) -> None:
        self.peak_allocated, self.peak_reserved = self.allocated, self.reserved

    def malloc(self, nbytes: int) -> int:
        """Hand out a block for ``nbytes``; returns its address."""
        size = round_size(nbytes)
        small = size <= SMALL_SIZE
        pool = self.free_small if small else self.free_large
        i = bisect_left(pool, (size, -1))
        blocks = self.blocks
        if i < len(pool):
            bsize, addr = pool.pop(i)
            block = blocks[addr]
        else:
            bsize = segment_size(size)
            addr = self.next_segment
            self.next_segment += SEGMENT_GAP
            block = blocks[addr] = [bsize, False, -1, -1, small]
            self.segments.append((addr, bsize, small))
            self.reserved += bsize
            self.peak_reserved = max(self.peak_reserved, self.reserved)
        rest = bsize - size
        if rest >= MIN_BLOCK if small else rest > SMALL_SIZE:
            tail = addr + size
            nxt = block[3]
            blocks[tail] = [rest, False, addr, nxt, small]
            if nxt != -1:
                blocks[nxt][2] = tail
            block[3] = tail
            block[0] = size
            insort(pool, (rest, tail))
        block[1] = True
        self.allocated += block[0]
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        return addr

    def free(self, addr: int) -> None:
        """Return a block to its pool, merged with free neighbours."""
        block = self.blocks[addr]
        block[1] = False
        self.allocated -= block[0]
        prev = block[2]
        if prev != -1 and not self.blocks[prev][1]:
            addr = self._absorb(prev, addr)
        nxt = self.blocks[addr][3]
        if nxt != -1 and not self.blocks[nxt][1]:
            self._absorb(addr, nxt)
        size = self.blocks[addr][0]
        insort(self.free_small if block[4] else self.free_large, (size, addr))

    def _absorb(self, left: int, right: int) -> int:
        """Merge block ``right`` into its free neighbour ``left`` (one of them is cached, and leaves its
        pool); returns ``left``."""
        blocks = self.blocks
        lb, rb = blocks[left], blocks[right]
        pool = self.free_small if lb[4] else self.free_large
        for a, b in ((left, lb), (right, rb)):
            i = bisect_left(pool, (b[0], a))
            if i < len(pool) and pool[i] == (b[0], a):
                del pool[i]
        lb[0] += rb[0]
        lb[3] = rb[3]
        if rb[3] != -1:
            blocks[rb[3]][2] = left
        del blocks[right]
        return left


def _rounded(ops: list[int]) -> list[int]:
    """Allocations rounded as :func:`round_size` does; frees pass through."""
    return [(n + MIN_BLOCK - 1) & -MIN_BLOCK if n > 0 else (n or MIN_BLOCK) for n in ops]


def _freeze(mem: list) -> tuple:
    """A copy of the allocator state in a few flat lists: thousands of small lists kept between plan rows
    would make the garbage collector's full passes (which rescan the caller's whole heap) come often."""
    blocks = mem[0]
    return (list(blocks), [x for b in blocks.values() for x in b], mem[1][:], mem[2][:], *mem[3:])


def _thaw(frozen: tuple) -> list:
    keys, flat, small_pool, large_pool, *counters = frozen
    blocks = {a: flat[5 * i : 5 * i + 5] for i, a in enumerate(keys)}
    return [blocks, small_pool[:], large_pool[:], *counters]


def _run(ops: list[int], addrs: list[int], k: int, mem: list) -> int:
    """Rounded sizes (>= 0) allocate into ``addrs[k], addrs[k + 1]...``; ``~id`` frees ``addrs[id]``.
    ``mem``: blocks, small pool, large pool, next segment, allocated, reserved, peak allocated (updated)."""
    blocks, small_pool, large_pool, nseg, allocated, reserved, peak = mem
    # everything the loop reads is local: it is the hot path of a plan table
    small_size, gap, small_buffer, shift, mask = SMALL_SIZE, SEGMENT_GAP, SMALL_BUFFER, KEY_SHIFT, (1 << KEY_SHIFT) - 1
    bisect, insert = bisect_left, insort
    for size in ops:
        if size >= 0:
            if size <= small_size:
                i = bisect(small_pool, size << shift)
                if i < len(small_pool):
                    key = small_pool.pop(i)
                    addr = key & mask
                    block = blocks[addr]
                    block[1] = True
                    rest = (key >> shift) - size
                else:
                    addr = nseg
                    nseg += gap
                    reserved += small_buffer
                    block = blocks[addr] = [small_buffer, True, -1, -1, True]
                    rest = small_buffer - size
                if rest:
                    tail = addr + size
                    nxt = block[3]
                    blocks[tail] = [rest, False, addr, nxt, True]
                    if nxt != -1:
                        blocks[nxt][2] = tail
                    block[3] = tail
                    block[0] = size
                    insert(small_pool, rest << shift | tail)
                allocated += size
            else:
                i = bisect(large_pool, size << shift)
                if i < len(large_pool):
                    key = large_pool.pop(i)
                    addr = key & mask
                    block = blocks[addr]
                    block[1] = True
                    bsize = key >> shift
                else:
                    bsize = LARGE_BUFFER if size < MIN_LARGE_ALLOC else -(-size // ROUND_LARGE) * ROUND_LARGE
                    addr = nseg
                    nseg += gap
                    reserved += bsize
                    block = blocks[addr] = [bsize, True, -1, -1, False]
                rest = bsize - size
                if rest > small_size:
                    tail = addr + size
                    nxt = block[3]
                    blocks[tail] = [rest, False, addr, nxt, False]
                    if nxt != -1:
                        blocks[nxt][2] = tail
                    block[3] = tail
                    block[0] = bsize = size
                    insert(large_pool, rest << shift | tail)
                allocated += bsize
            if allocated > peak:
                peak = allocated
            addrs[k] = addr
            k += 1
            continue
        addr = addrs[~size]
        block = blocks[addr]
        block[1] = False
        bsize = block[0]
        allocated -= bsize
        pool = small_pool if block[4] else large_pool
        prev, nxt = block[2], block[3]
        if prev != -1:
            p = blocks[prev]
            if not p[1]:  # absorbed into the free block before it
                del pool[bisect(pool, p[0] << shift | prev)]
                bsize += p[0]
                p[3] = nxt
                if nxt != -1:
                    blocks[nxt][2] = prev
                del blocks[addr]
                addr, block = prev, p
        if nxt != -1:
            n = blocks[nxt]
            if not n[1]:  # absorbs the free block after it
                del pool[bisect(pool, n[0] << shift | nxt)]
                bsize += n[0]
                after = block[3] = n[3]
                if after != -1:
                    blocks[after][2] = addr
                del blocks[nxt]
        block[0] = bsize
        insert(pool, bsize << shift | addr)
    mem[3:] = nseg, allocated, reserved, peak
    return k


def replay_run(
    setup: list[int],
    step: list[int],
    n_step: int,
    grads: list[int],
    state: list[int],
    temporaries: list[int],
    *,
    start: tuple | None = None,
    save_at: tuple[int, ...] = (),
    saved: list | None = None,
) -> tuple[int, int]:
    """A training run through a fresh allocator: ``setup`` operations (weights, batch, workspaces; as
    ``step``, ``-(k + 1)`` frees the k-th setup allocation), then two steps of ``step`` operations
    (``n >= 0`` allocates, ``-(id + 1)`` frees a block of that step), each followed by the optimizer's
    ``temporaries`` and the free of the step's ``grads``; the first step allocates the optimizer
    ``state`` after its backward. Returns (peak reserved over the run, peak allocated during the
    second step); reserved never shrinks, so its peak is its end.

    The rules of :class:`CachingAllocator` (tests hold the two equal on random sequences and on
    composed training steps), inlined for speed: a 70B plan table replays about six million
    operations. Sizes are rounded once up front; a free block is one int in its pool's sorted
    list, ``size << KEY_SHIFT | address``, so best fit is one bisect; each pool has its own branch
    (a small-pool split always leaves a 512-byte multiple, so it always splits).

    Checkpoints: for each op position p in ``save_at`` the first step passes, ``saved`` receives
    ``(p, allocations so far, memory, their addresses)``, the state after ``setup`` and
    ``step[:p]``; ``start``, such a checkpoint of a run with the same ``setup`` and the same
    ``step[:p]``, resumes the first step there (the replay is deterministic: same state, same
    operations, same outcome)."""
    step, state, temporaries = _rounded(step), _rounded(state), _rounded(temporaries)
    n_addrs = n_step + len(state) + len(temporaries)
    if start is None:
        pos, k, addrs = 0, 0, [0] * n_addrs
        # blocks, small pool, large pool, next segment, allocated, reserved, peak allocated
        mem: list = [{}, [], [], 0, 0, 0, 0]
        _run(_rounded(setup), [0] * len(setup), 0, mem)
    else:
        pos, k, frozen, known = start
        mem = _thaw(frozen)
        addrs = known + [0] * (n_addrs - len(known))
    for p in sorted({p for p in save_at if pos < p < len(step)}) + [len(step)]:
        k = _run(step[pos:p], addrs, k, mem)
        pos = p
        if saved is not None and p < len(step):
            saved.append((p, k, _freeze(mem), addrs[:k]))
    for index in (1, 2):
        if index == 2:
            mem[6] = mem[4]  # peak allocated: the second step's
            addrs = [0] * n_addrs
            k = _run(step, addrs, 0, mem)
        if index == 1:
            k = _run(state, addrs, k, mem)
        first_temp = k
        k = _run(temporaries, addrs, k, mem)
        if index == 1:  # the second step's frees change neither figure: they are left out
            _run([~i for i in reversed(range(first_temp, k))] + [~g for g in grads], addrs, k, mem)
    return mem[5], mem[6]
