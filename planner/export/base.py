"""Exporter contract and registry: one strategy per target trainer, registered by name.

An exporter turns a :class:`~planner.plan.Plan` into the files a trainer reads. Where the
target cannot train exactly the plan's parameters on the plan's schedule with the plan's
memory, it writes the nearest equivalent and says, one line per item, what is lost;
``strict`` callers refuse instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from planner.errors import PlannerError
from planner.export.names import arch_names
from planner.levers import ExportItems, all_levers
from planner.optimizers import get_optimizer
from planner.registry import registrar

if TYPE_CHECKING:
    from planner.plan import Plan

EXPORTERS: dict[str, type["Exporter"]] = {}


# TrainConfig.optimizer -> the `optim` name of transformers.TrainingArguments (OptimizerNames),
# which axolotl's `optimizer`, LMFlow's and LLaMA-Factory's `optim` take as well
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
FP32_BYTES = 4
STATE_DEVICE = "cuda"  # the trainers run on GPUs: optimizer state as the cost model counts it there


def hf_optim(name: str) -> str:
    """The optimizer's name in the Hugging Face Trainer (``optim``; axolotl's ``optimizer``): its registered strategy's."""
    return get_optimizer(name).hf_name


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
    """Base strategy. Subclasses implement :meth:`render` and :meth:`keys` (the config keys one
    of its files sets)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    out_dir: "Path | None" = None  # where the files will be written, when known (a file may name another by path)

    def render(self, plan: "Plan") -> Export:
        raise NotImplementedError

    def keys(self, filename: str, text: str) -> set[str]:
        """The config keys ``text`` (one of this exporter's files) sets; parsing it must succeed."""
        raise NotImplementedError


# helpers shared by the targets -----------------------------------------------------------------


def lever_items(plan: "Plan", target: str) -> "ExportItems":
    """What the plan's memory levers add to ``target``'s config: each lever's keys and lost lines
    (planner.levers; the checkpointing and optimizer keys every exporter writes itself). Levers left off are asked
    too: a trainer may do by default what the plan was not costed with (padded batches)."""
    out = ExportItems()
    for lever in all_levers():
        if lever.native_export:
            continue
        items = lever.export(target, plan.train, plan.layers_attribute)
        out.keys.update(items.keys)
        out.lost += items.lost
    return out


def model_id(plan: "Plan") -> str:
    """What a trainer loads: a preset's hub id, the directory of a ``config.json`` path, else the
    model as the plan names it (hub id or directory)."""
    from planner.spec import list_presets  # planner.spec (torch): deferred, the exporters load with 'planner --help'

    preset = list_presets().get(plan.model.strip().lower().replace("_", "-"))
    if preset and preset.get("hub_id"):
        return str(preset["hub_id"])
    if Path(plan.model).name == "config.json":  # from_pretrained reads the directory holding it
        return str(Path(plan.model).parent)
    return plan.model


def model_loss(plan: "Plan") -> list[str]:
    """A line when the plan's model cannot be found: names and sizes then come from a default config."""
    if arch_names(plan).resolved:
        return []
    return [
        f"plan model {plan.model!r} cannot be found (not a preset, an existing config or model directory, or a "
        f"hub id in the local cache): module names and sizes come from a default {plan.model_type} config"
    ]


def min_depth(plan: "Plan") -> int:
    """The lowest layer a sampler may draw (the plan's field when it has one, else its TrainConfig's)."""
    return int(getattr(plan, "min_depth", 0) or plan.train.min_depth)


def candidates(plan: "Plan") -> list[int]:
    """The layers a dynamic plan draws from: ``min_depth..L-1``."""
    return list(range(min_depth(plan), plan.num_layers))


def fixed_layers(plan: "Plan") -> list[int] | None:
    """The layers a static plan trains: ``plan.layers``, or what the ``fixed`` scorer's options pick
    (``layers=[...]``, or ``top=k``, default k = γ: the last k of ``min_depth..L-1``), or every
    candidate when a dynamic plan draws all of them at once; None when dynamic."""
    if plan.layers is not None:
        return sorted(plan.layers)
    if plan.scorer == "fixed":
        opts = plan.scorer_options
        if opts.get("layers") is not None:
            return sorted(int(i) for i in opts["layers"])
        k = int(opts.get("top") or plan.active_layers)
        return candidates(plan)[-k:]
    if plan.active_layers == len(candidates(plan)):
        return candidates(plan)
    return None


def scorer_kind(plan: "Plan") -> str:
    """``static``, ``uniform``, ``ordered``, ``static-deferred`` (a static set chosen during
    training, e.g. ``semantic``) or ``weighted`` (any scorer that learns or weighs layers)."""
    from planner.sampling.scorers import SCORERS  # the scorers import torch: deferred past the light exporters

    if fixed_layers(plan) is not None:
        return "static"
    scorer = SCORERS.get(plan.scorer)
    if scorer is None:
        return "weighted"
    if scorer.static:  # a static scorer whose set is only known once training starts
        return "static-deferred"
    return scorer.draw


def cyclic_order(plan: "Plan") -> str:
    """The visiting order of a ``cyclic`` plan (BAdam's switch modes)."""
    return str(plan.scorer_options.get("order", "ascending"))


def active_layer_count(plan: "Plan") -> int:
    """γ: layers trained at once (the fixed set's size for static plans)."""
    fixed = fixed_layers(plan)
    return len(fixed) if fixed is not None else plan.active_layers


def draw_loss(plan: "Plan", target: str, nearest: str) -> list[str]:
    """What a target that draws γ layers uniformly over all L layers loses of ``plan``'s draw."""
    kind = scorer_kind(plan)
    lost = []
    if kind == "static":
        lost.append(f"fixed layer set {fixed_layers(plan)}: {target} redraws layers; nearest: {nearest}")
    elif kind == "static-deferred":
        lost.append(
            f"scorer {plan.scorer!r} picks a fixed set once training starts: {target} cannot; nearest: {nearest}"
        )
    elif kind == "ordered":
        lost.append(
            f"scorer 'cyclic' ({cyclic_order(plan)} blocks of consecutive layers): {target} has no ordered switching; nearest: {nearest}"
        )
    elif kind == "weighted":
        lost.append(
            f"scorer {plan.scorer!r} (weighted draws{_options(plan)}): {target} draws uniformly; nearest: {nearest}"
        )
    if kind != "static" and min_depth(plan) > 0:
        lost.append(
            f"min_depth={min_depth(plan)} (never draw below layer {min_depth(plan)}): {target} draws from all {plan.num_layers} layers"
        )
    return lost


def _options(plan: "Plan") -> str:
    return f", options {plan.scorer_options}" if plan.scorer_options else ""


def outside_params(plan: "Plan") -> list[str]:
    """Names (as ``named_parameters()`` lists them: a shared weight once, under its input-embedding
    name) of the parameters outside the decoder layers that the plan trains."""
    names = arch_names(plan)
    out: list[str] = []
    if plan.train_embeddings:
        out += names.embedding_params
    if plan.train_head:
        out += names.head_params
        if names.tied:  # the output embedding is the input embedding's weight
            out.append(f"{names.input_embedding}.weight")
    return list(dict.fromkeys(out))


def precision(plan: "Plan") -> tuple[bool, bool]:
    """(bf16, fp16) autocast flags of the HF Trainer from ``plan.train.amp``."""
    return plan.train.amp == "bf16", plan.train.amp == "fp16"


# memory ------------------------------------------------------------------------------------------


def state_bytes(plan: "Plan", tensors: list[tuple[int, int]]) -> int:
    """Optimizer state the cost model predicts for trainable ``(numel, bytes per element)`` tensors."""
    return get_optimizer(plan.train.optimizer).state_bytes(tensors, STATE_DEVICE)


def layer_state_bytes(plan: "Plan", layers: int, element_bytes: int | None = None) -> int:
    """Optimizer state the cost model predicts for ``layers`` whole decoder layers of ``plan``'s model
    (AdamW: two moments per element in the weights' dtype)."""
    e = element_bytes or DTYPE_BYTES[plan.train.dtype]
    return state_bytes(plan, [(n, e) for n in arch_names(plan).layer_numels] * layers)


def lora_as_full_loss(plan: "Plan", target: str, how: str, full_layers: int | None = None) -> str:
    """The line for a target that trains whole layers where the plan trains LoRA adapters in them,
    with the gradient and optimizer bytes the cost model predicts beyond the adapters'."""
    names, e, r = arch_names(plan), DTYPE_BYTES[plan.train.dtype], plan.lora_rank
    assert r is not None, "only a LoRA plan's export loses its adapters (callers check plan.lora_rank)"
    full = [(n, e) for n in names.layer_numels] * (active_layer_count(plan) if full_layers is None else full_layers)
    # peft: float32 adapters
    adapters = [(r * n, FP32_BYTES) for shape in names.linear_shapes for n in shape] * active_layer_count(plan)
    extra = (state_bytes(plan, full) + sum(n * b for n, b in full)) - (
        state_bytes(plan, adapters) + sum(n * b for n, b in adapters)
    )
    more = (
        f": +{extra:,} bytes of gradients and optimizer state that the plan's peak does not count" if extra > 0 else ""
    )
    return f"LoRA r={r} inside the layers: {target}; {how}{more}"


def stale_state_loss(plan: "Plan", target: str) -> list[str]:
    """The line for a target whose layer switches freeze layers but keep their optimizer state."""
    n = active_layer_count(plan)
    extra = layer_state_bytes(plan, plan.num_layers) - layer_state_bytes(plan, n)
    if extra <= 0:  # a stateless optimizer (SGD) loses nothing
        return []
    return [
        f"optimizer state: {target} keeps the {plan.train.optimizer} state of layers it freezes; once every layer "
        f"was drawn it holds all {plan.num_layers} layers' instead of {n}: +{extra:,} bytes (cost model) that the plan's peak does not count"
    ]
