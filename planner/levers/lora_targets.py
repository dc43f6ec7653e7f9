"""LoRA on named linear modules only (peft ``target_modules``), e.g. q_proj,v_proj as torchtune's LoRA recipe.

Adapted modules keep their inputs for the adapter's backward; frozen ones keep what the input
gradient needs, if anything (the trace counts both as they happen).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from planner.errors import PlannerError
from planner.levers.base import ExportItems, Flag, Lever, register_lever


@register_lever
class LoraTargets(Lever):
    name = "lora_targets"
    order = 60
    changes_result = True
    fields = {
        "lora_targets": (
            list[str] | None,
            Field(
                None,
                description="leaf names of the linear modules LoRA adapts "
                "(default: every linear module of a decoder layer)",
            ),
        )
    }
    flag = Flag(
        "--lora-targets",
        "lora_targets",
        "LoRA on these linear modules only, e.g. q_proj,v_proj (default: every linear module)",
        kind="list",
        metavar="NAME,...",
    )

    def active(self, cfg) -> bool:
        return cfg.lora_targets is not None

    def problems(self, cfg) -> list[str]:
        if cfg.lora_targets is None:
            return []
        out = []
        if not cfg.lora_rank:
            out.append(
                f"`lora_targets` names the modules LoRA adapts and needs `lora_rank`, but got "
                f"lora_targets={cfg.lora_targets} without it"
            )
        if not cfg.lora_targets or len(set(cfg.lora_targets)) != len(cfg.lora_targets):
            out.append(f"`lora_targets` must name distinct modules, but got {cfg.lora_targets}")
        return out

    def label(self, cfg):
        return f"LoRA on {','.join(cfg.lora_targets)}" if cfg.lora_targets else None

    def lora_targets(self, cfg, names):
        unknown = sorted(set(cfg.lora_targets) - set(names))
        if unknown:
            raise PlannerError(
                f"`lora_targets` must name linear modules of a decoder layer ({', '.join(names)}), "
                f"but got {', '.join(unknown)}"
            )
        return [n for n in names if n in cfg.lora_targets]

    def export(self, target, cfg, layers_attribute="model.layers"):
        if not cfg.lora_targets:
            return ExportItems()
        keys: dict[str, dict[str, Any]] = {
            "hf": {"target_modules": list(cfg.lora_targets)},
            "peft": {"target_modules": list(cfg.lora_targets)},
            "axolotl": {"lora_target_modules": list(cfg.lora_targets)},
            "llamafactory": {"lora_target": ",".join(cfg.lora_targets)},
        }
        if target == "lmflow":
            return ExportItems(
                lost=[f"LoRA only on {','.join(cfg.lora_targets)}: the LMFlow export trains the layers in full"]
            )
        if target == "swift":  # its export selects the plan's layers with one target_regex over every linear module
            return ExportItems(
                lost=[
                    f"LoRA only on {','.join(cfg.lora_targets)}: the swift export's target_regex adapts every "
                    "linear module of the plan's layers (more adapter memory)"
                ]
            )
        return ExportItems(keys.get(target, {}))
