"""`planner report`: cost-benefit report (HTML + Markdown with figures) from a study or a plan file."""

from __future__ import annotations

from planner.errors import collect


def add_parser(sub) -> None:
    p = sub.add_parser(
        "report",
        help="write an HTML/Markdown cost-benefit report from a study or a plan",
        description="Write reports/<name>/report.html (self-contained) and report.md with its PNGs, "
        "from a tuning study (--study) or from a plan file alone.",
    )
    p.add_argument("plan", nargs="?", metavar="PLAN.yaml", help="a plan written by `planner tune` (instead of --study)")
    p.add_argument("--study", metavar="NAME", help="study name in the storage")
    p.add_argument("--storage", metavar="URL", help="Optuna storage URL (default: sqlite:///studies/planner.db)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: reports/<name>/)")
    p.add_argument(
        "--device", choices=("cpu", "cuda"), help="device for cost-model estimates (default: the study's or plan's)"
    )
    p.add_argument("--dpi", type=int, default=100, help="figure resolution (default: 100)")
    p.set_defaults(func=run)


def run(args) -> int:
    problems = []
    if (args.study is None) == (args.plan is None):
        problems.append(
            f"give exactly one of --study NAME or PLAN.yaml, but got --study={args.study!r} and PLAN.yaml={args.plan!r}"
        )
    if args.storage is not None and args.plan is not None:
        problems.append(f"--storage goes with --study, but got a plan file {args.plan!r}")
    if not 20 <= args.dpi <= 600:
        problems.append(f"--dpi must satisfy 20 <= dpi <= 600, but got {args.dpi}")
    # the report modules (~30 ms) load when a report is written, not with 'planner --help'
    from planner.report.build import DEFAULT_REPORTS_DIR, out_problem, write_report

    # before any reading: --out, or the reports/ folder the default reports/<name>/ goes into
    problem = out_problem(args.out if args.out is not None else DEFAULT_REPORTS_DIR, given=args.out is not None)
    if problem:
        problems.append(problem)
    collect(problems)
    files = write_report(
        study=args.study, storage=args.storage, plan=args.plan, out=args.out, device=args.device, dpi=args.dpi
    )
    print(f"wrote {files.html}")
    print(f"wrote {files.markdown} (+ {len(files.figures)} PNG figure(s))")
    for section, why in files.data.notes.items():
        print(f"  {section}: {why}")
    return 0
