"""Figures for a report: each function draws one section of a ReportData; nothing is computed here."""

from __future__ import annotations

import textwrap

from pathlib import Path

from matplotlib.artist import Artist
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from planner.plan import BREAKDOWN_KEYS
from planner.report.data import ReportData, TrialPoint, gib
from planner.tune.study.baselines import FULL_BASELINE, LISA_BASELINE, LORA_BASELINE, QLORA_BASELINE
from planner.tune.study.kinds import SEARCH, Confirm, parse_kind

DPI = 100
PART_COLORS = {
    "weights": "#4c72b0",
    "gradients": "#dd8452",
    "optimizer": "#55a868",
    "activations": "#c44e52",
    "transient": "#8172b3",
    "overhead": "#937860",
}
CONFIRM_STYLE = "confirm"  # one style for every confirmation run
KIND_STYLE = {  # marker, color, label
    SEARCH: ("o", "#4c72b0", "search trial"),
    FULL_BASELINE: ("s", "#c44e52", "full fine-tuning"),
    LORA_BASELINE: ("^", "#55a868", "LoRA"),
    QLORA_BASELINE: ("P", "#2f7d4f", "QLoRA (4-bit base)"),
    LISA_BASELINE: ("D", "#dd8452", "LISA defaults"),
    CONFIRM_STYLE: ("v", "#8172b3", "confirmation run (a plan again, another seed)"),
}
BUDGET_COLOR = "#d62728"
OFF_SCALE = 3.0  # a budget more than this many times the largest value drawn is written, not drawn


def _model_name(data: ReportData) -> str:
    """The model as a short title: a preset or hub id as given, a local path by its last part."""
    return Path(data.model).name if data.model.startswith(("/", ".", "~")) else data.model


def _kind(kind: str) -> str:
    """The style of a trial kind (:func:`planner.tune.study.record.parse_kind`): confirmation runs share one; kinds without
    a style of their own are drawn as search trials."""
    kind = parse_kind(kind)
    if isinstance(kind, Confirm):
        return CONFIRM_STYLE
    return kind if kind in KIND_STYLE else SEARCH


def _peak(p: TrialPoint) -> int:
    """The predicted peak of a trial drawn on a memory axis (only trials with one are)."""
    if p.peak_bytes is None:
        raise ValueError(f"trial #{p.number} has no predicted peak to draw")
    return p.peak_bytes


def _budget(ax, data: ReportData, values: list[float], *, vertical: bool = False) -> bool:
    """Draw the budget line, or, when it lies far beyond every value drawn, only name it in the legend
    (a 24 GB line over sub-GiB bars would flatten them). Returns whether the line was drawn."""
    if data.vram_bytes is None:
        return False
    v = gib(data.vram_bytes)
    label = f"VRAM budget {v:.2f} GiB"
    top = max(values, default=0.0)
    if top > 0 and v > OFF_SCALE * top:
        # an empty line carries the budget into the legend
        ax.plot(
            [],
            [],
            color=BUDGET_COLOR,
            ls="--",
            lw=1.2,
            label=f"{label}\n(off the scale: {v / top:.0f}× the largest value)",
        )
        return False
    (ax.axvline if vertical else ax.axhline)(v, color=BUDGET_COLOR, ls="--", lw=1.2, label=label)
    return True


TICK_WIDTH = 22  # characters per line of a bar's label
OVERHEAD_ZOOM = 0.5  # when device overhead is over half of a bar, a second panel shows the rest


def _stacked(ax, data: ReportData, parts, *, budget: bool, digits: int) -> None:
    # a baseline's label names its levers: wrapped so neighbours do not run into each other
    labels = [textwrap.fill(b.label, TICK_WIDTH) for b in data.bars]
    bottoms = [0.0] * len(data.bars)
    for part in parts:
        vals = [gib(b.breakdown.get(part, 0)) for b in data.bars]
        ax.bar(labels, vals, bottom=bottoms, color=PART_COLORS[part], label=part, width=0.6)
        bottoms = [x + y for x, y in zip(bottoms, vals)]
    for i, b in enumerate(data.bars):
        ax.annotate(
            f"{bottoms[i]:.{digits}f} GiB\n({b.source})",
            (i, bottoms[i]),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=8,
            zorder=5,
            bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none", alpha=0.85),
        )
    drawn = _budget(ax, data, bottoms) if budget else False
    top = max(bottoms + ([gib(data.vram_bytes)] if drawn and data.vram_bytes is not None else []) + [0.0])
    ax.set_ylim(0, top * 1.22 if top else 1)
    ax.set_ylabel("predicted peak memory (GiB)")
    ax.grid(axis="y", alpha=0.3)
    ax.tick_params(axis="x", labelsize=8)


