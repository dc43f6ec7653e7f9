"""`planner export`: write a plan as ready files for another trainer."""

from __future__ import annotations

from pathlib import Path

from planner.errors import PlannerError, collect
from planner.export import export_plan, get_exporter
from planner.export.base import EXPORTERS
from planner.plan import Plan
from planner.writable import unwritable_reason


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a plan as ready config files for a trainer (hf, axolotl, lmflow, llamafactory, peft)",
        description="Write PLAN (a plan YAML from `planner tune`) as the files TARGET reads. Where the target "
        "cannot express part of the plan, the nearest equivalent is written and each loss is "
        "printed; with --strict nothing is written and the command exits 2 naming the losses.",
    )
    p.add_argument("plan", metavar="PLAN.yaml", help="plan file")
    p.add_argument("--to", required=True, metavar="TARGET", help=f"one of {', '.join(sorted(EXPORTERS))}")
    p.add_argument("--out", metavar="DIR", help="output directory (default export/TARGET)")
    p.add_argument("--strict", action="store_true", help="refuse (exit 2) instead of writing a lossy export")
    p.add_argument(
        "--steps",
        type=int,
        metavar="N",
        help="the training run's optimizer steps (default: the plan's, what each trial trained; where the trials "
        "trained a proxy, its horizon)",
    )
    p.set_defaults(func=run)


def check_inputs(args) -> None:
    """--to, the plan file and the output folder (proven writable by trying), every problem at once, before anything
    is rendered or written."""
    problems = []
    if args.steps is not None and args.steps < 1:
        problems.append(f"--steps must be >= 1, but got {args.steps}")
    for check in (lambda: get_exporter(args.to), lambda: Plan.load(args.plan)):
        try:
            check()
        except PlannerError as exc:
            problems.append(str(exc))
    out = args.out if args.out is not None else str(Path("export") / args.to)
    if (reason := unwritable_reason(out, directory=True)) is not None:
        flag = "--out" if args.out is not None else "the output folder (export/TARGET; set --out)"
        problems.append(f"{flag} must be a writable directory, but {out!r} {reason}")
    collect(problems)


def run(args) -> int:
    check_inputs(args)
    result = export_plan(args.plan, args.to, args.out, strict=args.strict, steps=args.steps)
    for path in result.written:
        print(f"wrote {path}")
    for line in result.notes:
        print(f"note: {line}")
    if result.lost:
        print(f"{result.target} cannot express all of the plan; the nearest equivalent was written. Lost:")
        for line in result.lost:
            print(f"  - {line}")
    else:
        print(f"{result.target}: the plan is expressed exactly")
    return 0
