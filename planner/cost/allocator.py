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
    """Blocks by address: ``[size, allocated, prev address or -1, next address or -1, small]``."""

    __slots__ = ("blocks", "free_small", "free_large", "next_segment", "allocated", "reserved",
                 "peak_allocated", "peak_reserved", "segments")

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
        size = MIN_BLOCK if nbytes < MIN_BLOCK else -(-nbytes // MIN_BLOCK) * MIN_BLOCK
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
            if self.reserved > self.peak_reserved:
                self.peak_reserved = self.reserved
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
        if self.allocated > self.peak_allocated:
            self.peak_allocated = self.allocated
        return addr

    def free(self, addr: int) -> None:
        """Return a block to its pool, merged with free neighbours."""
        blocks = self.blocks
        block = blocks[addr]
        block[1] = False
        self.allocated -= block[0]
        pool = self.free_small if block[4] else self.free_large
        prev = block[2]
        if prev != -1 and not blocks[prev][1]:
            p = blocks[prev]
            pool.pop(bisect_left(pool, (p[0], prev)))
            p[0] += block[0]
            p[3] = block[3]
            if block[3] != -1:
                blocks[block[3]][2] = prev
            del blocks[addr]
            addr, block = prev, p
        nxt = block[3]
        if nxt != -1 and not blocks[nxt][1]:
            n = blocks[nxt]
            pool.pop(bisect_left(pool, (n[0], nxt)))
            block[0] += n[0]
            block[3] = n[3]
            if n[3] != -1:
                blocks[n[3]][2] = addr
            del blocks[nxt]
        insort(pool, (block[0], addr))


def replay_run(setup: list[int], step: list[int], n_step: int, grads: list[int], state: list[int],
               temporaries: list[int]) -> tuple[int, int]:
    """A training run through a fresh allocator: ``setup`` operations (weights, batch, workspaces; as
    ``step``, ``-(k + 1)`` frees the k-th setup allocation),
    then two steps of ``step`` operations (``n >= 0`` allocates, ``-(id + 1)`` frees a block of that
    step), each followed by the optimizer's ``temporaries`` and the free of the step's ``grads``; the
    first step allocates the optimizer ``state`` after its backward. Returns (peak reserved over the
    run, peak allocated during the second step); reserved never shrinks.

    The rules of :class:`CachingAllocator` (tests hold the two equal), inlined for speed: a plan
    table replays tens of thousands of operations per configuration. A free block is one int in
    its pool's sorted list, ``size << KEY_SHIFT | address``, so best fit is one bisect."""
    blocks: dict[int, list] = {}
    pools = ([], [])  # free blocks as sorted keys: large, small
    shift = KEY_SHIFT
    mask = (1 << shift) - 1
    state_ = [0, 0, 0, 0, 0]  # next segment, allocated, reserved, peak allocated, peak reserved

    def malloc(nbytes: int) -> int:
        size = MIN_BLOCK if nbytes < MIN_BLOCK else -(-nbytes // MIN_BLOCK) * MIN_BLOCK
        small = size <= SMALL_SIZE
        pool = pools[small]
        i = bisect_left(pool, size << shift)
        if i < len(pool):
            key = pool.pop(i)
            bsize, addr = key >> shift, key & mask
            block = blocks[addr]
        else:
            bsize = SMALL_BUFFER if small else (LARGE_BUFFER if size < MIN_LARGE_ALLOC else -(-size // ROUND_LARGE) * ROUND_LARGE)
            addr = state_[0]
            state_[0] += SEGMENT_GAP
            block = blocks[addr] = [bsize, True, -1, -1, small]
            state_[2] += bsize
            if state_[2] > state_[4]:
                state_[4] = state_[2]
        rest = bsize - size
        if rest >= MIN_BLOCK if small else rest > SMALL_SIZE:
            tail = addr + size
            nxt = block[3]
            blocks[tail] = [rest, False, addr, nxt, small]
            if nxt != -1:
                blocks[nxt][2] = tail
            block[3] = tail
            block[0] = bsize = size
            insort(pool, rest << shift | tail)
        block[1] = True
        state_[1] += bsize
        if state_[1] > state_[3]:
            state_[3] = state_[1]
        return addr

    def free(addr: int) -> None:
        block = blocks[addr]
        block[1] = False
        state_[1] -= block[0]
        pool = pools[block[4]]
        prev = block[2]
        if prev != -1:
            p = blocks[prev]
            if not p[1]:
                del pool[bisect_left(pool, p[0] << shift | prev)]
                p[0] += block[0]
                nxt = p[3] = block[3]
                if nxt != -1:
                    blocks[nxt][2] = prev
                del blocks[addr]
                addr, block = prev, p
        nxt = block[3]
        if nxt != -1:
            n = blocks[nxt]
            if not n[1]:
                del pool[bisect_left(pool, n[0] << shift | nxt)]
                block[0] += n[0]
                block[3] = n[3]
                if n[3] != -1:
                    blocks[n[3]][2] = addr
                del blocks[nxt]
        insort(pool, block[0] << shift | addr)

    setup_addrs = []
    for n in setup:
        if n >= 0:
            setup_addrs.append(malloc(n))
        else:
            free(setup_addrs[-n - 1])
    for index in (1, 2):
        if index == 2:
            state_[3] = state_[1]
        addrs = [0] * n_step
        k = 0
        for op in step:
            if op >= 0:
                addrs[k] = malloc(op)
                k += 1
            else:
                free(addrs[-op - 1])
        if index == 1:
            for n in state:
                malloc(n)
        temps = [malloc(n) for n in temporaries]
        for a in reversed(temps):
            free(a)
        for g in grads:
            free(addrs[g])
    return state_[4], state_[3]
