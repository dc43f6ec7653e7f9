"""Exporters: the winning plan as ready files for other trainers, one module per target.

Targets live in :mod:`planner.export.targets` and register with :func:`register_exporter`.
:func:`export_plan` is what ``planner export`` calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from planner.errors import PlannerError, collect
from planner.writable import write_atomic
from planner.export.base import EXPORTERS, Export, Exporter, fixed_layers, get_exporter, min_depth, register_exporter
from planner.export import targets  # noqa: F401  (registration)
from planner.plan import Plan

__all__ = ["EXPORTERS", "Export", "ExportResult", "Exporter", "export_plan", "get_exporter", "register_exporter"]


@dataclass
class ExportResult:
    """Files written (in order) and what the target cannot express."""

    target: str
    out_dir: Path
    written: list[Path]
    lost: list[str]
    notes: list[str]  # what the user should know that the plan does not lose, e.g. whose horizon max_steps is


def export_plan(
    plan_path: str | Path,
    target: str,
    out_dir: str | Path | None = None,
    *,
    strict: bool = False,
    steps: int | None = None,
) -> ExportResult:
    """Write ``target``'s files for the plan at ``plan_path`` into ``out_dir`` (default ``export/<target>``).

    ``steps`` is the training run's length in optimizer steps (default: the plan's, what each trial trained).
    With ``strict``, a target that cannot express the whole plan writes nothing and raises
    :class:`PlannerError` naming every loss.
    """
    exporter = get_exporter(target)  # validate --to before reading the plan, so a typo is named first
    if steps is not None and steps < 1:
        raise PlannerError(f"--steps must be >= 1, but got {steps}")
    plan = Plan.load(plan_path)
    _check(plan)
    notes = []
    if steps is not None:
        plan = plan.model_copy(update={"steps": steps})
    elif plan.steps is not None and plan.proxy is not None and plan.proxy.kind != "target":
        notes.append(
            f"max steps {plan.steps} is the horizon of the proxy the plan was ranked on ({plan.proxy.name}), not a "
            f"training length for {plan.model}: give yours with --steps N"
        )
    out = Path(out_dir) if out_dir is not None else Path("export") / target
    exporter.out_dir = out
    result = exporter.render(plan)
    if strict and result.lost:
        raise PlannerError(f"--strict: {target} cannot express this plan exactly: " + "; ".join(result.lost))
    try:
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name, text in result.files.items():
            path = write_atomic(out / name, text)  # whole or not at all (a full disk)
            if name.endswith((".sh", ".py")):
                path.chmod(path.stat().st_mode | 0o111)
            written.append(path)
    except OSError as exc:
        raise PlannerError(
            f"--out must be a writable directory, but {str(out)!r} is not ({exc.strerror or exc})"
        ) from None
    return ExportResult(target, out, written, list(result.lost), notes)


def _check(plan) -> None:
    """Every inconsistency of a plan with its own model, at once."""
    problems: list[str] = []
    try:
        plan.train.check_against(plan.num_layers)
    except PlannerError as exc:
        problems += getattr(exc, "problems", [str(exc)])
    try:
        fixed = fixed_layers(plan)
    except (TypeError, ValueError):
        fixed = None
        problems.append(
            f"fixed scorer options must be `layers: [int, ...]` or `top: int`, but got {plan.scorer_options}"
        )
    if fixed is not None:
        bad = [i for i in fixed if not 0 <= i < plan.num_layers]
        if bad:
            problems.append(f"plan layers must satisfy 0 <= i < {plan.num_layers}, but got {bad}")
        if not fixed:
            problems.append("plan layers must name at least one layer when set, but got []")
    elif plan.active_layers > plan.num_layers - min_depth(plan):
        problems.append(
            f"`active_layers <= num_layers - min_depth` must hold, but got {plan.active_layers} > {plan.num_layers} - {min_depth(plan)}"
        )
    collect(list(dict.fromkeys(problems)))
