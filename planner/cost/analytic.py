"""Analytic per-layer memory, where tracing is not possible; cross-checked against traces in tests.

Symbols (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
Models"): s sequence length, b micro-batch size, h hidden size, a attention heads, plus
I MLP intermediate size, h_kv = n_kv·d key/value width (GQA), e bytes per element, Φ parameters.
"""

from __future__ import annotations

FP32_BYTES = 4  # RMSNorm's rsqrt and SDPA's logsumexp are kept in float32


def korthikanti_activation_bytes(s: int, b: int, h: int, a: int) -> int:
    """Megatron GPT layer, 16-bit, no recomputation (Korthikanti et al. 2022, eq. 1): sbh(34 + 5as/h)."""
    return s * b * h * 34 + 5 * a * s * s * b


def llama_layer_params(h: int, inter: int, h_kv: int, qkv_bias: bool = False) -> int:
    """Φ of one Llama-style layer: q,o (h·h each), k,v (h·h_kv each), gate/up/down (h·I each), two RMSNorms (h each)."""
    return 2 * h * h + 2 * h * h_kv + 3 * h * inter + 2 * h + (h + 2 * h_kv if qkv_bias else 0)


def weight_bytes(params: int, e: int) -> int:
    """M_w = Φ·e."""
    return params * e


def gradient_bytes(params: int, e: int) -> int:
    """M_g = Φ·e (gradients in the parameter dtype)."""
    return params * e


def adamw_state_bytes(params: int, e: int, tensors: int = 0, step_bytes: int = FP32_BYTES) -> int:
    """M_opt = 2·Φ·e + step_bytes·(number of tensors): torch keeps m and v in the parameter dtype."""
    return 2 * params * e + step_bytes * tensors


def llama_trainable_layer_activation_bytes(s: int, b: int, h: int, a: int, inter: int, e: int = 4) -> int:
    """Bytes one trainable HF Llama layer keeps for backward (SDPA, GQA repeated k/v, no dropout, float32),
    its output included: sb(e(9h + 4I) + 4(2 + a)).

    9h: normalized input ×2, q, repeated k, repeated v, attention output, o_proj input, residual, layer
    output; 4I: gate, up, silu(gate), silu(gate)·up; 2 float32 rsqrt of the two RMSNorms and a
    float32 logsumexp per head from SDPA. Unlike Megatron's sbh(34 + 5as/h), no s² attention
    matrix is kept (SDPA recomputes it) and the MLP is SwiGLU with width I.
    """
    return s * b * (e * (9 * h + 4 * inter) + FP32_BYTES * (2 + a))
