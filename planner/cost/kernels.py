"""CUDA kernels as a trace on CPU must count them: attention (SDPA) and dropout.

A trace runs on CPU, where ``F.scaled_dot_product_attention`` and ``F.dropout`` keep other
tensors than on a GPU. Under :func:`cuda_kernels` both are replaced by functions that allocate
exactly the tensors the CUDA kernels of torch 2.x allocate, keep and free (values are not
computed: memory does not depend on them), so a CPU or FakeTensor trace counts CUDA bytes.

SDPA dispatch on CUDA, measured on an H200 with torch 2.11 (the kernels the profiler names, the
bytes ``memory_allocated`` shows; tests/fixtures/gpu-truth/h200-sdpa.json):

- **fused 16-bit** (cuDNN's flash kernels on Hopper, flash-attention elsewhere): float16/bfloat16,
  with or without a mask, grouped-query heads allowed. Keeps the output (b, s, h, d), a float32
  log-sum-exp per row and head (b, h, s), a Philox seed and offset on the device (two 8-byte
  tensors) and the additive mask when one is given; dropout is RNG state, no mask tensor.
  Backward: dq, dk, dv like q, k, v; a float32 dq accumulator (b, s, h, d) and ``softmax_d``
  (b, h, s); with grouped-query heads dk/dv expanded to every query head (b, s, h, d) before the
  sum over the group. When no input needs a gradient (a frozen layer below every trained one),
  ``should_compute_logsumexp`` in ``attention.cpp`` is false and cuDNN allocates no log-sum-exp
  (flash-attention, off Hopper, would still make one: a transient of b·h·s floats).
- **memory-efficient** (cutlass ``fmha``): float32 with equal query and key/value heads, masks
  allowed. Keeps the output and a float32 log-sum-exp (b, h, s32) (s32: s rounded up to 32), made
  with no rows when no input needs a gradient.
  Backward: dq/dk/dv (one (b, s, 3, h, d) chunk when q, k, v are views of one tensor, as gpt2's
  fused ``c_attn``), a float32 workspace (b, h, s64·d64 + s64) and ``delta`` (b, h, s).
- **math** otherwise (float32 with grouped-query heads: the fused kernel needs 16-bit, the
  memory-efficient one equal heads): the composite ``_scaled_dot_product_attention_math``
  (``attention.cpp``), written out here because CPU runs two of its parts differently: the
  boolean causal mask becomes an additive one, k and v are repeated to every query head, and the
  (b, h, s, s) scores go through ``_safe_softmax``, which CUDA computes as softmax plus an
  all-masked-row check (a bool (b, h, s, s) and a (b, h, s, 1) temporary) where CPU has one
  kernel; its backward holds one more (b, h, s, s) buffer than the CPU one (the allocator
  history of an H200, tests/fixtures/gpu-truth/README.md).

Dropout on CUDA is the fused ``native_dropout``: the output and a bool mask (1 byte per
element) are kept, where CPU keeps a noise tensor of the input's dtype.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from planner.cost.reductions import CudaReductions

FUSED_MAX_HEAD_DIM = 256
EFF_LSE_ALIGN = 32  # memory-efficient forward pads the log-sum-exp rows to 32 (kAlignLSE)
EFF_BLOCK = 64  # memory-efficient float32 backward tile: its workspace rounds s and d up to 64
RNG_STATE_TENSORS = 2  # the fused kernel's Philox seed and offset, int64 scalars on the device
LOW_PRECISION = (torch.float16, torch.bfloat16)


def _round(n: int, k: int) -> int:
    return -(-n // k) * k


def sdpa_backend(query, key, value, attn_mask=None, enable_gqa=False) -> str:
    """The kind of kernel torch's CUDA SDPA runs: ``fused`` (16-bit), ``efficient`` or ``math`` (see module doc)."""
    d = query.shape[-1]
    if query.dtype in LOW_PRECISION and d <= FUSED_MAX_HEAD_DIM and value.shape[-1] == d:
        return "fused"
    if query.shape[-3] == key.shape[-3] and query.dtype in LOW_PRECISION + (torch.float32,):
        return "efficient"
    return "math"


def _seq_layout(t: torch.Tensor) -> torch.Tensor:
    """A new (b, s, h, d) tensor, returned as the (b, h, s, d) view SDPA gives back."""
    b, h, s, d = t.shape
    return t.new_empty((b, s, h, d)).transpose(1, 2)


