"""Report data: everything a report shows, computed from a study or a plan, without drawing.

``planner.report.study.study_report_data`` reads an Optuna study written by ``planner tune``
(trial records as documented in docs/study-record.md); ``plan_report_data`` reads a
saved Plan. Both return a :class:`ReportData` that ``planner.report.plots`` renders and
``planner.report.render`` writes; every number in a report is here, so it is testable
without matplotlib.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, overload

from planner.config import TrainConfig
from planner.errors import PlannerError
from planner.plan import BREAKDOWN_KEYS, Plan
from planner.levers import labels
from planner.tune.study.baselines import BASELINE_LABELS, FULL_BASELINE, LISA_BASELINE, LORA_BASELINE, QLORA_BASELINE
from planner.tune.study.baselines import baseline_configs
from planner.tune.study.record import Baseline
from planner.units import GiB

MAX_SWEEP_POINTS = 16  # cost-model evaluations per curve; a 80-layer model is sampled, not walked

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


# ---------------------------------------------------------------- cost model


def _breakdown_dict(obj) -> dict[str, int]:
    """A breakdown given as a dict, a pydantic model or an object with attributes."""
    if obj is None:
        return {}
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump()
    if isinstance(obj, dict):
        return {k: int(obj.get(k, 0) or 0) for k in BREAKDOWN_KEYS}
    return {k: int(getattr(obj, k, 0) or 0) for k in BREAKDOWN_KEYS}


def cost_model_estimator(device: str = "cpu") -> Estimator | None:
    """``planner.cost.estimate`` as ``(spec, config) -> (peak_bytes, breakdown)``, or None when absent."""
    try:
        from planner.cost import estimate  # planner.cost (torch): deferred to the first estimate; optional here
    except ImportError:
        return None
    estimate = getattr(estimate, "estimate", estimate)  # the package may expose the module or the function
    if not callable(estimate):
        return None

    def run(spec, cfg: TrainConfig) -> tuple[int, dict[str, int]]:
        try:
            result = estimate(spec, cfg, device=device)
        except PlannerError:
            raise
        except Exception as exc:  # noqa: BLE001 - one configuration the cost model cannot trace must not sink the report
            first = (str(exc).strip().splitlines() or [""])[0]
            raise PlannerError(f"the cost model failed ({type(exc).__name__}: {first})") from None
        get = result.get if isinstance(result, dict) else lambda k, d=None: getattr(result, k, d)
        parts = _breakdown_dict(get("breakdown"))
        peak = get("peak_bytes")
        return int(peak if peak is not None else sum(parts.values())), parts

    return run


def _config(base: TrainConfig, **changes) -> TrainConfig:
    """``base`` with ``changes``, validated again."""
    data = base.model_dump()
    data.update(changes)
    return TrainConfig(**data)


def fits_with(estimator: Estimator, spec, vram: int | None):
    """``fits(config)`` for :func:`planner.tune.study.baselines.baseline_configs`: the estimate within ``vram``; a
    configuration the cost model cannot price does not fit."""

    def fits(cfg: TrainConfig) -> bool:
        try:
            return bool(_fits(estimator(spec, cfg)[0], vram))
        except PlannerError:
            return False

    return fits


def form_label(label: str, cfg: TrainConfig) -> str:
    """A baseline's label with the levers of the form it is costed in, e.g. ``LoRA (checkpointing)``."""
    words = labels(cfg)
    return f"{label} ({', '.join(words)})" if words else label


def _spread(lo: int, hi: int, n: int = MAX_SWEEP_POINTS) -> list[int]:
    """Up to ``n`` integers from ``lo`` to ``hi`` inclusive, both ends kept."""
    if hi < lo:
        return []
    if hi - lo + 1 <= n:
        return list(range(lo, hi + 1))
    return sorted({round(lo + i * (hi - lo) / (n - 1)) for i in range(n)})


