"""`planner tune`: search layer-wise plans under a memory budget (Optuna), write the best as YAML."""

from __future__ import annotations

import argparse
import warnings

from planner.cli.levers import add_lever_flags, lever_values
from planner.units import human_bytes
from planner.tune.options import TuneOptions, cli_options  # light: optuna loads inside run_tune
from planner.tune.study.kinds import Baseline
from planner.tune.storage.signals import interrupts_as_keyboard_interrupt
from planner.tune.study.summary import confirmation_lines, exit_code, measured_lines, plan_line, summary_table


def add_parser(sub) -> None:
    p = sub.add_parser(
        "tune",
        help="search the best layer-wise plan that fits --vram (Optuna)",
        description="Plan layer-wise fine-tuning of a target model (--model) on a card of --vram: active-layer count, "
        "lowest drawn layer, gradient checkpointing, switching period, scorer, embeddings/head and learning "
        "rate. Every trial's peak is predicted for the target in its training shape before anything trains; "
        "trials over the budget are never trained; the rest train briefly on a proxy (--proxy). "
        "Writes the best plan for the target as YAML.",
    )
    # one option per TuneOptions field (planner.tune.options): its flag, help and metavar; values are read as text
    # and validated by TuneOptions, and a flag left out is absent, so that the field's default applies
    for opt in cli_options():
        if opt.kind == "levers":  # --optimizer, --optimizer-in-backward, --loss-chunks: every trial's shape
            add_lever_flags(p, shape_only=True)
        elif opt.kind == "switch":
            p.add_argument(
                opt.flag,
                dest=opt.field,
                action="store_false" if opt.default else "store_true",
                default=argparse.SUPPRESS,
                help=opt.help.replace("%", "%%"),
            )
        else:
            p.add_argument(
                opt.flag,
                dest=opt.field,
                metavar=opt.metavar,
                required=opt.required,
                default=argparse.SUPPRESS,
                help=opt.help.replace("%", "%%"),
            )
    p.set_defaults(func=run)


def options_from(args):
    """The ``TuneOptions`` of parsed arguments: the flags given (the rest keep their fields' defaults); every
    problem with them at once."""
    problems: list[str] = []
    given = {opt.field: getattr(args, opt.field) for opt in cli_options() if hasattr(args, opt.field)}
    return TuneOptions.from_flags({**given, "levers": lever_values(args, problems)}, problems)


def run(args) -> int:
    from rich.console import Console  # rich: deferred to output, ~0.1 s that 'planner --help' need not pay

    # planner.tune.run (torch, optuna): deferred, 'planner --help' and 'planner tune --help' must not import them
    from planner.tune import run_tune

    options = options_from(args)
    console = Console(highlight=False, soft_wrap=True)  # one line per message, whatever the width
    # transformers 5 deprecation noise from peft's LoRA wrapping: nothing a user can act on
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    with interrupts_as_keyboard_interrupt():  # SIGTERM like Ctrl-C; never raised inside a finalizer
        result = run_tune(options, console=console)
    plan = result.plan
    table = summary_table(result, metric_name=plan.metric_name, vram_bytes=plan.vram_bytes, target_name=plan.model)
    if console.is_terminal:
        console.print(table)
    else:  # piped or redirected, rich assumes 80 columns and would wrap every row: the table gets its natural width
        columns = console.width
        console.width = max(columns, console.measure(table, options=console.options.update_width(10**4)).maximum)
        console.print(table)
        console.width = columns
    counts = result.counts
    reused = f", {counts['reused']} reused a proxy run" if counts.get("reused") else ""
    console.print(
        f"trials: {counts.get('complete', 0)} trained{reused}, {counts.get('gated', 0)} gated (over budget for "
        f"{plan.model}, never trained), {counts.get('pruned', 0) - counts.get('gated', 0)} pruned early, "
        f"{counts.get('fail', 0)} failed"
        + (f", {counts['interrupted']} interrupted (not counted)" if counts.get("interrupted") else "")
        + (f"; {counts['confirmation']} confirmation runs" if counts.get("confirmation") else "")
    )
    for line in confirmation_lines(plan):
        console.print(line)
    for line in measured_lines(result):
        console.print(line)
    console.print(plan_line(plan))
    if plan.proxy is not None and plan.proxy.kind != "target":
        console.print(
            f"measured on {plan.proxy.name}: γ={plan.proxy.active_layers} of {plan.proxy.num_layers} from layer "
            f"{plan.proxy.min_depth} up, lr={plan.proxy.learning_rate:.3g}, batch {plan.proxy.batch_size} "
            f"(depth and learning-rate rules: planner.tune.proxy.mapping)"
        )
    best_kind = result.rows[0].kind
    if isinstance(best_kind, Baseline):
        console.print(
            f"the best plan is the {best_kind.name} baseline itself: no searched trial beat it"
            f"{' on the confirmed mean' if plan.confirmation else ''} "
            f"(resume with --study {plan.study_name} and a larger --n-trials to search on)"
        )
    if result.pareto:
        console.print(
            "Pareto front (metric vs predicted peak): "
            + ", ".join(
                f"#{p['trial']} {p['metric']:.4f} @ {human_bytes(p['predicted_peak_bytes'])}" for p in result.pareto
            )
        )
    console.print(
        f"plan written to {result.plan_path}; study {plan.study_name!r} in {plan.storage} "
        f"(browse: optuna-dashboard {plan.storage})"
    )
    return exit_code(plan)  # 1 when confirmation found no signal: the plan is written, its verdict says so