def breakdown_figure(data: ReportData) -> Figure:
    """Stacked bars of the six memory parts per configuration, with the budget line; when device overhead
    dominates (small models on a GPU), a second panel without it."""
    zoom = any(b.peak_bytes and b.breakdown.get("overhead", 0) > OVERHEAD_ZOOM * b.peak_bytes for b in data.bars)
    fig = Figure(figsize=(13 if zoom else 8.5, 4.6), layout="constrained")
    axes = fig.subplots(1, 2 if zoom else 1, squeeze=False)[0]
    _stacked(axes[0], data, BREAKDOWN_KEYS, budget=True, digits=2)
    axes[0].set_title(
        "predicted peak" if zoom else f"Memory breakdown, {_model_name(data)}", fontsize=10 if zoom else 12
    )
    if zoom:
        _stacked(axes[1], data, [k for k in BREAKDOWN_KEYS if k != "overhead"], budget=False, digits=4)
        axes[1].set_title("without device overhead (CUDA context, workspaces, allocator)", fontsize=10)
        axes[1].set_ylabel("predicted peak without overhead (GiB)")
        fig.suptitle(f"Memory breakdown, {_model_name(data)}")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8, frameon=False)
    return fig


def tradeoff_figure(data: ReportData) -> Figure:
    """Metric against predicted peak for trained trials, the Pareto front, and gated trials on their own strip."""
    fig = Figure(figsize=(8.5, 5.4), layout="constrained")
    ax, strip = fig.subplots(2, 1, sharex=True, height_ratios=[4, 1])
    done = [p for p in data.trials if p.metric is not None and p.peak_bytes is not None]
    for kind, (marker, color, label) in KIND_STYLE.items():
        pts = [p for p in done if _kind(p.kind) == kind]
        if pts:
            ax.scatter(
                [gib(_peak(p)) for p in pts],
                [p.metric for p in pts],
                marker=marker,
                color=color,
                s=46 if kind == SEARCH else 70,
                alpha=0.8,
                label=label,
                zorder=3,
                edgecolor="white",
                lw=0.5,
            )
    front = sorted((p for p in done if p.pareto), key=_peak)
    if front:
        ax.plot(
            [gib(_peak(p)) for p in front],
            [p.metric for p in front],
            color="black",
            lw=1.2,
            drawstyle="steps-post",
            label="Pareto front",
            zorder=2,
        )
    best = next((p for p in done if p.number == data.best_trial), None)
    if best is not None:
        ax.scatter(
            [gib(_peak(best))],
            [best.metric],
            marker="*",
            s=260,
            color="gold",
            edgecolor="black",
            zorder=4,
            label=f"tuned plan (#{best.number})",
        )
    gated = [p for p in data.trials if p.gated and p.peak_bytes is not None]
    xs = [gib(_peak(p)) for p in done + gated]
    drawn = _budget(ax, data, xs, vertical=True)
    if drawn:
        _budget(strip, data, xs, vertical=True)
    ax.set_ylabel(data.metric_name + (" (higher is better)" if data.direction == "maximize" else " (lower is better)"))
    ax.set_title(f"{data.metric_name} against predicted peak memory")
    ax.grid(alpha=0.3)
    for i, p in enumerate(gated):
        marker, color, _ = KIND_STYLE[_kind(p.kind)]
        strip.scatter([gib(_peak(p))], [(i % 3) - 1], marker=marker, facecolor="none", edgecolor=color, s=50, lw=1.2)
    if not gated:
        strip.text(0.5, 0.5, "none", transform=strip.transAxes, ha="center", va="center", color="gray")
    strip.set_ylim(-2, 2)
    strip.set_yticks([])
    strip.set_ylabel("gated", rotation=0, ha="right", va="center")
    strip.set_title(
        f"rejected by the budget gate, never trained (metric unknown): {len(gated)} trial(s)", fontsize=9, loc="left"
    )
    strip.set_xlabel("predicted peak memory (GiB)")
    handles, labels = ax.get_legend_handles_labels()
    for kind in sorted({_kind(p.kind) for p in gated}, key=list(KIND_STYLE).index):
        marker, color, label = KIND_STYLE[kind]
        handles.append(Line2D([], [], marker=marker, ls="", markerfacecolor="none", markeredgecolor=color))
        labels.append(f"{label}, gated")
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    xs += [gib(data.vram_bytes)] if drawn and data.vram_bytes is not None else []
    if xs:
        lo, hi = min(xs), max(xs)
        pad = (hi - lo) * 0.06 or 0.5
        ax.set_xlim(max(0.0, lo - pad), hi + pad)
    return fig