def _like(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(t)


class _KernelAttention(torch.autograd.Function):
    """Fused or memory-efficient attention: the allocations of the CUDA kernels, no values."""

    @staticmethod
    def forward(ctx, query, key, value, backend, mask, compute_log_sumexp):
        b, h, s, _ = query.shape
        dv = value.shape[-1]
        out = query.new_empty((b, s, h, dv)).transpose(1, 2)
        rows = s if backend == "fused" else _round(s, EFF_LSE_ALIGN)
        # without it, cuDNN allocates no softmax stats and the memory-efficient kernel a (b, h, 0) tensor (no block)
        lse = query.new_empty((b, h, rows if compute_log_sumexp else 0), dtype=torch.float32)
        rng = [query.new_empty((), dtype=torch.int64) for _ in range(RNG_STATE_TENSORS)] if backend == "fused" else []
        ctx.backend = backend
        storage = query.untyped_storage()  # one Python object per storage, for real and fake tensors
        ctx.fused_qkv = (
            key.shape == query.shape and key.untyped_storage() is storage and value.untyped_storage() is storage
        )
        ctx.has_mask = mask is not None
        ctx.save_for_backward(query, key, value, out, lse, *([mask] if mask is not None else []), *rng)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value = ctx.saved_tensors[:3]
        b, h, s, d = query.shape
        hk, sk = key.shape[-3], key.shape[-2]
        f32 = torch.float32
        if ctx.backend == "fused":
            dq, dk, dv = _seq_layout(query), _seq_layout(key), _seq_layout(value)
            dq_accum = query.new_empty((b, s, h, d), dtype=f32)
            softmax_d = query.new_empty((b, h, s), dtype=f32)
            # grouped-query heads: dk, dv for every query head, then summed over the group
            expanded = [query.new_empty((b, sk, h, d)) for _ in range(2)] if hk != h else []
            del expanded, dq_accum, softmax_d
        else:
            if ctx.fused_qkv:
                chunk = query.new_empty((b, s, 3, h, d))
                dq, dk, dv = (chunk.select(2, i).transpose(1, 2) for i in range(3))
            else:
                dq, dk, dv = _seq_layout(query), _seq_layout(key), _seq_layout(value)
            rows = _round(s, EFF_BLOCK)
            work = query.new_empty((b * h * (rows * _round(d, EFF_BLOCK) + rows),), dtype=f32)
            delta = query.new_empty((b, h, s), dtype=f32)
            del work, delta
        return dq, dk, dv, None, None, None


class _SafeSoftmax(torch.autograd.Function):
    """``_safe_softmax`` as CUDA runs it (see the module doc)."""

    @staticmethod
    def forward(ctx, scores):
        out = torch.softmax(scores, -1)
        masked = scores.eq(float("-inf"))
        rows = masked.all(-1, keepdim=True)
        out.masked_fill_(rows, torch.zeros((), dtype=out.dtype))
        del rows, masked
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        held = torch.empty_like(grad)  # the buffer CUDA's backward holds beside the softmax gradient
        grad_in = torch._softmax_backward_data(grad, out, -1, out.dtype)
        del held
        return grad_in


def _math_sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa):
    """``_scaled_dot_product_attention_math`` op by op, as CUDA runs it."""
    scale = 1 / math.sqrt(query.size(-1)) if scale is None else scale
    root = math.sqrt(scale)  # q and k are each scaled by sqrt(scale) for stability
    q = query * root
    if is_causal:
        rows, cols = query.size(-2), key.size(-2)
        allowed = torch.ones(rows, cols, dtype=torch.bool).tril()
        attn_mask = torch.where(
            allowed, torch.zeros((), dtype=query.dtype), torch.full((), float("-inf"), dtype=query.dtype)
        )
        del allowed
    if enable_gqa and key.size(-3) != query.size(-3):
        repeat = query.size(-3) // key.size(-3)
        key, value = key.repeat_interleave(repeat, dim=-3), value.repeat_interleave(repeat, dim=-3)
    scores = q @ (key.transpose(-2, -1) * root)
    if attn_mask is not None:
        scores.add_(attn_mask)
    probs = _SafeSoftmax.apply(scores)
    del scores
    if dropout_p > 0:
        probs = cuda_dropout(probs, dropout_p)
    out = probs @ value
    del q, key, value, attn_mask
    return out


def cuda_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """``F.scaled_dot_product_attention`` with the memory behaviour of its CUDA kernels."""
    if torch.is_autocast_enabled("cpu"):
        # the trace runs CUDA's autocast as CPU autocast; SDPA is on both lower-precision lists, and
        # replacing the Python function skips the aten op where autocast casts its inputs
        low = torch.get_autocast_dtype("cpu")
        query, key, value = (t.to(low) if t.is_floating_point() else t for t in (query, key, value))
        if attn_mask is not None and attn_mask.is_floating_point():
            attn_mask = attn_mask.to(low)
    if attn_mask is not None and attn_mask.dtype == torch.bool:  # as SDPA's entry point converts it
        attn_mask = torch.zeros_like(attn_mask, dtype=query.dtype).masked_fill_(~attn_mask, float("-inf"))
    backend = sdpa_backend(query, key, value, attn_mask, enable_gqa)
    if backend == "math":
        return _math_sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    # attention.cpp's should_compute_logsumexp: the log-sum-exp is kept for a backward only
    compute_log_sumexp = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
    return _KernelAttention.apply(query, key, value, backend, attn_mask, compute_log_sumexp)


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
    """Inside, SDPA, dropout and reductions (:mod:`planner.cost.reductions`) allocate what their CUDA
    kernels allocate."""
    if not enabled:
        yield
        return
    saved = F.scaled_dot_product_attention, F.dropout
    F.scaled_dot_product_attention, F.dropout = cuda_sdpa, cuda_dropout
    try:
        with CudaReductions():
            yield
    finally:
        F.scaled_dot_product_attention, F.dropout = saved


__all__ = ["cuda_kernels", "cuda_sdpa", "cuda_dropout", "sdpa_backend"]
