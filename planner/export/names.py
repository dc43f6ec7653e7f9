"""Parameter and module names of a plan's architecture, read from a model built on the meta device.

Trainers name what to unfreeze by parameter name (axolotl ``unfrozen_parameters``), by leaf
module name (LLaMA-Factory ``freeze_extra_modules``, peft ``target_modules`` and
``modules_to_save``). Names come from the real module tree, grouped exactly as the layer
sampler groups them (:func:`planner.sampling.parts.find_parts`), never from a table of
assumed names. Building on the meta device allocates nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from planner.plan import Plan


@dataclass(frozen=True)
class ArchNames:
    """Names in one architecture (relative to the ``*ForCausalLM`` module)."""

    layers_path: str
    embedding_params: tuple[str, ...]  # e.g. ("model.embed_tokens.weight",)
    head_params: tuple[str, ...]  # output embedding + final norm; shared ones excluded when tied
    tied: bool
    embedding_modules: tuple[str, ...]  # leaf names, e.g. ("embed_tokens",)
    head_modules: tuple[str, ...]  # leaf names of modules owning head_params, e.g. ("lm_head", "norm")
    # with tied embeddings the output embedding is the input one: it trains with the embeddings
    layer_linear_modules: tuple[str, ...]  # leaf names of the linear maps inside a decoder layer

    def prefixes(self, params: tuple[str, ...]) -> tuple[str, ...]:
        """Owning-module prefixes (``model.embed_tokens.``) of parameter names, in order."""
        return tuple(dict.fromkeys(p.rsplit(".", 1)[0] + "." for p in params))


def _config_for(plan: "Plan"):
    """The plan's own config when it resolves offline (preset, local path, cached hub id), else the
    model type's default config (same names; only ``tie_word_embeddings`` may differ from the real model)."""
    from transformers import AutoConfig

    from planner.spec import list_presets, load_spec

    key = plan.model.strip().lower().replace("_", "-")
    presets = list_presets()
    hub_ids = {str(v.get("hub_id", "")).lower() for v in presets.values()}
    if key in presets or key in hub_ids or Path(plan.model).expanduser().exists():
        try:
            cfg = load_spec(plan.model).config
            if cfg.model_type == plan.model_type:
                return cfg
        except Exception:  # noqa: BLE001 - any failure: fall back to the model type's default config
            pass
    if plan.model.count("/") == 1 and not plan.model.startswith((".", "/", "~")):
        try:  # a hub id already in the local cache; never the network
            cfg = AutoConfig.from_pretrained(plan.model, local_files_only=True)
            if cfg.model_type == plan.model_type:
                return cfg
        except Exception:  # noqa: BLE001 - not cached: fall back
            pass
    return AutoConfig.for_model(plan.model_type)


@lru_cache(maxsize=32)
def _names(model_type: str, config_json: str) -> ArchNames:
    import json

    import torch
    from torch import nn
    from transformers import AutoConfig, AutoModelForCausalLM

    from planner.sampling.parts import find_parts

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
    parts = find_parts(model)
    name_of = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        name_of.setdefault(id(p), name)
    emb = tuple(name_of[id(p)] for p in parts.embedding_params)
    emb_ids = {id(p) for p in parts.embedding_params}
    head = tuple(name_of[id(p)] for p in parts.head_params if id(p) not in emb_ids)
    tied = any(id(p) in emb_ids for p in parts.head_params)
    leaf = lambda n: n.rsplit(".", 2)[-2]  # noqa: E731 - "model.embed_tokens.weight" -> "embed_tokens"
    linear = []
    for name, module in parts.layers[0].named_modules():
        if name and (isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"):
            linear.append(name.rsplit(".", 1)[-1])
    return ArchNames(
        layers_path=parts.layers_path,
        embedding_params=emb,
        head_params=head,
        tied=tied,
        embedding_modules=tuple(dict.fromkeys(leaf(n) for n in emb)),
        head_modules=tuple(dict.fromkeys(leaf(n) for n in head)),
        layer_linear_modules=tuple(dict.fromkeys(linear)),
    )


def arch_names(plan: "Plan") -> ArchNames:
    """Names of ``plan``'s architecture (cached per config)."""
    from planner.errors import PlannerError

    try:
        cfg = _config_for(plan)
        names = _names(plan.model_type, cfg.to_json_string(use_diff=True))
    except PlannerError:
        raise
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds for unknown or odd architectures
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PlannerError(f"plan model_type must be a causal LM transformers can build, but {plan.model_type!r} failed: {first}") from None
    if names.layers_path != plan.layers_attribute:
        raise PlannerError(f"plan layers_attribute must match the model's decoder layers, but the plan says "
                           f"{plan.layers_attribute!r} and a {plan.model_type} model holds them at {names.layers_path!r}")
    return names
