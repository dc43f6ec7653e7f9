"""Exporter contract and registry: one strategy per target trainer, registered by name.

An exporter turns a :class:`~planner.plan.Plan` into the files a trainer reads. Where the
target cannot express part of the plan it writes the nearest equivalent and says, one line
per item, what is lost; ``strict`` callers refuse instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from planner.errors import PlannerError
from planner.registry import registrar

if TYPE_CHECKING:
    from planner.plan import Plan

EXPORTERS: dict[str, type["Exporter"]] = {}

# planner scorers by what a trainer that only knows uniform or ordered draws can make of them
UNIFORM_SCORERS = frozenset({"uniform"})
ORDERED_SCORERS = frozenset({"cyclic"})
STATIC_SCORERS = frozenset({"fixed", "semantic"})

# TrainConfig.optimizer -> the `optim` name of transformers.TrainingArguments (OptimizerNames),
# which axolotl's `optimizer`, LMFlow's and LLaMA-Factory's `optim` take as well
HF_OPTIM = {"adamw": "adamw_torch", "sgd": "sgd", "adamw8bit": "adamw_bnb_8bit"}


register_exporter = registrar(EXPORTERS, "exporter")
"""Class decorator factory: ``@register_exporter(name)`` makes a :class:`Exporter` available as ``get_exporter(name)``."""


def get_exporter(name: str) -> "Exporter":
    """The exporter registered as ``name``."""
    if name not in EXPORTERS:
        raise PlannerError(f"--to must be one of {', '.join(sorted(EXPORTERS))}, but got {name!r}")
    return EXPORTERS[name]()


@dataclass
class Export:
    """What an exporter produced: file name -> text, and what the target cannot express."""

    target: str
    files: dict[str, str]
    lost: list[str] = field(default_factory=list)


class Exporter:
    """Base strategy. Subclasses set ``allowed_keys`` (the target's documented names, as data),
    implement :meth:`render` and :meth:`keys` (the config keys one of its files sets)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: every config key the exporter may write, as the target documents it
    allowed_keys: ClassVar[frozenset[str]] = frozenset()

    def render(self, plan: "Plan") -> Export:
        raise NotImplementedError

    def keys(self, filename: str, text: str) -> set[str]:
        """The config keys ``text`` (one of this exporter's files) sets; parsing it must succeed."""
        raise NotImplementedError


# helpers shared by the targets -----------------------------------------------------------------

def model_id(plan: "Plan") -> str:
    """What a trainer loads: a preset's hub id, else the model as the plan names it (hub id or path)."""
    from planner.spec import list_presets

    preset = list_presets().get(plan.model.strip().lower().replace("_", "-"))
    return str(preset["hub_id"]) if preset and preset.get("hub_id") else plan.model


def fixed_layers(plan: "Plan") -> list[int] | None:
    """The layers a static plan trains: ``plan.layers``, or what the ``fixed`` scorer's options pick
    (``layers=[...]``, or ``top=k``, default k = γ: the last k of ``min_depth..L-1``); None when dynamic."""
    if plan.layers is not None:
        return sorted(plan.layers)
    if plan.scorer != "fixed":
        return None
    opts = plan.scorer_options
    if opts.get("layers") is not None:
        return sorted(int(i) for i in opts["layers"])
    k = int(opts.get("top") or plan.active_layers)
    return candidates(plan)[-k:]


def scorer_kind(plan: "Plan") -> str:
    """``static``, ``uniform``, ``ordered``, ``static-deferred`` (a static set chosen during
    training, e.g. ``semantic``) or ``weighted`` (any scorer that learns or weighs layers)."""
    if fixed_layers(plan) is not None:
        return "static"
    if plan.scorer in UNIFORM_SCORERS:
        return "uniform"
    if plan.scorer in ORDERED_SCORERS:
        return "ordered"
    if plan.scorer in STATIC_SCORERS:  # a static scorer whose set is only known once training starts
        return "static-deferred"
    return "weighted"


def cyclic_order(plan: "Plan") -> str:
    """The visiting order of a ``cyclic`` plan (BAdam's switch modes)."""
    return str(plan.scorer_options.get("order", "ascending"))


def gamma(plan: "Plan") -> int:
    """γ: layers trained at once (the fixed set's size for static plans)."""
    fixed = fixed_layers(plan)
    return len(fixed) if fixed is not None else plan.active_layers


def candidates(plan: "Plan") -> list[int]:
    """The layers a dynamic plan draws from: ``min_depth..L-1``."""
    return list(range(plan.train.min_depth, plan.num_layers))


def draw_loss(plan: "Plan", target: str, nearest: str) -> list[str]:
    """What a target that draws γ layers uniformly over all L layers loses of ``plan``'s draw."""
    kind = scorer_kind(plan)
    lost = []
    if kind == "static":
        lost.append(f"fixed layer set {fixed_layers(plan)}: {target} redraws layers; nearest: {nearest}")
    elif kind == "static-deferred":
        lost.append(f"scorer {plan.scorer!r} picks a fixed set once training starts: {target} cannot; nearest: {nearest}")
    elif kind == "ordered":
        lost.append(f"scorer 'cyclic' ({cyclic_order(plan)} blocks of consecutive layers): {target} has no ordered switching; nearest: {nearest}")
    elif kind == "weighted":
        lost.append(f"scorer {plan.scorer!r} (weighted draws{_options(plan)}): {target} draws uniformly; nearest: {nearest}")
    if kind != "static" and plan.train.min_depth > 0:
        lost.append(f"min_depth={plan.train.min_depth} (never draw below layer {plan.train.min_depth}): {target} draws from all {plan.num_layers} layers")
    return lost


def _options(plan: "Plan") -> str:
    return f", options {plan.scorer_options}" if plan.scorer_options else ""


def precision(plan: "Plan") -> tuple[bool, bool]:
    """(bf16, fp16) autocast flags of the HF Trainer from ``plan.train.amp``."""
    return plan.train.amp == "bf16", plan.train.amp == "fp16"
