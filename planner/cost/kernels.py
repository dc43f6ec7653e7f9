"""CUDA kernels as a trace on CPU must count them: attention (SDPA) and dropout.

A trace runs on CPU, where ``F.scaled_dot_product_attention`` and ``F.dropout`` keep other
tensors than on a GPU. Under :func:`cuda_kernels` both are replaced by functions that allocate
exactly the tensors the CUDA kernels of torch 2.x allocate, keep and free (values are not
computed: memory does not depend on them), so a CPU or FakeTensor trace counts CUDA bytes.

SDPA dispatch on CUDA (``sdp_utils.cpp``; priority flash > memory-efficient > math):

- **flash** (``_flash_attention_forward``): 16-bit q/k/v, no ``attn_mask``, head dim <= 256,
  grouped-query heads allowed. Keeps the output (b, s, h, d) and a float32 log-sum-exp per
  row and head (b, h, s); dropout as a Philox seed/offset (host scalars, no device bytes).
  Backward: dq, dk, dv like q, k, v; ``softmax_d`` (b, h, s128) and ``dq_accum``
  (b, s128, h, d32) in float32 (s128: s rounded up to 128, d32: d to 32), and with grouped-query
  heads dk/dv expanded to all query heads (b, s, h, d) before the sum over the group.
- **memory-efficient** (``_efficient_attention_forward``, cutlass): any float dtype, masks
  allowed, query and key/value heads must be equal (no GQA). Keeps the output and a float32
  log-sum-exp (b, h, s32) (s32: s rounded up to 32). Backward: dq/dk/dv (one (b, s, 3, h, d)
  chunk when q, k, v are views of one tensor, as gpt2's fused ``c_attn``), ``delta`` (b, h, s)
  float32, and for 16-bit a float32 dq accumulator (b, h, s64, d128 rounded).
- **math** otherwise (e.g. float32 with grouped-query heads: flash needs 16-bit, the
  memory-efficient kernel equal heads): the composite ``_scaled_dot_product_attention_math``,
  which materializes and keeps the (b, h, s, s) softmax; it runs as is.

Dropout on CUDA is the fused ``native_dropout``: the output and a bool mask (1 byte per
element) are kept, where CPU keeps a noise tensor of the input's dtype.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

FLASH_MAX_HEAD_DIM = 256
FLASH_SEQ_ROUND = 128  # flash backward pads the query length of softmax_d and dq_accum to 128
FLASH_HEAD_ROUND = 32  # ... and the head dim of dq_accum to 32 (<= 192; 256 above)
EFF_LSE_ALIGN = 32  # memory-efficient forward pads the log-sum-exp rows to 32 (kAlignLSE)
EFF_BLOCK_I, EFF_BLOCK_J = 64, 128  # memory-efficient backward tile (dq accumulator padding)
LOW_PRECISION = (torch.float16, torch.bfloat16)


def _round(n: int, k: int) -> int:
    return -(-n // k) * k


def sdpa_backend(query, key, value, attn_mask=None, enable_gqa=False) -> str:
    """The kernel torch's CUDA SDPA picks: ``flash``, ``efficient`` or ``math`` (see module doc)."""
    d = query.shape[-1]
    gqa = query.shape[-3] != key.shape[-3]
    if query.dtype in LOW_PRECISION and attn_mask is None and d <= FLASH_MAX_HEAD_DIM and value.shape[-1] == d:
        return "flash"
    if not gqa and query.dtype in LOW_PRECISION + (torch.float32,):
        return "efficient"
    return "math"


def _seq_layout(t: torch.Tensor) -> torch.Tensor:
    """A new (b, s, h, d) tensor, returned as the (b, h, s, d) view SDPA gives back."""
    b, h, s, d = t.shape
    return t.new_empty((b, s, h, d)).transpose(1, 2)


