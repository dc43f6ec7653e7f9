"""Parameter and module names of a plan's architecture, read from a model built on the meta device.

Trainers name what to unfreeze by parameter name (axolotl ``unfrozen_parameters``), by leaf
module name (LLaMA-Factory ``freeze_extra_modules``), by module-path suffix (peft
``modules_to_save``). Names come from the real module tree, grouped exactly as the layer
sampler groups them (:func:`planner.spec.parts.model_parts`), never from a table of
assumed names. Building on the meta device allocates nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from planner.errors import PlannerError

if TYPE_CHECKING:
    from planner.plan import Plan


@dataclass(frozen=True)
class ArchNames:
    """Names in one architecture (relative to the ``*ForCausalLM`` module), from a 2-layer copy."""

    layers_path: str
    embedding_params: tuple[str, ...]  # e.g. ("model.embed_tokens.weight",)
    head_params: tuple[str, ...]  # output embedding + final norm; the shared weight excluded when tied
    tied: bool  # the output embedding is the input embedding's weight
    input_embedding: str  # module path of get_input_embeddings(), e.g. "model.embed_tokens"
    output_embedding: str | None  # module path of get_output_embeddings(), e.g. "lm_head"
    layer_linear_modules: tuple[str, ...]  # leaf names of the linear maps inside a decoder layer
    conv1d: bool  # the layers' linear maps are GPT-2 Conv1D (weights stored in x out)
    linear_shapes: tuple[tuple[int, int], ...]  # (in, out) features of each linear map of one decoder layer
    layer_numels: tuple[int, ...]  # element count of each parameter of the largest decoder layer
    numel: tuple[tuple[str, int], ...]  # (parameter name, element count) of every parameter outside the layers
    param_names: tuple[str, ...]  # named_parameters() of the 2-layer copy, shared weights once
    resolved: bool  # False: the plan's model was not found; names come from the model type's default config
    checkpoint_dtype: str | None  # the dtype the config says the checkpoint is stored in, when it says

    def prefixes(self, params: tuple[str, ...]) -> tuple[str, ...]:
        """Owning-module prefixes (``model.embed_tokens.``) of parameter names, in order."""
        return tuple(dict.fromkeys(p.rsplit(".", 1)[0] + "." for p in params))

    def modules(self, params: tuple[str, ...]) -> tuple[str, ...]:
        """Owning-module paths (``model.embed_tokens``) of parameter names, in order."""
        return tuple(p[:-1] for p in self.prefixes(params))

    def module_numel(self, module: str) -> int:
        """Elements of the parameters directly owned by module path ``module``."""
        return sum(n for name, n in self.numel if name.rsplit(".", 1)[0] == module)


def resolve_config(plan: "Plan"):
    """``(config, resolved)``: the plan's own config when it resolves offline (preset, local path,
    cached hub id), else the model type's default config and False."""
    # transformers, planner.spec (torch): deferred, the exporters load with 'planner --help'
    from transformers import AutoConfig

    from planner.spec import list_presets, load_spec

    key = plan.model.strip().lower().replace("_", "-")
    presets = list_presets()
    hub_ids = {str(v.get("hub_id", "")).lower() for v in presets.values()}
    if key in presets or key in hub_ids or Path(plan.model).expanduser().exists():
        try:
            cfg = load_spec(plan.model).config
            if cfg.model_type == plan.model_type:
                return cfg, True
        except Exception:  # noqa: BLE001 - any failure: the model is not found
            pass
    if plan.model.count("/") == 1 and not plan.model.startswith((".", "/", "~")):
        try:  # a hub id already in the local cache; never the network
            cfg = AutoConfig.from_pretrained(plan.model, local_files_only=True)
            if cfg.model_type == plan.model_type:
                return cfg, True
        except Exception:  # noqa: BLE001 - not cached
            pass
    return AutoConfig.for_model(plan.model_type), False


def _dtype_name(cfg) -> str | None:
    dtype = getattr(cfg, "dtype", None)
    if dtype is None:
        return None
    return str(dtype).replace("torch.", "")


@lru_cache(maxsize=32)
def _names(model_type: str, config_json: str) -> dict:
    # torch, transformers, planner.spec: deferred, the exporters load with 'planner --help'
    import torch
    from torch import nn
    from transformers import AutoConfig, AutoModelForCausalLM

    from planner.spec.parts import model_parts

    data = json.loads(config_json)
    data.pop("model_type", None)
    cfg = AutoConfig.for_model(model_type, **data)
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        if hasattr(cfg, attr) and isinstance(getattr(cfg, attr), int):
            setattr(cfg, attr, 2)  # names do not depend on depth; 2 keeps every layer type distinct from "the list"
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = list(cfg.layer_types)[:2] + [cfg.layer_types[-1]] * max(0, 2 - len(cfg.layer_types))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    parts = model_parts(model)
    name_of: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        name_of.setdefault(id(p), name)
    module_name = {id(m): n for n, m in model.named_modules()}
    emb = tuple(name_of[id(p)] for p in parts.embeddings)
    emb_ids = {id(p) for p in parts.embeddings}
    head = tuple(name_of[id(p)] for p in parts.head_params if id(p) not in emb_ids)
    tied = any(id(p) in emb_ids for p in parts.head_params)
    out_emb = model.get_output_embeddings()
    linear, shapes, conv1d = [], [], False
    for name, module in parts.layers[0].named_modules():
        if name and isinstance(module, nn.Linear):
            linear.append(name.rsplit(".", 1)[-1])
            shapes.append((module.in_features, module.out_features))
        elif name and type(module).__name__ == "Conv1D":  # weight stored (in, out)
            linear.append(name.rsplit(".", 1)[-1])
            shapes.append(tuple(module.weight.shape))
            conv1d = True
    in_layers = {id(p) for layer in parts.layers for p in layer.parameters()}
    return dict(
        layers_path=parts.layers_path,
        embedding_params=emb,
        head_params=head,
        tied=tied,
        input_embedding=module_name[id(model.get_input_embeddings())],
        output_embedding=module_name.get(id(out_emb)) if out_emb is not None else None,
        layer_linear_modules=tuple(dict.fromkeys(linear)),
        conv1d=conv1d,
        linear_shapes=tuple(shapes),
        layer_numels=max((tuple(p.numel() for p in layer.parameters()) for layer in parts.layers), key=sum),
        numel=tuple((n, p.numel()) for n, p in model.named_parameters() if id(p) not in in_layers),
        param_names=tuple(n for n, _ in model.named_parameters()),
    )


def arch_names(plan: "Plan") -> ArchNames:
    """Names of ``plan``'s architecture (cached per config)."""
    try:
        cfg, resolved = resolve_config(plan)
        names = _names(plan.model_type, cfg.to_json_string(use_diff=True))
    except PlannerError:
        raise
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds for unknown or odd architectures
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PlannerError(
            f"plan model_type must be a causal LM transformers can build, but {plan.model_type!r} failed: {first}"
        ) from None
    if names["layers_path"] != plan.layers_attribute:
        raise PlannerError(
            f"plan layers_attribute must match the model's decoder layers, but the plan says "
            f"{plan.layers_attribute!r} and a {plan.model_type} model holds them at {names['layers_path']!r}"
        )
    return ArchNames(**names, resolved=resolved, checkpoint_dtype=_dtype_name(cfg) if resolved else None)
