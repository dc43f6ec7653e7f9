"""Which parameters train: decoder layers, embeddings, head, LoRA adapters.

The trainable-set rules for embeddings, head and tied weights live with the parts themselves
(:mod:`planner.spec.parts`); here:

- **LoRA** (``lora_rank=r``): peft adapters on every linear layer (``nn.Linear``, gpt2's
  ``Conv1D``) inside every decoder layer, ``lora_dropout=0``; base weights are frozen
  everywhere and only the adapters of the trainable layers train (a sampler switches layers
  without rebuilding adapters). Embeddings/head train in full when flagged.
"""

from __future__ import annotations

import contextlib
import re
from unittest import mock

from torch import nn
from torch._subclasses.fake_tensor import FakeTensor

from planner.spec.arch import find_decoder_layers
from planner.spec.parts import model_parts


def lora_targets(model: nn.Module) -> list[str]:
    """Leaf names of the linear modules inside the decoder layers (peft target_modules)."""
    # transformers: deferred until a model is adapted (seconds on top of torch)
    from transformers.pytorch_utils import Conv1D

    _, layers = find_decoder_layers(model)
    names = sorted(
        {name.rsplit(".", 1)[-1] for name, m in layers[0].named_modules() if isinstance(m, (nn.Linear, Conv1D))}
    )
    return names


def add_lora(model: nn.Module, rank: int, select=None) -> nn.Module:
    """Wrap ``model`` with peft LoRA adapters of rank ``rank`` on the linear layers of every decoder layer
    (all of them, or those ``select(names)`` keeps)."""
    from peft import LoraConfig, get_peft_model  # peft: deferred to LoRA plans (it imports transformers: seconds)

    path, _ = find_decoder_layers(model)
    targets = lora_targets(model)
    if select is not None:
        targets = select(targets)
    # a regex, so a same-named module outside the decoder layers is never adapted
    pattern = r".*" + re.escape(path) + r"\.\d+\..*\b(" + "|".join(map(re.escape, targets)) + ")"
    cfg = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        lora_dropout=0.0,
        target_modules=pattern,
        # a transformers model's config, which nn.Module.__getattr__ types as Tensor | Module
        fan_in_fan_out=model.config.model_type == "gpt2",  # type: ignore[union-attr]
    )
    with _moves_skipped_if_fake(model):
        return get_peft_model(model, cfg)


@contextlib.contextmanager
def _moves_skipped_if_fake(model: nn.Module):
    """Under FakeTensorMode ``Module.to`` swaps parameters and fails ("Couldn't swap Linear.weight").
    peft's moves there only match the base layer's device and dtype before it upcasts the adapters
    to float32 (``autocast_adapter_dtype``), so skipping them leaves the same float32 adapters."""
    if not any(isinstance(p, FakeTensor) for p in model.parameters()):
        yield
        return

    def unmoved(self, *args, **kwargs):
        return self

    with mock.patch.object(nn.Module, "to", unmoved):
        yield


def apply_trainable(
    model: nn.Module, layers: list[int], *, train_embeddings: bool, train_head: bool, lora: bool = False
) -> None:
    """Set ``requires_grad`` for a trainable set (see the module docstring for the conventions)."""
    parts = model_parts(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for i in layers:
        for name, p in parts.layers[i].named_parameters():
            if not lora or "lora_" in name:
                p.requires_grad_(True)
    for p in parts.embeddings:
        if train_embeddings or (train_head and any(p is t for t in parts.tied)):
            p.requires_grad_(True)
    for p in parts.head:
        if train_head:
            p.requires_grad_(True)
