"""The trainable parts of a causal LM the sampler toggles: decoder layers, embeddings, head.

Found from the module tree, never from assumed attribute paths: decoder layers through
:func:`planner.spec.find_decoder_layers`; embeddings are ``get_input_embeddings()`` plus every
other ``nn.Embedding`` outside the layers (GPT-2's ``wpe``); the head is
``get_output_embeddings()`` plus every remaining parameter outside the layers (the final norm).
With tied embeddings the head weight *is* the embedding weight: one parameter, trainable when
either part is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from planner.spec.arch import _unwrap, find_decoder_layers


def is_peft_model(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and callable(getattr(model, "get_base_model", None))


@dataclass
class ModelParts:
    """Parameters grouped by part; every list holds each parameter once."""

    layers_path: str
    layers: nn.ModuleList
    layer_params: list[list[nn.Parameter]]
    layer_param_names: list[list[str]]
    embedding_params: list[nn.Parameter] = field(default_factory=list)
    head_params: list[nn.Parameter] = field(default_factory=list)
    final_norm: nn.Module | None = None
    head: nn.Module | None = None
    adapters: bool = False

    @property
    def num_layers(self) -> int:
        return len(self.layers)


def _is_adapter_name(name: str) -> bool:
    return "lora_" in name or "adapter" in name


def find_parts(model: nn.Module) -> ModelParts:
    """Split ``model`` (a transformers causal LM or a peft wrapper of one) into its parts.

    On a peft model the layers' parameters are the adapters (what peft made trainable); on a
    plain model every parameter of a layer is.
    """
    base = _unwrap(model)
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

    seen: set[int] = set(in_layers)

    def take(module: nn.Module | None) -> list[nn.Parameter]:
        out = []
        if module is None:
            return out
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
        return out

    embeddings = take(base.get_input_embeddings())
    head_module = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    tied = head_module is not None and any(id(p) == id(q) for p in head_module.parameters() for q in embeddings)
    layer_modules = {id(m) for layer in layers for m in layer.modules()}
    for _, module in base.named_modules():
        if isinstance(module, nn.Embedding) and id(module) not in layer_modules and module is not head_module:
            embeddings += take(module)
    norm = None
    for _, module in base.named_modules():
        if id(module) in layer_modules or module is head_module:
            continue
        if "norm" in type(module).__name__.lower() or isinstance(module, nn.LayerNorm):
            norm = module  # the last norm outside the layers in module order is the final norm
    head = take(head_module) + take(norm)
    if tied:
        head = [p for p in head_module.parameters()] + head
    for _, p in base.named_parameters():
        if id(p) not in seen and not (adapters and not p.requires_grad):
            seen.add(id(p))
            head.append(p)
    return ModelParts(path, layers, layer_params, layer_names, embeddings, head, norm, head_module, adapters)
