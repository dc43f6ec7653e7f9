"""Report data: what a report shows (bars, trials, sweeps, importance maps, history, savings), as plain data.

``planner.report.study`` fills a :class:`ReportData` from an Optuna study written by ``planner tune``
(trial records as documented in docs/study-record.md), ``planner.report.plan`` from a saved Plan;
``planner.report.plots`` renders it and ``planner.report.render`` writes it. Every number in a report
is here, so it is testable without matplotlib.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, overload

from planner.config import TrainConfig
from planner.plan import BREAKDOWN_KEYS
from planner.tune.study.baselines import BASELINE_LABELS, FULL_BASELINE, LISA_BASELINE, LORA_BASELINE, QLORA_BASELINE
from planner.units import GiB

# the bars' order; the baselines themselves are defined once, in planner.tune.study.baselines
BASELINES = tuple(
    (kind.name, BASELINE_LABELS[kind]) for kind in (FULL_BASELINE, LORA_BASELINE, QLORA_BASELINE, LISA_BASELINE)
)
PLAN_KEY, PLAN_LABEL = "plan", "tuned plan"

# report sections, in order; ``ReportData.notes[section]`` says why one is empty
SECTIONS = ("breakdown", "tradeoff", "sweeps", "importance", "history", "savings")
NO_STUDY = "no study: this report was made from a plan file alone"

Estimator = Callable[[Any, TrainConfig], tuple[int, dict[str, int]]]


@dataclass
class Bar:
    """One configuration's predicted memory, split into the cost model's six parts."""

    key: str  # full | lora | lisa | plan
    label: str
    breakdown: dict[str, int]
    peak_bytes: int
    source: str  # "trial #N" or "cost model"
    fits: bool | None = None
    metric: float | None = None
    trial_number: int | None = None


@dataclass
class TrialPoint:
    """One trial as the report sees it."""

    number: int
    state: str  # COMPLETE | PRUNED | FAIL | RUNNING | WAITING
    kind: str  # search | baseline:lisa | baseline:full | baseline:lora
    peak_bytes: int | None
    metric: float | None
    gated: bool
    fits: bool | None
    reason: str
    active_layers: int | None
    lowest_layer: int | None
    scorer: str | None
    pareto: bool = False


@dataclass
class Curve:
    label: str
    x: list[int]
    y: list[int]  # predicted peak bytes


@dataclass
class Sweep:
    """Predicted peak against one knob: cost-model curves and/or the trials' own predictions."""

    x_label: str
    curves: list[Curve] = field(default_factory=list)
    points: list[tuple[int, int, int]] = field(default_factory=list)  # (x, peak bytes, trial number)
    note: str = ""
    active_layers: int | None = None  # the γ the lowest-layer curves hold fixed


@dataclass
class ImportanceMap:
    """Per-layer sampling weights over training for one trial (rows: steps, columns: layers)."""

    trial_number: int
    scorer: str
    steps: list[int]
    num_layers: int
    weights: list[list[float]]
    active: list[list[int]]
    metric: float | None = None


@dataclass
class HistoryPoint:
    number: int
    kind: str
    metric: float
    best_so_far: float | None  # best search-trial metric up to and including this trial


@dataclass
class SavingsRow:
    key: str
    label: str
    peak_bytes: int
    fits: bool | None
    saving_bytes: int | None  # against full fine-tuning
    saving_pct: float | None
    metric: float | None
    delta_vs_lora: float | None
    delta_vs_lisa: float | None


@dataclass
class ReportData:
    """Everything one report shows."""

    name: str
    title: str
    source: str  # "study" | "plan"
    model: str
    num_layers: int | None
    vram_bytes: int | None
    metric_name: str
    direction: str  # maximize | minimize
    device: str
    bars: list[Bar] = field(default_factory=list)
    trials: list[TrialPoint] = field(default_factory=list)
    best_trial: int | None = None
    active_layers_sweep: Sweep | None = None
    depth_sweep: Sweep | None = None
    importance: list[ImportanceMap] = field(default_factory=list)
    history: list[HistoryPoint] = field(default_factory=list)
    savings: list[SavingsRow] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    synthetic: bool = False
    details: list[str] = field(default_factory=list)  # one-line facts about where the data came from

    def to_dict(self) -> dict:
        return asdict(self)


def breakdown_dict(obj) -> dict[str, int]:
    """A breakdown given as a dict, a pydantic model or an object with attributes."""
    if obj is None:
        return {}
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump()
    if isinstance(obj, dict):
        return {k: int(obj.get(k, 0) or 0) for k in BREAKDOWN_KEYS}
    return {k: int(getattr(obj, k, 0) or 0) for k in BREAKDOWN_KEYS}


def fits_budget(peak: int, vram: int | None) -> bool | None:
    """Whether ``peak`` bytes fit ``vram`` (None: no budget to fit)."""
    return None if vram is None else peak <= vram


# ---------------------------------------------------------------- savings


def savings_table(bars: list[Bar], reference_metrics: dict[str, float | None] | None = None) -> list[SavingsRow]:
    """Savings against full fine-tuning (bytes and %), metric differences against LoRA and LISA's defaults.

    saving = peak_full - peak;  saving % = 100 · saving / peak_full;  Δ = metric - metric_baseline.
    The baselines' metrics come from their bars, or from ``reference_metrics`` (key -> metric) when a bar is missing.
    """
    by_key = {b.key: b for b in bars}
    full = by_key.get("full")
    ref = {k: v for k, v in (reference_metrics or {}).items() if v is not None}
    ref.update({k: m for k in ("lora", "lisa") if k in by_key and (m := by_key[k].metric) is not None})
    m_lora, m_lisa = ref.get("lora"), ref.get("lisa")
    rows = []
    for b in bars:
        saving = pct = None
        if full is not None and full.peak_bytes > 0:
            saving = full.peak_bytes - b.peak_bytes
            pct = 100.0 * saving / full.peak_bytes
        d_lora = (b.metric - m_lora) if (m_lora is not None and b.metric is not None) else None
        d_lisa = (b.metric - m_lisa) if (m_lisa is not None and b.metric is not None) else None
        rows.append(SavingsRow(b.key, b.label, b.peak_bytes, b.fits, saving, pct, b.metric, d_lora, d_lisa))
    return rows


@overload
def gib(n: int | float) -> float: ...
@overload
def gib(n: None) -> None: ...
def gib(n: int | float | None) -> float | None:
    """Bytes to GiB (the unit every figure and table uses)."""
    return None if n is None else n / GiB
