"""What the planner builds: a decoder-only causal LM (:func:`check_causal_lm` refuses anything else), with its
modules made directly in a chosen dtype (:func:`default_dtype`).

A leaf of :mod:`planner.spec`: :mod:`planner.spec.model` (configs from presets, files, the hub) and
:mod:`planner.spec.gguf` (GGUF files converted to model directories) both use it.
"""

from __future__ import annotations

import contextlib

import torch

from planner.errors import PlannerError


def check_causal_lm(config, name: str, flag: str = "--model") -> None:
    """Refuse anything but a decoder-only causal LM (BERT-like encoders, encoder-decoders); ``flag`` named it."""
    # transformers: deferred until a config is checked (seconds on top of torch)
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", None)
    if getattr(config, "is_encoder_decoder", False):
        kind = "an encoder-decoder model"
    elif model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        kind = "an encoder-only (bidirectional, masked-LM) model"
    elif model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        kind = "not a causal LM transformers can build"
    else:
        return
    raise PlannerError(
        f"{flag} must be a decoder-only causal LM (Llama, GPT-2, Qwen2, ...), but {name!r} has "
        f"model_type {model_type!r}: {kind}"
    )


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Build modules directly in ``dtype`` (``model.to`` fails under FakeTensorMode)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)
