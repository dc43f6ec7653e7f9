"""Target ``peft``: ``adapter_config.json`` for a LoRA on the plan's layers.

Written the way peft's ``PeftConfigMixin.save_pretrained`` writes it (``LoraConfig(...).to_dict()``,
sets as lists, ``json.dumps(indent=2, sort_keys=True)``), so ``LoraConfig.from_pretrained(DIR)``
loads it. ``layers_to_transform`` (list of layer indices) and ``layers_pattern`` (the name of the
decoder-layer list, the last component of ``plan.layers_attribute``: ``layers``, ``h``) select
the layers; ``target_modules`` are the linear maps found inside a decoder layer;
``modules_to_save`` the embeddings/head modules the plan trains. peft requires
``target_modules`` to be a list when ``layers_to_transform`` is set.
"""

from __future__ import annotations

import dataclasses
import json

from planner.export.base import Export, Exporter, candidates, fixed_layers, model_id, register_exporter, scorer_kind
from planner.export.names import arch_names

DEFAULT_RANK = 8  # peft's LoraConfig default r


def _lora_fields() -> frozenset[str]:
    from peft import LoraConfig

    return frozenset(f.name for f in dataclasses.fields(LoraConfig))


@register_exporter("peft")
class PeftExporter(Exporter):
    description = "peft LoraConfig (adapter_config.json) with layers_to_transform"

    @property
    def allowed_keys(self) -> frozenset[str]:  # peft's own field list, read from the installed peft
        return _lora_fields()

    def render(self, plan) -> Export:
        from peft import LoraConfig

        names = arch_names(plan)
        lost: list[str] = []
        kind = scorer_kind(plan)
        if kind == "static":
            layers = fixed_layers(plan)
        else:
            layers = candidates(plan)
            lost.append(f"dynamic plan ({plan.active_layers} of {plan.num_layers} layers re-drawn every {plan.period} steps by {plan.scorer!r}): "
                        f"peft's layers_to_transform is fixed; nearest: LoRA on every layer the plan may draw, {layers[0]}..{layers[-1]}, all at once")
        rank = plan.lora_rank or DEFAULT_RANK
        if not plan.lora_rank:
            lost.append(f"full fine-tuning of the chosen layers: peft trains low-rank adapters; nearest: LoRA r={rank} on every linear map in them")
        save = []
        if plan.train_embeddings:
            save += names.embedding_modules
        if plan.train_head:
            save += names.head_modules
        config = LoraConfig(
            r=rank,
            lora_alpha=2 * rank,
            target_modules=list(names.layer_linear_modules),
            layers_to_transform=layers,
            layers_pattern=plan.layers_attribute.rsplit(".", 1)[-1],
            modules_to_save=list(dict.fromkeys(save)) or None,
            task_type="CAUSAL_LM",
            base_model_name_or_path=model_id(plan),
        )
        data = config.to_dict()
        data = {k: sorted(v) if isinstance(v, set) else v for k, v in data.items()}
        return Export(self.name, {"adapter_config.json": json.dumps(data, indent=2, sort_keys=True) + "\n"}, lost)

    def keys(self, filename: str, text: str) -> set[str]:
        return set(json.loads(text))
