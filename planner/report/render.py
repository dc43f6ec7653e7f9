"""Writers: a self-contained HTML file (figures as base64 PNG data URIs) and Markdown with the PNGs beside it."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from planner.report.data import NO_STUDY, SECTIONS, ReportData, gib
from planner.units import format_bytes

SECTION_TITLES = {
    "breakdown": "Memory breakdown",
    "tradeoff": "Metric against predicted peak memory",
    "sweeps": "Predicted peak against γ and the lowest active layer",
    "importance": "Per-layer importance over training",
    "history": "Optimization history",
    "savings": "Savings",
}
SECTION_TEXT = {
    "breakdown": "Predicted peak memory of full fine-tuning, LoRA, QLoRA, LISA's defaults and the tuned plan, "
    "split into weights, gradients, optimizer state, activations, transient buffers and device overhead.",
    "tradeoff": "Every trained trial; the line joins the Pareto front (no other trial has both a better metric and "
    "a lower predicted peak). Trials the budget gate rejected were never trained: hollow markers on the "
    "lower strip, at their predicted peak.",
    "sweeps": "How the predicted peak grows with the number of active layers γ, and how it depends on the lowest "
    "layer a sampler may draw (with embeddings frozen, backpropagation stops there).",
    "importance": "Per-layer sampling weights recorded during training by adaptive scorers (one map per scorer, its "
    "best trial).",
    "history": "The metric of each trained trial in the order they ran (confirmation runs marked), and the best "
    "search trial so far.",
    "savings": "Peak memory saved against full fine-tuning, and metric differences against LoRA and LISA's defaults.",
}


def _gib_digits(data: ReportData) -> int:
    """Decimals that keep a table of sub-GiB peaks readable: 2 from 10 GiB up, 3 from 1 GiB, else 4."""
    top = max((gib(r.peak_bytes) for r in data.savings), default=0.0)
    return 2 if top >= 10 else (3 if top >= 1 else 4)


def _fmt_gib(n, digits: int = 2) -> str:
    return "-" if n is None else f"{gib(n):.{digits}f}"


def _fmt_signed(x, digits: int = 4) -> str:
    return "-" if x is None else f"{x:+.{digits}f}"


def _fmt(x, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _fits(v) -> str:
    return "-" if v is None else ("yes" if v else "no")


def savings_rows(data: ReportData) -> tuple[list[str], list[list[str]]]:
    """The savings table as header and formatted cells (shared by both writers)."""
    head = [
        "configuration",
        "peak (GiB)",
        "fits",
        "saved vs full (GiB)",
        "saved vs full (%)",
        data.metric_name,
        "Δ vs LoRA",
        "Δ vs LISA defaults",
    ]
    rows, digits = [], _gib_digits(data)
    for r in data.savings:
        rows.append(
            [
                r.label,
                _fmt_gib(r.peak_bytes, digits),
                _fits(r.fits),
                _fmt_gib(r.saving_bytes, digits),
                "-" if r.saving_pct is None else f"{r.saving_pct:.1f}",
                _fmt(r.metric),
                _fmt_signed(r.delta_vs_lora),
                _fmt_signed(r.delta_vs_lisa),
            ]
        )
    return head, rows


def _summary(data: ReportData) -> list[str]:
    lines = [f"model: {data.model}" + (f" ({data.num_layers} decoder layers)" if data.num_layers else "")]
    lines.append("VRAM budget: " + (format_bytes(data.vram_bytes) if data.vram_bytes else "not given"))
    lines.append(f"device: {data.device}; metric: {data.metric_name} ({data.direction})")
    if data.source == "study":
        c = data.counts
        lines.append(
            f"trials: {c.get('trials', 0)} ({c.get('complete', 0)} complete, {c.get('gated', 0)} rejected "
            f"by the budget gate, {c.get('pruned', 0)} pruned early, {c.get('failed', 0)} failed, "
            f"{c.get('running', 0)} unfinished)"
        )
        lines.append("tuned plan: " + (f"trial #{data.best_trial}" if data.best_trial is not None else "none"))
    else:
        lines.append(NO_STUDY)
    lines += data.details
    if data.synthetic:
        lines.append("SYNTHETIC: this study's trials were made up to show the report, not measured")
    return lines


def _sweep_notes(data: ReportData) -> list[str]:
    out = []
    for s in (data.active_layers_sweep, data.depth_sweep):
        if s is not None and s.note:
            out.append(f"{s.x_label}: {s.note}")
    return out


def write_html(data: ReportData, figures: dict[str, Path], path: str | Path) -> Path:
    """One HTML file with every figure embedded; sections without data say why."""
    path = Path(path)
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(data.title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}.note{color:#a33}"
        ".meta li{margin:2px 0}</style>",
        "</head><body>",
        f"<h1>{esc(data.title)}</h1>",
        '<ul class="meta">',
    ]
    parts += [f"<li>{esc(line)}</li>" for line in _summary(data)]
    parts.append("</ul>")
    for section in SECTIONS:
        title = SECTION_TITLES[section]
        parts.append(f'<section id="{section}"><h2>{esc(title)}</h2><p>{esc(SECTION_TEXT[section])}</p>')
        if section in data.notes:
            parts.append(f'<p class="note">{esc(data.notes[section])}</p>')
        if section == "sweeps":
            parts += [f"<p>{esc(n)}</p>" for n in _sweep_notes(data)]
        if section in figures:
            b64 = base64.b64encode(Path(figures[section]).read_bytes()).decode("ascii")
            parts.append(f'<img alt="{esc(title)}" src="data:image/png;base64,{b64}">')
        if section == "savings" and data.savings:
            head, rows = savings_rows(data)
            parts.append("<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>")
            parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows]
            parts.append("</tbody></table>")
        parts.append("</section>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def write_markdown(data: ReportData, figures: dict[str, Path], path: str | Path) -> Path:
    """Markdown that links the PNGs by relative path (they lie beside it)."""
    path = Path(path)
    lines = [f"# {data.title}", ""]
    lines += [f"- {line}" for line in _summary(data)]
    for section in SECTIONS:
        title = SECTION_TITLES[section]
        lines += ["", f"## {title}", "", SECTION_TEXT[section], ""]
        if section in data.notes:
            lines += [f"**{data.notes[section]}**", ""]
        if section == "sweeps":
            lines += [f"- {n}" for n in _sweep_notes(data)] + [""]
        if section in figures:
            rel = (
                Path(figures[section]).resolve().relative_to(path.parent.resolve()).as_posix()
                if Path(figures[section]).resolve().is_relative_to(path.parent.resolve())
                else str(figures[section])
            )
            lines += [f"![{title}]({rel})", ""]
        if section == "savings" and data.savings:
            head, rows = savings_rows(data)
            lines.append("| " + " | ".join(head) + " |")
            lines.append("|" + "|".join([":---"] + ["---:"] * (len(head) - 1)) + "|")
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
            lines.append("")
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return path
