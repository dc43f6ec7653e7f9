"""Target ``peft``: ``adapter_config.json`` for a LoRA on the plan's layers.

Written the way peft's ``PeftConfigMixin.save_pretrained`` writes it (``LoraConfig(...).to_dict()``,
sets as lists, ``json.dumps(indent=2, sort_keys=True)``), so ``LoraConfig.from_pretrained(DIR)``
loads it. Rules read in peft 0.21:
- ``layers_to_transform`` (layer indices) with ``layers_pattern`` (the last component of
  ``plan.layers_attribute``: ``layers``, ``h``) select the layers; ``target_modules`` (a list
  when ``layers_to_transform`` is set) are the linear maps found inside a decoder layer;
  ``fan_in_fan_out`` is true for GPT-2's Conv1D.
- ``modules_to_save`` entries match module paths with ``key.endswith(entry)``
  (``utils/other.py`` ``_set_trainable``), so they are written as full paths (``model.norm``,
  never ``norm``, which ends every layer's ``input_layernorm``). Each matched module is wrapped
  in a ``ModulesToSaveWrapper`` that trains a copy beside the frozen original.
- A tied output embedding keeps using the original weight unless ``ensure_weight_tying`` is
  set and the entry's last component is one of ``EMBEDDING_LAYER_NAMES`` (``embed_tokens``,
  ``lm_head``): peft then wraps the input embedding and ties the head to its copy.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from planner.export.base import (
    lever_items,
    DTYPE_BYTES,
    FP32_BYTES,
    Export,
    Exporter,
    candidates,
    fixed_layers,
    active_layer_count,
    model_id,
    model_loss,
    outside_params,
    register_exporter,
    scorer_kind,
    state_bytes,
)
from planner.export.names import arch_names

DEFAULT_RANK = 8  # peft's LoraConfig default r
TIE_NAMES = ("embed_tokens", "lm_head")  # peft.utils.constants.EMBEDDING_LAYER_NAMES


def _lora_fields() -> set[str]:
    from peft import LoraConfig  # peft (torch, transformers): deferred, the exporters load with 'planner --help'

    return {f.name for f in dataclasses.fields(LoraConfig)}


@register_exporter("peft")
class PeftExporter(Exporter):
    description = "peft LoraConfig (adapter_config.json) with layers_to_transform"

    def render(self, plan) -> Export:
        from peft import LoraConfig  # peft (torch, transformers): deferred, the exporters load with 'planner --help'

        names = arch_names(plan)
        lost: list[str] = model_loss(plan)
        fixed = fixed_layers(plan)
        if fixed is not None:  # a static plan (scorer_kind)
            layers = fixed
        else:
            layers = candidates(plan)
            lost.append(
                f"dynamic plan ({plan.active_layers} of {plan.num_layers} layers re-drawn every {plan.period} steps by {plan.scorer!r}): "
                f"peft's layers_to_transform is fixed; nearest: LoRA on every layer the plan may draw, {layers[0]}..{layers[-1]}, all at once"
            )
        rank = plan.lora_rank or DEFAULT_RANK
        if scorer_kind(plan) != "static" and plan.lora_rank:
            more = len(layers) - active_layer_count(plan)
            # peft keeps adapters in float32; each trains with its gradient and optimizer state
            adapters = [(rank * n, FP32_BYTES) for shape in names.linear_shapes for n in shape] * more
            extra = state_bytes(plan, adapters) + sum(n * e for n, e in adapters)
            lost.append(
                f"memory: the adapters of {more} more layers train at once: +{extra:,} bytes of gradients and optimizer state that the plan's peak does not count"
            )
        if not plan.lora_rank:
            lost.append(
                f"full fine-tuning of the chosen layers: peft trains low-rank adapters; nearest: LoRA r={rank} on every linear map in them"
            )
        save, tie = self._modules_to_save(plan, names, lost)
        tying: dict[str, Any] = {"ensure_weight_tying": tie} if tie else {}  # a keyword older peft lacks
        levers = lever_items(plan, self.name)  # target_modules of --lora-targets; lost lines for the rest
        lost += levers.lost
        config = LoraConfig(
            r=rank,
            lora_alpha=2 * rank,
            target_modules=levers.keys.get("target_modules", list(names.layer_linear_modules)),
            layers_to_transform=layers,
            layers_pattern=plan.layers_attribute.rsplit(".", 1)[-1],
            fan_in_fan_out=names.conv1d,
            modules_to_save=save or None,
            **tying,
            task_type="CAUSAL_LM",
            base_model_name_or_path=model_id(plan),
        )
        data = config.to_dict()
        data = {k: sorted(v) if isinstance(v, set) else v for k, v in data.items()}
        return Export(self.name, {"adapter_config.json": json.dumps(data, indent=2, sort_keys=True) + "\n"}, lost)

    @staticmethod
    def _modules_to_save(plan, names, lost: list[str]) -> tuple[list[str], bool]:
        """Full module paths of what trains outside the layers, and whether peft must keep the head tied."""
        wanted = outside_params(plan)
        modules = list(dict.fromkeys(p.rsplit(".", 1)[0] for p in wanted))
        tie = False
        shared = f"{names.input_embedding}.weight"
        if names.tied and shared in wanted:
            # the shared weight trains as input and output embedding; peft ties only these two names
            out, inp = names.output_embedding, names.input_embedding
            pick = next((m for m in (inp, out) if m and m.rsplit(".", 1)[-1] in TIE_NAMES), None)
            if pick is None or "ensure_weight_tying" not in _lora_fields():
                why = (
                    f"unless the module is named one of {list(TIE_NAMES)}"
                    if pick is None
                    else "(this peft has no ensure_weight_tying)"
                )
                lost.append(
                    f"tied embeddings: peft keeps {out} on the original {shared} {why}; the output embedding stays frozen"
                )
            else:
                tie = True
                modules = [pick if m == inp else m for m in modules]
        if modules:
            e = DTYPE_BYTES[plan.train.dtype]
            owner = lambda m: names.input_embedding if names.tied and m == names.output_embedding else m  # noqa: E731 - a tied head's weight
            copied = sum(names.module_numel(owner(m)) for m in modules) * e
            lost.append(
                f"memory: modules_to_save trains a copy of {', '.join(modules)} beside the frozen originals: +{copied:,} bytes of weights that the plan's peak does not count"
            )
        return modules, tie

    def keys(self, filename: str, text: str) -> set[str]:
        return set(json.loads(text))
