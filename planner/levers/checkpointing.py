"""Gradient checkpointing: transformers' ``gradient_checkpointing_enable()`` (non-reentrant).

Each decoder layer keeps only its input and recomputes its forward in backward. transformers
also calls ``enable_input_require_grads``: the embedding output requires grad, so every layer,
frozen ones too, backpropagates and is recomputed (the cost model's roles follow from that).
"""

from __future__ import annotations

from pydantic import Field

from planner.levers.base import ExportItems, Flag, Lever, register_lever


@register_lever
class Checkpointing(Lever):
    name = "checkpointing"
    order = 10
    native_export = True
    fields = {"gradient_checkpointing": (bool, Field(False, description="recompute layer activations in backward"))}
    flag = Flag(
        "--gradient-checkpointing",
        "gradient_checkpointing",
        "recompute layer activations in backward (default: no)",
        kind="bool",
    )
    searchable = True

    def active(self, cfg) -> bool:
        return cfg.gradient_checkpointing

    def label(self, cfg):
        return "checkpointing" if cfg.gradient_checkpointing else None

    def input_requires_grad(self, cfg) -> bool:
        return cfg.gradient_checkpointing

    def prepare(self, model, cfg, layers):
        if cfg.gradient_checkpointing:
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable()
        return model

    def export(self, target, cfg, layers_attribute="model.layers"):
        if not cfg.gradient_checkpointing:
            # LLaMA-Factory checkpoints unless told not to
            return ExportItems({"disable_gradient_checkpointing": True} if target == "llamafactory" else {})
        keys = {
            "hf": {"gradient_checkpointing": True},
            "axolotl": {"gradient_checkpointing": True},
            "lmflow": {"gradient_checkpointing": True},
            "swift": {"gradient_checkpointing": True},
            "llamafactory": {},
            "planner": {},
        }
        return ExportItems(keys.get(target, {}))
