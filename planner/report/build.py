"""One call from a study or a plan file to a written report: data, then figures, then HTML and Markdown."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from planner.errors import PlannerError

if TYPE_CHECKING:
    from planner.report.data import ReportData

DEFAULT_REPORTS_DIR = Path("reports")


@dataclass
class ReportFiles:
    html: Path
    markdown: Path
    figures: dict[str, Path]
    data: "ReportData"


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "report"


def write_report(*, study: str | None = None, storage: str | None = None, plan: str | Path | None = None,
                 out: str | Path | None = None, device: str | None = None, dpi: int | None = None) -> ReportFiles:
    """Write ``report.html`` (self-contained) and ``report.md`` with its PNGs into ``out``
    (default ``reports/<study or plan name>/``) from study ``study`` in ``storage``, or from a plan file."""
    from planner.report import data as rdata
    from planner.report import study as rstudy

    if (study is None) == (plan is None):
        raise PlannerError(f"give either --study NAME or a PLAN.yaml, but got study={study!r} and plan={plan!r}")
    if study is not None:
        data = rstudy.study_report_data(rstudy.load_study(study, storage), device=device)
    else:
        from planner.plan import Plan

        p = Plan.load(plan)
        path = Path(plan)
        # studies/<study>/plan.yaml is how `planner tune` names plans: call it "<study>-plan"
        name = f"{path.resolve().parent.name}-plan" if path.stem == "plan" else path.stem
        data = rdata.plan_report_data(p, name=name, device=device)
    out_dir = Path(out) if out is not None else DEFAULT_REPORTS_DIR / _safe_name(data.name)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PlannerError(f"--out must be a directory we can write, but {str(out_dir)!r} is not ({exc.strerror})") from None

    from planner.report.plots import DPI, render_figures
    from planner.report.render import write_html, write_markdown

    figures = render_figures(data, out_dir, dpi=dpi or DPI)
    html = write_html(data, figures, out_dir / "report.html")
    md = write_markdown(data, figures, out_dir / "report.md")
    return ReportFiles(html, md, figures, data)
