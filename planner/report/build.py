"""One call from a study or a plan file to a written report: data, then figures, then HTML and Markdown."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from planner.errors import PlannerError
from planner.plan import Plan
from planner.report import study as rstudy
from planner.report.data import ReportData
from planner.report.plan import plan_report_data
from planner.report.render import write_html, write_markdown
from planner.writable import unwritable_reason

DEFAULT_REPORTS_DIR = Path("reports")


@dataclass
class ReportFiles:
    html: Path
    markdown: Path
    figures: dict[str, Path]
    data: "ReportData"


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "report"


def write_report(
    *,
    study: str | None = None,
    storage: str | None = None,
    plan: str | Path | None = None,
    out: str | Path | None = None,
    device: str | None = None,
    dpi: int | None = None,
) -> ReportFiles:
    """Write ``report.html`` (self-contained) and ``report.md`` with its PNGs into ``out``
    (default ``reports/<study or plan name>/``) from study ``study`` in ``storage``, or from a plan file."""
    if (study is None) == (plan is None):
        raise PlannerError(f"give either --study NAME or a PLAN.yaml, but got study={study!r} and plan={plan!r}")
    if study is not None:
        data = rstudy.study_report_data(rstudy.load_study(study, storage), device=device)
    else:
        assert plan is not None  # exactly one of study and plan, as checked above
        p = Plan.load(plan)
        path = Path(plan)
        # studies/<study>/plan.yaml is how `planner tune` names plans: call it "<study>-plan"
        name = f"{path.resolve().parent.name}-plan" if path.stem == "plan" else path.stem
        data = plan_report_data(p, name=name, device=device)
    out_dir = Path(out) if out is not None else DEFAULT_REPORTS_DIR / _safe_name(data.name)
    problem = out_problem(out_dir, given=out is not None)
    if problem:
        raise PlannerError(problem)

    # matplotlib (about a second): deferred to drawing; 'planner report' checks --out with this module first
    from planner.report.plots import DPI, render_figures

    # every file is made in a fresh folder beside the others and moved in once all are whole: a full disk
    # leaves no cut file and the previous report as it was
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".report-", dir=out_dir))
        try:
            figures = render_figures(data, staging, dpi=dpi or DPI)
            write_html(data, figures, staging / "report.html")
            write_markdown(data, figures, staging / "report.md")
            for made in sorted(staging.iterdir()):
                os.replace(made, out_dir / made.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        flag = "--out" if out is not None else _DEFAULT_FLAG
        raise PlannerError(
            f"{flag} must be a directory with room for the report, but writing into {str(out_dir)!r} failed "
            f"({exc.strerror or exc}): no report file was written"
        ) from None
    figures = {section: out_dir / path.name for section, path in figures.items()}
    return ReportFiles(out_dir / "report.html", out_dir / "report.md", figures, data)


_DEFAULT_FLAG = "the report folder (reports/<name>/; set --out)"


def out_problem(out_dir: str | Path, *, given: bool) -> str | None:
    """Why the report cannot be written into ``out_dir`` (``given``: by --out), found by trying; None when it can."""
    reason = unwritable_reason(out_dir, directory=True)
    return (
        None
        if reason is None
        else f"{'--out' if given else _DEFAULT_FLAG} must be a writable directory, but {str(out_dir)!r} {reason}"
    )
