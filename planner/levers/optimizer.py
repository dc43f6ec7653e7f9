"""The optimizer (``--optimizer``): which registered strategy of :mod:`planner.optimizers` runs the step."""

from __future__ import annotations

from pydantic import Field

from planner.levers.base import ExportItems, Flag, Lever, register_lever
from planner.optimizers import OPTIMIZERS, get_optimizer


@register_lever
class OptimizerLever(Lever):
    name = "optimizer"
    order = 0
    native_export = True
    in_shape = True
    changes_result = True
    fields = {"optimizer": (str, Field("adamw", description=f"the optimizer: one of {', '.join(OPTIMIZERS)}"))}
    flag = Flag(
        "--optimizer",
        "optimizer",
        f"the optimizer (default adamw; {', '.join(OPTIMIZERS)})",
        metavar="{" + ",".join(OPTIMIZERS) + "}",
    )

    def active(self, cfg) -> bool:
        return True

    def problems(self, cfg) -> list[str]:
        if cfg.optimizer not in OPTIMIZERS:
            return [f"`optimizer` must be one of {', '.join(OPTIMIZERS)}, but got {cfg.optimizer!r}"]
        return []

    def label(self, cfg):
        return None if cfg.optimizer == "adamw" else cfg.optimizer

    def export(self, target, cfg, layers_attribute="model.layers"):
        key = {"hf": "optim", "lmflow": "optim", "llamafactory": "optim", "axolotl": "optimizer", "swift": "optim"}
        if target not in key:
            return ExportItems()
        return ExportItems({key[target]: get_optimizer(cfg.optimizer).hf_name})
