"""Suppress decoder layers for a forward pass (IST's rollouts) by scaling what they add.

Full-layer training: a suppressed layer's residual update is scaled,
``out = h + α·(layer(h) − h)``; with LoRA adapters the adapter's output is scaled (α·B(A(x))),
so the frozen base weights still act. Forward hooks only: nothing in the model changes.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def _hidden_input(args: tuple, kwargs: dict) -> torch.Tensor:
    if args and torch.is_tensor(args[0]):
        return args[0]
    return kwargs["hidden_states"]


def _scale_residual(alpha: float):
    def hook(module, args, kwargs, output):
        h = _hidden_input(args, kwargs)
        out = output[0] if isinstance(output, tuple) else output
        scaled = h + alpha * (out - h)
        if isinstance(output, tuple):
            return (scaled,) + tuple(output[1:])
        return scaled

    return hook


def _scale_output(alpha: float):
    def hook(module, args, output):
        return output * alpha

    return hook


def adapter_outputs(layer: nn.Module) -> list[nn.Module]:
    """The modules whose output is an adapter's contribution (peft's ``lora_B`` linears)."""
    found: list[nn.Module] = []
    for name, module in layer.named_modules():
        leaf = name.rsplit(".", 2)
        if any(part == "lora_B" for part in leaf) and isinstance(module, nn.Linear):
            found.append(module)
    return found


@contextlib.contextmanager
def suppressed(layers: nn.ModuleList, indices: list[int], alpha: float = 0.25, *, adapters: bool = False):
    """Within the block, layers ``indices`` contribute ``alpha`` times their usual update."""
    handles = []
    try:
        for i in indices:
            if adapters:
                for module in adapter_outputs(layers[i]):
                    handles.append(module.register_forward_hook(_scale_output(alpha)))
            else:
                handles.append(layers[i].register_forward_hook(_scale_residual(alpha), with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()