def _like(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(t)


class _KernelAttention(torch.autograd.Function):
    """Flash or memory-efficient attention: allocations of the CUDA kernels, no values."""

    @staticmethod
    def forward(ctx, query, key, value, backend, mask):
        b, h, s, _ = query.shape
        dv = value.shape[-1]
        out = query.new_empty((b, s, h, dv)).transpose(1, 2)
        rows = s if backend == "flash" else _round(s, EFF_LSE_ALIGN)
        lse = query.new_empty((b, h, rows), dtype=torch.float32)
        ctx.backend = backend
        storage = query.untyped_storage()  # one Python object per storage, for real and fake tensors
        ctx.fused_qkv = key.shape == query.shape and key.untyped_storage() is storage and value.untyped_storage() is storage
        ctx.save_for_backward(query, key, value, out, lse, *([mask] if mask is not None else []))
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, out, lse = ctx.saved_tensors[:5]
        b, h, s, d = query.shape
        hk, sk = key.shape[-3], key.shape[-2]
        f32 = torch.float32
        if ctx.backend == "flash":
            dq, dk, dv = _seq_layout(query), _seq_layout(key), _seq_layout(value)
            softmax_d = query.new_empty((b, h, _round(s, FLASH_SEQ_ROUND)), dtype=f32)
            head = _round(d, FLASH_HEAD_ROUND) if d <= 192 else FLASH_MAX_HEAD_DIM
            dq_accum = query.new_empty((b, _round(s, FLASH_SEQ_ROUND), h, head), dtype=f32)
            # grouped-query heads: dk, dv for every query head, then summed over the group
            expanded = [query.new_empty((b, sk, h, d)) for _ in range(2)] if hk != h else []
            del expanded, dq_accum, softmax_d
            return dq, dk, dv, None, None
        if ctx.fused_qkv:
            chunk = query.new_empty((b, s, 3, h, d))
            dq, dk, dv = (chunk.select(2, i).transpose(1, 2) for i in range(3))
        else:
            dq, dk, dv = _seq_layout(query), _seq_layout(key), _seq_layout(value)
        delta = query.new_empty((b, h, s), dtype=f32)
        work = None
        if query.dtype in LOW_PRECISION:  # dq accumulates in float32 for 16-bit outputs
            work = query.new_empty((b * h * _round(s, EFF_BLOCK_I) * _round(d, EFF_BLOCK_J),), dtype=f32)
        del delta, work
        grad_mask = None
        if len(ctx.saved_tensors) > 5 and ctx.needs_input_grad[4]:
            grad_mask = _like(ctx.saved_tensors[5])
        return dq, dk, dv, None, grad_mask


def cuda_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """``F.scaled_dot_product_attention`` with the memory behaviour of its CUDA kernels."""
    if attn_mask is not None and attn_mask.dtype == torch.bool:  # as SDPA's entry point converts it
        attn_mask = torch.zeros_like(attn_mask, dtype=query.dtype).masked_fill_(~attn_mask, float("-inf"))
    backend = sdpa_backend(query, key, value, attn_mask, enable_gqa)
    if backend == "math":
        return torch.ops.aten._scaled_dot_product_attention_math(
            query, key, value, attn_mask, dropout_p, is_causal, None, scale=scale, enable_gqa=enable_gqa)[0]
    return _KernelAttention.apply(query, key, value, backend, attn_mask)


class _NativeDropout(torch.autograd.Function):
    """``native_dropout`` on CUDA: keeps a bool mask; backward makes one tensor."""

    @staticmethod
    def forward(ctx, x, p):
        out = torch.empty_like(x)
        mask = torch.empty_like(x, dtype=torch.bool)
        ctx.save_for_backward(mask)
        return out

    @staticmethod
    def backward(ctx, grad):
        return torch.empty_like(grad), None


def cuda_dropout(input, p=0.5, training=True, inplace=False):
    """``F.dropout`` with the memory behaviour of CUDA's fused kernel."""
    if not training or p == 0 or input.numel() == 0:
        return input
    if p == 1:
        return input * 0
    return _NativeDropout.apply(input, p)


@contextlib.contextmanager
def cuda_kernels(enabled: bool = True):
    """Inside, SDPA and dropout allocate what their CUDA kernels allocate."""
    if not enabled:
        yield
        return
    saved = F.scaled_dot_product_attention, F.dropout
    F.scaled_dot_product_attention, F.dropout = cuda_sdpa, cuda_dropout
    try:
        yield
    finally:
        F.scaled_dot_product_attention, F.dropout = saved


__all__ = ["cuda_kernels", "cuda_sdpa", "cuda_dropout", "sdpa_backend"]