def sweeps_figure(data: ReportData) -> Figure:
    """Predicted peak against γ and against the lowest active layer."""
    fig = Figure(figsize=(10, 4.6), layout="constrained")
    # separate y scales: the lowest-layer effect is small next to γ's
    axes = fig.subplots(1, 2)
    styles = ["-", "--", ":"]
    for ax, sweep in zip(axes, (data.active_layers_sweep, data.depth_sweep)):
        if sweep is None:
            ax.set_visible(False)
            continue
        for i, c in enumerate(sweep.curves):
            ax.plot(c.x, [gib(y) for y in c.y], ls=styles[i % 3], marker=".", lw=1.6, label=f"cost model: {c.label}")
        if sweep.points:
            ax.scatter(
                [p[0] for p in sweep.points],
                [gib(p[1]) for p in sweep.points],
                s=22,
                color="black",
                alpha=0.55,
                zorder=3,
                label="trials' own predicted peaks",
            )
        _budget(ax, data, [gib(y) for c in sweep.curves for y in c.y] + [gib(p[1]) for p in sweep.points])
        ax.set_xlabel(sweep.x_label)
        ax.set_ylabel("predicted peak memory (GiB)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        title = f"against {sweep.x_label}"
        if sweep.active_layers is not None and sweep.curves:
            title += f" (curves: γ = {sweep.active_layers})"
        ax.set_title(title, fontsize=10)
    seen: dict[str, Artist] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    if seen:
        fig.legend(
            list(seen.values()),
            list(seen),
            loc="outside lower center",
            ncol=2 if len(seen) > 3 else len(seen),
            fontsize=8,
            frameon=False,
        )
    fig.suptitle(f"Predicted peak memory, {_model_name(data)}")
    return fig


def importance_figure(data: ReportData) -> Figure:
    """Heatmaps of per-layer sampling weights over training, one per adaptive scorer."""
    n = len(data.importance)
    fig = Figure(figsize=(4.2 * n + 1.0, 4.2), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    # one colour scale over the weights' own range: adaptive weights often move by a few percent
    vmin = min(min(min(r) for r in m.weights) for m in data.importance)
    vmax = max(max(max(r) for r in m.weights) for m in data.importance)
    if vmax <= vmin:
        vmin, vmax = 0.0, vmax or 1.0
    im = None
    for ax, m in zip(axes, data.importance):
        # rows of the image are layers (layer 0 at the bottom), columns the recorded steps
        grid = [[m.weights[s][layer] for s in range(len(m.steps))] for layer in range(m.num_layers)]
        im = ax.imshow(
            grid,
            origin="lower",
            aspect="auto",
            cmap="viridis",
            vmin=vmin,
            vmax=vmax,
            extent=(-0.5, len(m.steps) - 0.5, -0.5, m.num_layers - 0.5),
            interpolation="nearest",
        )
        xs = [i for i, act in enumerate(m.active) for _ in act]
        ys = [a for act in m.active for a in act]
        if xs:
            ax.scatter(xs, ys, s=8, marker="s", facecolor="none", edgecolor="white", lw=0.6)
        ticks = sorted({0, len(m.steps) - 1} | set(range(0, len(m.steps), max(1, len(m.steps) // 5))))
        ax.set_xticks(ticks, [str(m.steps[i]) for i in ticks])
        ax.set_xlabel("training step")
        ax.set_ylabel("decoder layer")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        metric = f", {data.metric_name} {m.metric:.3f}" if m.metric is not None else ""
        ax.set_title(f"{m.scorer} (trial #{m.trial_number}{metric})", fontsize=9)
    if im is not None:
        fig.colorbar(im, ax=list(axes), label="sampling weight (white squares: active layers)", shrink=0.9)
    return fig


def history_figure(data: ReportData) -> Figure:
    """Metric per trial in order, the running best of the search, and gated trials as marks below."""
    fig = Figure(figsize=(8.5, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for kind, (marker, color, label) in KIND_STYLE.items():
        pts = [h for h in data.history if _kind(h.kind) == kind]
        if pts:
            ax.scatter(
                [h.number for h in pts],
                [h.metric for h in pts],
                marker=marker,
                color=color,
                s=36,
                label=label,
                zorder=3,
            )
    best = [(h.number, h.best_so_far) for h in data.history if h.best_so_far is not None]
    if best:
        ax.plot(
            [n for n, _ in best],
            [b for _, b in best],
            drawstyle="steps-post",
            color="black",
            lw=1.2,
            label="best search trial so far",
        )
    gated = [p.number for p in data.trials if p.gated]
    if gated:
        ax.plot(
            gated,
            [0] * len(gated),
            ls="",
            marker="|",
            ms=12,
            color=BUDGET_COLOR,
            transform=ax.get_xaxis_transform(),
            label="gated (never trained)",
            clip_on=False,
        )
    ax.set_xlabel("trial number")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(data.metric_name)
    ax.set_title("Optimization history")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return fig


FIGURES = {
    "breakdown": (breakdown_figure, lambda d: bool(d.bars)),
    "tradeoff": (tradeoff_figure, lambda d: any(p.metric is not None or p.gated for p in d.trials)),
    "sweeps": (
        sweeps_figure,
        lambda d: any(s is not None and (s.curves or s.points) for s in (d.active_layers_sweep, d.depth_sweep)),
    ),
    "importance": (importance_figure, lambda d: bool(d.importance)),
    "history": (history_figure, lambda d: bool(d.history)),
}


def render_figures(data: ReportData, out_dir: str | Path, *, dpi: int = DPI) -> dict[str, Path]:
    """Draw every section that has data into ``out_dir/<section>.png``; returns section -> path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (draw, has_data) in FIGURES.items():
        if not has_data(data):
            continue
        path = out_dir / f"{name}.png"
        draw(data).savefig(path, dpi=dpi)
        paths[name] = path
    return paths