def _sweep_curves(
    spec, base: TrainConfig, estimator: Estimator, knob: str, active_layers: int
) -> tuple[list[Curve], str]:
    """Cost-model peaks against γ (``knob='active_layers'``) or the lowest active layer (``knob='depth'``),
    once with embeddings and head trained and once with them frozen; also the first failure, if any."""
    L = spec.num_layers
    curves, error = [], ""
    for emb, label in ((True, "embeddings + head trained"), (False, "embeddings + head frozen")):
        xs = _spread(1, L) if knob == "active_layers" else _spread(0, L - active_layers)
        x_ok, y_ok = [], []
        for x in xs:
            if knob == "active_layers":
                cfg_changes = dict(active_layers=x, min_depth=0)
            else:
                cfg_changes = dict(active_layers=active_layers, min_depth=x)
            try:
                cfg = _config(base, layers=None, train_embeddings=emb, train_head=emb, **cfg_changes)
                cfg.check_against(L)
                peak, _ = estimator(spec, cfg)
            except PlannerError as exc:
                error = error or str(exc)
                continue
            x_ok.append(x)
            y_ok.append(int(peak))
        if x_ok:
            curves.append(Curve(label, x_ok, y_ok))
    return curves, error


def _model_sweeps(
    active_layers_sweep: "Sweep",
    depth_sweep: "Sweep",
    spec,
    base,
    estimator,
    active_layers: int,
    active_layers_note: str,
    depth_note: str,
) -> tuple[str, str]:
    """Fill both sweeps with cost-model curves around ``base``; return the errors that cut them short."""
    active_layers_sweep.curves, g_err = _sweep_curves(spec, base, estimator, "active_layers", active_layers)
    depth_sweep.curves, d_err = _sweep_curves(spec, base, estimator, "depth", active_layers)
    depth_sweep.active_layers = active_layers
    active_layers_sweep.note = _curve_note(active_layers_note, active_layers_sweep, g_err)
    depth_sweep.note = _curve_note(depth_note, depth_sweep, d_err)
    return g_err, d_err


def _curve_note(note: str, sweep: Sweep, error: str) -> str:
    if not error:
        return note
    if not sweep.curves:
        return f"{note}; no cost-model curve: {error}"
    return f"{note}; some points left out: {error}"


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


def _fits(peak: int, vram: int | None) -> bool | None:
    return None if vram is None else peak <= vram


# ---------------------------------------------------------------- plan


