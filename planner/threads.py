"""PyTorch intra-op thread count, set for a block and restored after it."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block with ``n`` PyTorch threads (``None`` or 0: leave the count as it is)."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
