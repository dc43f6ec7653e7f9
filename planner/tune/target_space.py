"""The search space ``planner tune`` explores for a target under its options, and the check that the
budget holds at least its smallest plan."""

from __future__ import annotations

from planner.errors import PlannerError
from planner.levers import labels, shape_fields
from planner.recipes import QLORA
from planner.sampling import SCORERS
from planner.tune.options import TuneOptions
from planner.tune.proxy.target import Target, workload_target
from planner.tune.search.forms import form_steps, forms
from planner.units import human_bytes
from planner.tune.search.space import DEFAULT_LORA_RANKS, SearchSpace, depth_choices


class InfeasibleBudget(PlannerError):
    """Not even the smallest configuration fits the budget."""

    exit_code = 2


def target_of_workload(workload, options: TuneOptions) -> Target:
    """The target a workload's own model makes, in the training shape ``options`` give."""
    return workload_target(workload, **options.training_shape())


def build_space(target, options: TuneOptions):
    """The search space for ``target`` under ``options``: a :class:`~planner.tune.proxy.target.Target`, or a workload
    whose own model is the target."""

    if not isinstance(target, Target):
        target = target_of_workload(target, options)

    scorers = tuple(options.scorers) if options.scorers else tuple(sorted(SCORERS))
    static = tuple(s for s in scorers if SCORERS[s].static)
    batches = tuple(options.batch_sizes) if options.batch_sizes else (target.shape.batch_size,)
    extra = {k: getattr(target.shape, k) for k in ("dtype", "amp", *shape_fields())}
    return SearchSpace(
        num_layers=target.num_layers,
        scorers=scorers,
        seq_len=target.shape.seq_len,
        batch_sizes=batches,
        lora_ranks=DEFAULT_LORA_RANKS if options.lora else (),
        min_depths=depth_choices(target.num_layers),
        checkpointing=(False, True),
        forms=form_steps(options.levers),
        extra=extra,
        # QLoRA's storage for frozen layers that stay frozen (LoRA's, a static set's); the quantize
        # lever computes in the model's dtype, never under amp
        quantize_choices=(None, QLORA["quantize"]) if (options.lora or static) and target.shape.amp == "none" else (),
        static_scorers=static,
    )


def _describe_point(p, space) -> str:
    what = (
        f"γ={p.active_layers} from layer {p.min_depth} up, embeddings {'trainable' if p.train_embeddings else 'frozen'}, "
        f"head {'trainable' if p.train_head else 'frozen'}, gradient checkpointing {'on' if p.gradient_checkpointing else 'off'}, "
        f"batch {space.batch_size_of(p)}"
    )
    levers = [w for w in labels(space.train_config(p)) if w != "checkpointing"]
    return what + (f", LoRA rank {p.adapter_rank}" if p.adapter_rank else "") + "".join(f", {w}" for w in levers)


def check_feasible(space, gate, target_name: str = "the target") -> None:
    """Raise :class:`InfeasibleBudget` naming the smallest budget and plan that would fit, when nothing fits."""
    preds = [(gate.predict(space.train_config(f)), f) for p in space.cheapest_points() for f in forms(space, p)]
    smallest, point = min(preds, key=lambda x: x[0].peak_bytes)
    if not smallest.fits:
        raise InfeasibleBudget(
            f"--vram {human_bytes(gate.vram_bytes)} must hold at least the smallest plan of {target_name} "
            f"({_describe_point(point, space)}), which needs {human_bytes(smallest.peak_bytes)}: a budget of at least "
            f"{smallest.peak_bytes} B ({human_bytes(smallest.peak_bytes)}) would fit"
        )
