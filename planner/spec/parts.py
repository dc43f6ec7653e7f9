"""The parts of a causal LM that train or freeze: decoder layers, embeddings, head. One rule, used by the
cost model (which parameters a trainable set turns on), the layer sampler (which it toggles) and the
exporters (the parameter names a trainer's config needs).

Found from the module tree, never from assumed attribute paths: decoder layers through
:func:`planner.spec.find_decoder_layers`;

- **embeddings**: ``get_input_embeddings()`` and every other ``nn.Embedding`` outside the decoder layers
  (gpt2's ``wpe``);
- **head**: every other parameter outside the decoder layers: the output projection and the final norm
  (``norm``/``ln_f``);
- **tied embeddings** (qwen2, gemma, gpt2): the output projection IS the input embedding, one tensor,
  listed once in ``embeddings`` and once in ``tied``; it trains when the embeddings OR the head train
  (training the head weight means training the embedding matrix); the final norm follows the head alone.
- **adapters** (a peft model): a layer's parameters are its adapters (what peft made trainable).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from torch import nn

from planner.spec.arch import find_decoder_layers, unwrap_peft

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def is_peft_model(model: nn.Module) -> bool:
    """Whether ``model`` is a peft wrapper (``PeftModel``)."""
    return hasattr(model, "peft_config") and callable(getattr(model, "get_base_model", None))


def _is_adapter_name(name: str) -> bool:
    return "lora_" in name or "adapter" in name


@dataclass
class ModelParts:
    """Parameters grouped by part. ``head`` excludes a weight tied to the embeddings (it is in ``tied``)."""

    layers_path: str  # where the decoder layers live, e.g. "model.layers"
    layers: nn.ModuleList
    layer_params: list[list[nn.Parameter]]  # per layer: its parameters (its adapters on a peft model)
    layer_param_names: list[list[str]]
    embeddings: list[nn.Parameter]
    head: list[nn.Parameter]
    tied: list[nn.Parameter]  # the head weight that is also an embedding weight
    final_norm: nn.Module | None = None
    head_module: nn.Module | None = None
    adapters: bool = False

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def head_params(self) -> list[nn.Parameter]:
        """What training the head turns on: the tied weight (if any), then the head's own parameters."""
        return self.tied + self.head


def model_parts(model: nn.Module) -> ModelParts:
    """Split ``model`` (a transformers causal LM or a peft wrapper of one) into its parts."""
    base = cast("PreTrainedModel", unwrap_peft(model))  # the transformers model (a peft model's wrapped one)
    path, layers = find_decoder_layers(model)
    adapters = is_peft_model(model)
    layer_params, layer_names = [], []
    in_layers: set[int] = set()
    for layer in layers:
        params, names = [], []
        for name, p in layer.named_parameters():
            in_layers.add(id(p))
            if adapters and not (p.requires_grad or _is_adapter_name(name)):
                continue
            params.append(p)
            names.append(name)
        layer_params.append(params)
        layer_names.append(names)

    layer_modules = {id(m) for layer in layers for m in layer.modules()}
    emb_modules = [base.get_input_embeddings()]
    emb_modules += [
        m
        for m in base.modules()
        if isinstance(m, nn.Embedding) and m is not emb_modules[0] and id(m) not in layer_modules
    ]
    embeddings = list({id(p): p for m in emb_modules for p in m.parameters()}.values())
    emb_ids = {id(p) for p in embeddings}
    head_module = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    norm = None
    for module in base.modules():
        if id(module) in layer_modules or module is head_module:
            continue
        if "norm" in type(module).__name__.lower() or isinstance(module, nn.LayerNorm):
            norm = module  # the last norm outside the layers in module order is the final norm
    tied = [p for p in head_module.parameters() if id(p) in emb_ids] if head_module is not None else []
    head, seen = [], in_layers | emb_ids
    # the output projection first, then the final norm, then anything else outside the layers
    for source in (head_module, norm, base):
        for p in source.parameters() if source is not None else ():
            if id(p) not in seen:
                seen.add(id(p))
                head.append(p)
    return ModelParts(path, layers, layer_params, layer_names, embeddings, head, tied, norm, head_module, adapters)