def plan_report_data(
    plan: Plan, *, name: str, estimator: Estimator | None = None, device: str | None = None
) -> ReportData:
    """Report data for a plan alone: bars, sweeps and savings from the cost model; the rest says "no study"."""
    from planner.spec import load_spec  # planner.spec (torch): deferred, a report's inputs are read before it

    device = device or ("cuda" if plan.breakdown.overhead > 0 else "cpu")
    notes = {s: NO_STUDY for s in ("tradeoff", "importance", "history")}
    try:
        spec = load_spec(plan.model)
        why = ""
    except PlannerError as exc:
        spec, why = None, f"model {plan.model!r} cannot be loaded by name ({exc})"
    if spec is not None and estimator is None:
        estimator = cost_model_estimator(device)
        if estimator is None:
            why = "the cost model is not available"
    metrics = {}
    keys = {key for key, _ in BASELINES}
    recorded = {}  # a baseline's name -> the peak the study predicted for it, in the form it trained in
    for b in plan.baselines:
        key = b.name.lower().removeprefix("baseline:")
        if key in keys:  # by name: "lora" must not take "qlora"'s figures
            metrics[key], recorded[key] = b.metric, b.predicted_peak_bytes
    bars: list[Bar] = []
    active_layers_sweep = depth_sweep = None
    if spec is not None and estimator is not None:
        plan.train.check_against(spec.num_layers)
        failed = []
        fits = fits_with(estimator, spec, plan.vram_bytes)
        # the plan's training shape; its optimizer may be a recipe's (a baseline that won), so the default
        # optimizer is tried too, and the form whose peak the study recorded is the one drawn
        shapes = [
            baseline_configs(base, spec.num_layers, fits=fits)
            for base in (
                plan.train,
                plan.train.model_copy(update={"optimizer": TrainConfig.model_fields["optimizer"].default}),
            )
        ]
        for key, label in BASELINES:
            try:
                priced = [(c, *estimator(spec, c)) for c in (s[Baseline(key)] for s in shapes)]
            except PlannerError as exc:
                failed.append(f"{label}: {exc}")
                continue
            cfg, peak, parts = next((p for p in priced if p[1] == recorded.get(key)), priced[0])
            bars.append(
                Bar(
                    key,
                    form_label(label, cfg),
                    parts,
                    peak,
                    "cost model",
                    _fits(peak, plan.vram_bytes),
                    metrics.get(key),
                )
            )
        try:
            peak, parts = estimator(spec, plan.train)
            source = "cost model"
        except PlannerError as exc:
            failed.append(f"{PLAN_LABEL}: {exc}; drawn from the plan file")
            peak, parts, source = plan.predicted_peak_bytes, _breakdown_dict(plan.breakdown), "plan file"
        bars.append(
            Bar(PLAN_KEY, PLAN_LABEL, parts, peak, source, _fits(peak, plan.vram_bytes), plan.metric, plan.trial_number)
        )
        if failed:
            notes["breakdown"] = "; ".join(failed)
        active_layers = plan.train.active_layers or (len(plan.layers) if plan.layers else plan.active_layers)
        sweep_base = (
            plan.train if plan.train.active_layers else _config(plan.train, layers=None, active_layers=active_layers)
        )
        active_layers_sweep, depth_sweep = Sweep("active layers γ"), Sweep("lowest active layer")
        g_err, d_err = _model_sweeps(
            active_layers_sweep,
            depth_sweep,
            spec,
            sweep_base,
            estimator,
            active_layers,
            f"cost model for {plan.model}",
            f"γ = {active_layers}, the sampler never drawing below the layer on the x axis",
        )
        if not active_layers_sweep.curves and not depth_sweep.curves:
            notes["sweeps"] = f"no cost-model curve ({g_err or d_err})"
    else:
        # without a cost model the plan still carries its own prediction
        parts = _breakdown_dict(plan.breakdown)
        bars.append(
            Bar(
                PLAN_KEY,
                PLAN_LABEL,
                parts,
                plan.predicted_peak_bytes,
                "plan file",
                _fits(plan.predicted_peak_bytes, plan.vram_bytes),
                plan.metric,
                plan.trial_number,
            )
        )
        notes["sweeps"] = f"no cost model ({why})"
        notes["breakdown"] = f"only the plan's own breakdown ({why})"
    return ReportData(
        name=name,
        title=f"planner report: plan {name}",
        source="plan",
        model=plan.model,
        num_layers=plan.num_layers,
        vram_bytes=plan.vram_bytes,
        metric_name=plan.metric_name,
        direction="maximize",
        device=device,
        bars=bars,
        best_trial=plan.trial_number,
        active_layers_sweep=active_layers_sweep,
        depth_sweep=depth_sweep,
        savings=savings_table(bars, metrics),
        notes=notes,
        details=[
            f"plan: γ = {plan.active_layers}, K = {plan.period}, scorer {plan.scorer}, embeddings "
            f"{'trained' if plan.train_embeddings else 'frozen'}, head {'trained' if plan.train_head else 'frozen'}"
            + (f", from study {plan.study_name} trial #{plan.trial_number}" if plan.study_name else "")
        ],
    )


@overload
def gib(n: int | float) -> float: ...
@overload
def gib(n: None) -> None: ...
def gib(n: int | float | None) -> float | None:
    """Bytes to GiB (the unit every figure and table uses)."""
    return None if n is None else n / GiB
