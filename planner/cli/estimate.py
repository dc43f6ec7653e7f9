"""`planner estimate`: peak training memory of one configuration, or the table of candidate plans.

Exit codes: 0 when it fits (or no --vram was given), 1 when it does not fit (for the table:
when no plan fits), 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from pydantic import ValidationError

from planner.cli.levers import add_lever_flags, lever_flag, lever_values
from planner.config import TrainConfig
from planner.errors import PlannerError, ValidationProblems, collect
from planner.plan import BREAKDOWN_KEYS
from planner.units import GiB, KiB, MiB, format_bytes, parse_bytes

EXIT_DOES_NOT_FIT = 1


def add_parser(sub) -> None:
    p = sub.add_parser(
        "estimate",
        help="predict peak training memory; without a trainable set, a table of candidate plans",
        description="Predict the peak memory of one training configuration and its breakdown. Without "
        "--layers/--active-layers/--lora-rank, print a table of candidate plans (full, LoRA, "
        "layer-wise γ=1..L) and, with --vram, the largest γ that fits. Exit codes: 0 fits "
        "(or no --vram), 1 does not fit, 2 bad input.",
    )
    # every value is read as text and validated at once (TrainConfig), so several problems are reported together
    p.add_argument("--model", required=True, help="preset name, hub id, local model directory, or config.json path")
    p.add_argument("--batch-size", metavar="N", help="micro-batch size (default 1)")
    p.add_argument("--seq-len", metavar="N", help="tokens per sequence (default 512)")
    p.add_argument("--dtype", metavar="{float32,bfloat16,float16}", help="weight storage dtype (default float32)")
    p.add_argument("--amp", metavar="{bf16,fp16}", help="autocast with float32 weights (HF Trainer's bf16=True)")
    p.add_argument("--layers", metavar="I,J,...|all", help="static trainable decoder layers (0-based), or all")
    p.add_argument("--active-layers", metavar="G", help="a sampler keeps G layers active; predicts its worst case")
    p.add_argument("--min-depth", metavar="D", help="the sampler never draws below layer D (needs --active-layers)")
    p.add_argument(
        "--train-embeddings",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train the input embeddings (default: yes; the table shows both)",
    )
    p.add_argument(
        "--train-head",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train the LM head (default: yes; the table shows both)",
    )
    p.add_argument(
        "--lora-rank", metavar="R", help="LoRA adapters of rank R in the trainable layers (all layers if none given)"
    )
    add_lever_flags(p)
    p.add_argument("--device", default="cuda", metavar="{cuda,cpu}", help="default cuda (adds device overhead)")
    p.add_argument(
        "--profile",
        metavar="PATH",
        help="device profile JSON from `planner profile` (default: a matching one in "
        "$PLANNER_PROFILE_DIR or ~/.cache/planner/profiles, else documented defaults)",
    )
    p.add_argument("--vram", metavar="SIZE", help="memory budget, e.g. 24GB, 24GiB, 24000MiB, 24G")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.set_defaults(func=run)


def _parse_layers(text: str, problems: list[str]):
    if text.strip().lower() == "all":
        return "all"
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        problems.append(
            f"--layers must be `all` or comma-separated decoder-layer indices such as 0,5, but got {text!r}"
        )
        return None


def _config_fields(args, problems: list[str]) -> dict:
    fields = {}
    for flag in (
        "batch_size",
        "seq_len",
        "dtype",
        "amp",
        "active_layers",
        "min_depth",
        "train_embeddings",
        "train_head",
        "lora_rank",
    ):
        value = getattr(args, flag)
        if value is not None:
            fields[flag] = value
    fields.update(lever_values(args, problems))
    if args.layers is not None:
        layers = _parse_layers(args.layers, problems)
        if layers is not None:
            fields["layers"] = layers
    if args.min_depth is not None and args.active_layers is None:
        problems.append(
            f"--min-depth bounds a sampler's draws and needs --active-layers, but got --min-depth {args.min_depth} without it"
        )
    # LoRA with no layer set means adapters in every layer, base weights (embeddings and head included) frozen
    if args.lora_rank is not None and args.layers is None and args.active_layers is None:
        fields["layers"] = "all"
        fields.setdefault("train_embeddings", False)
        fields.setdefault("train_head", False)
    return fields


def validate(args):
    """Resolve every input, collecting all problems: (spec, cfg, profile, profile_line, vram_bytes)."""
    # planner.cost, planner.spec (torch): deferred, 'planner --help' and 'planner estimate --help' must not import torch
    from planner.cost.profile import resolve_profile
    from planner.spec import load_spec
    from planner.spec.model import seq_len_problem

    problems: list[str] = []
    spec = cfg = prof = line = vram = None
    try:
        spec = load_spec(args.model)
    except PlannerError as exc:
        problems.append(str(exc))
    fields = _config_fields(args, problems)
    try:
        cfg = TrainConfig(**fields)
    except ValidationError as exc:
        for err in exc.errors():
            flag = lever_flag(str(err["loc"][0])) if err["loc"] else "config"
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{flag} {msg[0].lower() + msg[1:]}, but got {err.get('input')!r}")
    except ValidationProblems as exc:
        problems.extend(exc.problems)
    if spec is not None:
        # with an otherwise invalid config, the layer indices are still checked
        checked = cfg if cfg is not None else TrainConfig.model_construct(layers=fields.get("layers"))
        try:
            checked.check_against(spec.num_layers)
        except ValidationProblems as exc:
            problems.extend(exc.problems)
        if cfg is not None and (problem := seq_len_problem(spec, cfg.seq_len)):
            problems.append(problem)
    if args.device not in ("cuda", "cpu"):
        problems.append(f"--device must be cuda or cpu, but got {args.device!r}")
    else:
        try:
            prof, line = resolve_profile(args.device, args.profile)
        except PlannerError as exc:
            problems.append(str(exc))
    if args.vram is not None:
        try:
            vram = parse_bytes(args.vram, name="--vram")
        except PlannerError as exc:
            problems.append(str(exc))
    collect(problems)
    return spec, cfg, prof, line, vram


def _table_mode(args) -> bool:
    return args.layers is None and args.active_layers is None and args.lora_rank is None


def run(args) -> int:
    spec, cfg, prof, profile_line, vram = validate(args)
    with warnings.catch_warnings():
        # deprecation notes that transformers/peft print while tracing say nothing about the user's input
        warnings.simplefilter("ignore", FutureWarning)
        if _table_mode(args):
            return _run_table(args, spec, cfg, prof, profile_line, vram)
        return _run_single(args, spec, cfg, prof, profile_line, vram)


# ----------------------------------------------------------------------------------- printing


def _console():
    from rich.console import Console  # rich: deferred to output, ~0.1 s that 'planner --help' need not pay

    # piped output keeps full rows instead of wrapping at 80 columns
    return Console(width=None if sys.stdout.isatty() else 200, highlight=False)


def _unit_for(largest: int) -> str:
    """The binary unit in which the largest number of a table reads best."""
    return "GiB" if largest >= GiB else "MiB" if largest >= MiB else "KiB" if largest >= KiB else "B"


def _size(n: int) -> str:
    """``n`` in the binary unit that reads best, e.g. ``2.20 MiB``."""
    unit = _unit_for(n)
    return f"{_in(n, unit)} {unit}"


def _in(n: int, unit: str) -> str:
    return format_bytes(n, unit, 0 if unit == "B" else 2).removesuffix(f" {unit}")


def _budget_line(vram: int) -> str:
    return f"budget: --vram {vram:,} bytes ({_size(vram)})"


def _header(console, args, spec, cfg, profile_line, vram):
    console.print(f"model: {spec.name} ({spec.model_type}, {spec.num_layers} layers)   device: {args.device}")
    console.print(f"profile: {profile_line}")
    console.print(
        f"batch {cfg.batch_size} × seq {cfg.seq_len}, dtype {cfg.dtype}"
        + (f", amp {cfg.amp}" if cfg.amp != "none" else "")
        + f", optimizer {cfg.optimizer}"
        + (", gradient checkpointing" if cfg.gradient_checkpointing else "")
    )
    if vram is not None:
        console.print(_budget_line(vram))


def _run_single(args, spec, cfg, prof, profile_line, vram) -> int:
    from rich.table import Table  # rich: deferred to output, ~0.1 s that 'planner --help' need not pay

    from planner.cost import estimate  # planner.cost (torch): deferred, 'planner estimate --help' must not import it

    est = estimate(spec, cfg, device=args.device, profile=prof)
    fits = None if vram is None else est.peak_bytes <= vram
    if args.json:
        out = dict(est.to_dict())
        out.update(model=spec.name, profile=profile_line, config=cfg.model_dump(mode="json"))
        if vram is not None:
            out.update(vram_bytes=vram, fits=fits)
        print(json.dumps(out))
        return 0 if fits in (None, True) else EXIT_DOES_NOT_FIT
    console = _console()
    _header(console, args, spec, cfg, profile_line, vram)
    what = (
        f"layers {cfg.layers}"
        if cfg.layers is not None
        else f"γ={cfg.active_layers} sampled from layers {cfg.min_depth}..{spec.num_layers - 1} (worst case)"
    )
    eh = ", ".join(
        f"{n} {'trainable' if on else 'frozen'}"
        for n, on in (("embeddings", cfg.train_embeddings), ("head", cfg.train_head))
    )
    console.print(f"trains: {what}{f', LoRA r={cfg.lora_rank}' if cfg.lora_rank else ''}; {eh}")
    unit = _unit_for(est.peak_bytes)
    table = Table(title="peak memory")
    table.add_column("part")
    table.add_column("bytes", justify="right")
    table.add_column(unit, justify="right")
    table.add_column("share", justify="right")
    parts = est.breakdown.model_dump()
    for key in BREAKDOWN_KEYS:
        table.add_row(
            key, f"{parts[key]:,}", _in(parts[key], unit), f"{100 * parts[key] / max(est.peak_bytes, 1):.1f}%"
        )
    table.add_row("peak", f"{est.peak_bytes:,}", _in(est.peak_bytes, unit), "100.0%", style="bold")
    console.print(table)
    console.print(
        f"peak reached during: {est.phase}"
        + (f"; worst-case draw: layers {est.trainable_layers}" if cfg.active_layers is not None else "")
    )
    if vram is None:
        return 0
    if fits:
        console.print(
            f"fits: peak {_size(est.peak_bytes)} <= budget {_size(vram)} ({_size(vram - est.peak_bytes)} to spare)"
        )
        return 0
    console.print(
        f"does not fit: peak {_size(est.peak_bytes)} > budget {_size(vram)}; the smallest budget "
        f"that fits this configuration is {est.peak_bytes:,} bytes ({_size(est.peak_bytes)})"
    )
    return EXIT_DOES_NOT_FIT


def _variants(args):
    if args.train_embeddings is None and args.train_head is None:
        from planner.cost.plans import DEFAULT_EMBEDDING_VARIANTS  # planner.cost (torch): deferred, as in validate

        return DEFAULT_EMBEDDING_VARIANTS
    return ((args.train_embeddings is not False, args.train_head is not False),)


def _run_table(args, spec, cfg, prof, profile_line, vram) -> int:
    from rich.table import Table  # rich: deferred to output, ~0.1 s that 'planner --help' need not pay

    # planner.cost (torch): deferred, 'planner estimate --help' must not import it
    from planner.cost.plans import variant_label, candidate_plans, largest_fitting_active_layers, smallest_fitting

    variants = _variants(args)
    cands = candidate_plans(spec, cfg, args.device, prof, embedding_variants=variants)
    cheapest = smallest_fitting(cands)
    largest = {
        variant_label(e, h): largest_fitting_active_layers(cands, vram, train_embeddings=e, train_head=h)
        if vram
        else None
        for e, h in variants
    }
    any_fits = vram is None or cheapest.peak_bytes <= vram
    if args.json:
        out = {
            "model": spec.name,
            "num_layers": spec.num_layers,
            "device": args.device,
            "profile": profile_line,
            "config": cfg.model_dump(mode="json"),
            "plans": [c.to_dict(vram) for c in cands],
            "smallest": {"name": cheapest.name, "peak_bytes": cheapest.peak_bytes},
        }
        if vram is not None:
            out["vram_bytes"] = vram
            out["largest_fitting_active_layers"] = {
                label: (c.active_layers if c else None) for label, c in largest.items()
            }
        print(json.dumps(out))
        return 0 if any_fits else EXIT_DOES_NOT_FIT
    console = _console()
    _header(console, args, spec, cfg, profile_line, vram)
    unit = _unit_for(max(c.peak_bytes for c in cands))
    table = Table(title=f"candidate plans ({unit}; layer-wise rows: worst case of a uniform sampler over all layers)")
    table.add_column("plan")
    table.add_column("peak", justify="right")
    for key in BREAKDOWN_KEYS:
        table.add_column(key, justify="right")
    if vram is not None:
        table.add_column("fits")
    for c in cands:
        parts = c.estimate.breakdown.model_dump()
        row = [c.name, _in(c.peak_bytes, unit), *(_in(parts[k], unit) for k in BREAKDOWN_KEYS)]
        if vram is not None:
            row.append("yes" if c.fits(vram) else "no")
        table.add_row(*row, style=None if vram is None or c.fits(vram) else "dim")
    console.print(table)
    if vram is None:
        console.print(f"smallest plan: {cheapest.name} at {_size(cheapest.peak_bytes)}")
        return 0
    for label, best in largest.items():
        console.print(
            f"largest γ that fits ({label}): "
            + (f"{best.active_layers} (peak {_size(best.peak_bytes)})" if best else "none")
        )
    if not any_fits:
        console.print(
            f"no plan fits {_size(vram)}: the smallest budget that fits is {cheapest.peak_bytes:,} bytes "
            f"({_size(cheapest.peak_bytes)}) with {cheapest.name}"
        )
        return EXIT_DOES_NOT_FIT
    return 0
