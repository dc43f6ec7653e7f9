"""Report data: everything a report shows, computed from a study or a plan, without drawing.

``study_report_data`` reads an Optuna study written by ``planner tune`` (trial records as
documented in the README's ``tune`` section); ``plan_report_data`` reads a saved Plan.
Both return a :class:`ReportData` that ``planner.report.plots`` renders and
``planner.report.render`` writes; every number in a report is here, so it is testable
without matplotlib.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from planner.config import TrainConfig
from planner.errors import PlannerError
from planner.plan import BREAKDOWN_KEYS, Plan
from planner.tune.baselines import LORA_BASELINE_RANK
from planner.tune.space import LISA_GAMMA as LISA_DEFAULT_GAMMA
from planner.units import GiB

MAX_SWEEP_POINTS = 16  # cost-model evaluations per curve; a 80-layer model is sampled, not walked
MAX_IMPORTANCE_MAPS = 4

BASELINES = (("full", "full fine-tuning"), ("lora", "LoRA"), ("lisa", "LISA defaults"))
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
    gamma: int | None
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
    gamma: int | None = None  # the γ the lowest-layer curves hold fixed


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
    gamma_sweep: Sweep | None = None
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
        from planner.cost import estimate
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


def baseline_configs(base: TrainConfig) -> dict[str, TrainConfig]:
    """Full fine-tuning, LoRA (rank 16 on every layer, embeddings and head frozen) and LISA's defaults."""
    static = dict(active_layers=None, min_depth=0)
    return {
        "full": _config(base, layers="all", train_embeddings=True, train_head=True, lora_rank=None, **static),
        "lora": _config(base, layers="all", train_embeddings=False, train_head=False, lora_rank=LORA_BASELINE_RANK, **static),
        "lisa": _config(base, layers=None, active_layers=LISA_DEFAULT_GAMMA, min_depth=0,
                        train_embeddings=True, train_head=True, lora_rank=None),
    }


def _spread(lo: int, hi: int, n: int = MAX_SWEEP_POINTS) -> list[int]:
    """Up to ``n`` integers from ``lo`` to ``hi`` inclusive, both ends kept."""
    if hi < lo:
        return []
    if hi - lo + 1 <= n:
        return list(range(lo, hi + 1))
    return sorted({round(lo + i * (hi - lo) / (n - 1)) for i in range(n)})


def _sweep_curves(spec, base: TrainConfig, estimator: Estimator, knob: str, gamma: int) -> tuple[list[Curve], str]:
    """Cost-model peaks against γ (``knob='gamma'``) or the lowest active layer (``knob='depth'``),
    once with embeddings and head trained and once with them frozen; also the first failure, if any."""
    L = spec.num_layers
    curves, error = [], ""
    for emb, label in ((True, "embeddings + head trained"), (False, "embeddings + head frozen")):
        xs = _spread(1, L) if knob == "gamma" else _spread(0, L - gamma)
        x_ok, y_ok = [], []
        for x in xs:
            if knob == "gamma":
                cfg_changes = dict(active_layers=x, min_depth=0)
            else:
                cfg_changes = dict(active_layers=gamma, min_depth=x)
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


def _model_sweeps(gamma_sweep: "Sweep", depth_sweep: "Sweep", spec, base, estimator, gamma: int,
                  gamma_note: str, depth_note: str) -> tuple[str, str]:
    """Fill both sweeps with cost-model curves around ``base``; return the errors that cut them short."""
    gamma_sweep.curves, g_err = _sweep_curves(spec, base, estimator, "gamma", gamma)
    depth_sweep.curves, d_err = _sweep_curves(spec, base, estimator, "depth", gamma)
    depth_sweep.gamma = gamma
    gamma_sweep.note = _curve_note(gamma_note, gamma_sweep, g_err)
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
    ref.update({k: by_key[k].metric for k in ("lora", "lisa") if k in by_key and by_key[k].metric is not None})
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


# ---------------------------------------------------------------- study


def open_existing_storage(url: str):
    """The Optuna storage at ``url``; unlike ``planner tune`` a report never creates one."""
    from pathlib import Path

    from planner.tune.storage import check_storage, open_storage

    url = check_storage(url)
    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else (url if "://" not in url else None)
    if path is not None and not Path(path).expanduser().is_file():
        raise PlannerError(f"--storage must name an existing study storage, but {path!r} does not exist (run `planner tune` first)")
    return open_storage(url)


def load_study(name: str, storage: str | None = None):
    """Load study ``name``; an unknown name lists the studies the storage holds."""
    import optuna

    from planner.tune.storage import DEFAULT_STORAGE

    url = storage or DEFAULT_STORAGE
    st = open_existing_storage(url)
    names = optuna.get_all_study_names(st)
    if name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise PlannerError(f"--study must name a study in {url}, but got {name!r} (studies there: {known})")
    return optuna.load_study(study_name=name, storage=st)


def _int_or_none(v) -> int | None:
    try:
        return None if v is None else int(v)
    except (TypeError, ValueError):
        return None


def _finite(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _trial_point(t) -> TrialPoint:
    ua, p = t.user_attrs, t.params
    state = t.state.name
    metric = None
    if state == "COMPLETE":
        vals = t.values
        metric = _finite(vals[0]) if vals else _finite(ua.get("metric"))
    lowest = ua.get("lowest_layer")
    if lowest is None and ua.get("trainable_layers"):
        lowest = min(ua["trainable_layers"])
    return TrialPoint(
        number=t.number, state=state, kind=str(ua.get("kind", "search")),
        peak_bytes=_int_or_none(ua.get("predicted_peak_bytes")), metric=metric,
        gated=bool(ua.get("gated", False)), fits=ua.get("fits"), reason=str(ua.get("reason", "") or ""),
        gamma=_int_or_none(p.get("gamma")), lowest_layer=_int_or_none(lowest), scorer=p.get("scorer"),
    )


def pareto_front(points: list[TrialPoint], direction: str) -> list[int]:
    """Numbers of the trials no other trial beats on both metric and predicted peak (lower peak is better)."""
    sign = 1.0 if direction == "maximize" else -1.0
    cand = [p for p in points if p.metric is not None and p.peak_bytes is not None]
    front = []
    for p in cand:
        dominated = any(
            (sign * q.metric >= sign * p.metric and q.peak_bytes <= p.peak_bytes)
            and (sign * q.metric > sign * p.metric or q.peak_bytes < p.peak_bytes)
            for q in cand
        )
        if not dominated:
            front.append(p.number)
    return sorted(front)


def _best(points: list[TrialPoint], direction: str, multi_objective: bool) -> TrialPoint | None:
    """The trial ``planner tune`` writes as the plan: the best metric among trained trials that fit (any
    kind; on the Pareto front when multi-objective), the lower predicted peak breaking ties."""
    sign = 1.0 if direction == "maximize" else -1.0
    cand = [p for p in points if p.state == "COMPLETE" and p.metric is not None and p.fits is True]
    if multi_objective and any(p.pareto for p in cand):
        cand = [p for p in cand if p.pareto]
    if not cand:
        return None
    return max(cand, key=lambda p: (sign * p.metric, -(p.peak_bytes or 0), -p.number))


def _history(points: list[TrialPoint], direction: str) -> list[HistoryPoint]:
    sign = 1.0 if direction == "maximize" else -1.0
    best = None
    out = []
    for p in sorted(points, key=lambda p: p.number):
        if p.metric is None:
            continue
        if p.kind == "search" and (best is None or sign * p.metric > sign * best):
            best = p.metric
        out.append(HistoryPoint(p.number, p.kind, p.metric, best))
    return out


def _importance_maps(trials, points: dict[int, TrialPoint], num_layers: int | None, direction: str,
                     best: int | None) -> list[ImportanceMap]:
    """One map per adaptive scorer: the scorer's best trial whose sampling weights change over training."""
    sign = 1.0 if direction == "maximize" else -1.0
    per_scorer: dict[str, ImportanceMap] = {}
    for t in trials:
        rec = t.user_attrs.get("importance") or []
        rows = [r for r in rec if isinstance(r, dict) and r.get("weights")]
        # a re-draw at the step of the previous record replaces it: one row per step
        rows = [r for i, r in enumerate(rows) if i + 1 == len(rows) or rows[i + 1].get("step") != r.get("step")]
        if len(rows) < 2:
            continue
        weights = [[float(w) for w in r["weights"]] for r in rows]
        if all(w == weights[0] for w in weights[1:]):
            continue  # a fixed distribution: nothing adapts
        L = num_layers or max(len(w) for w in weights)
        weights = [w + [0.0] * (L - len(w)) if len(w) < L else w[:L] for w in weights]
        pt = points[t.number]
        scorer = str(t.params.get("scorer", "?"))
        m = ImportanceMap(t.number, scorer, [int(r.get("step", i)) for i, r in enumerate(rows)], L, weights,
                          [sorted(int(a) for a in (r.get("active") or [])) for r in rows], pt.metric)
        cur = per_scorer.get(scorer)

        def rank(x: ImportanceMap):
            return (x.trial_number == best, x.metric is not None, sign * (x.metric or 0.0))

        if cur is None or rank(m) > rank(cur):
            per_scorer[scorer] = m
    maps = sorted(per_scorer.values(), key=lambda m: (m.trial_number != best, m.scorer))
    return maps[:MAX_IMPORTANCE_MAPS]


def _base_config(study_attrs: dict) -> TrainConfig:
    """The training shape a study costed its trials at (sequence length, first batch size), from its search space."""
    space = study_attrs.get("search_space")
    changes = {}
    if isinstance(space, dict):
        if space.get("seq_len"):
            changes["seq_len"] = int(space["seq_len"])
        if space.get("batch_sizes"):
            changes["batch_size"] = int(space["batch_sizes"][0])
    try:
        return TrainConfig(**changes)
    except Exception:  # noqa: BLE001 - an unusual record falls back to the defaults
        return TrainConfig()


def _trial_config(base: TrainConfig, params: dict) -> TrainConfig:
    changes = dict(layers=None, active_layers=int(params["gamma"]), min_depth=0,
                   train_embeddings=bool(params.get("train_embeddings", True)),
                   train_head=bool(params.get("train_head", True)),
                   lora_rank=params.get("lora_rank") or None)  # 0 = full layer weights
    if params.get("batch_size"):
        changes["batch_size"] = int(params["batch_size"])
    return _config(base, **changes)


def _study_spec(model: str | None):
    """The study's model spec, or (None, why) when it cannot be loaded by name."""
    if not model:
        return None, "the study does not record its model"
    try:
        from planner.spec import load_spec

        return load_spec(model), ""
    except PlannerError as exc:
        return None, f"model {model!r} cannot be loaded by name ({exc})"


def study_report_data(study, *, estimator: Estimator | None = None, use_cost_model: bool = True,
                      device: str | None = None) -> ReportData:
    """Report data for an Optuna study written by ``planner tune``.

    Baseline bars use the baselines' own trial breakdowns; a baseline the study lacks is
    estimated with the cost model. The γ and lowest-layer curves come from the cost model
    for the study's model, with the trials' own predictions drawn over them; when the model
    cannot be loaded by name, the trials' predictions alone.
    """
    ua = study.user_attrs
    direction = str(ua.get("direction") or study.directions[0].name.lower())
    device = device or str(ua.get("device") or "cpu")
    vram = _int_or_none(ua.get("vram_bytes"))
    num_layers = _int_or_none(ua.get("num_layers"))
    model = str(ua.get("model") or "?")
    trials = study.get_trials(deepcopy=False)
    points = [_trial_point(t) for t in trials]
    by_number = {p.number: p for p in points}
    front = set(pareto_front([p for p in points if p.state == "COMPLETE"], direction))
    for p in points:
        p.pareto = p.number in front
    best = _best(points, direction, len(study.directions) > 1 or bool(ua.get("multi_objective")))
    notes: dict[str, str] = {}

    spec, spec_why = (None, "cost model disabled") if not use_cost_model else _study_spec(ua.get("model"))
    if spec is not None and num_layers is None:
        num_layers = spec.num_layers
    if estimator is None and use_cost_model and spec is not None:
        estimator = cost_model_estimator(device)
        if estimator is None:
            spec_why = "the cost model is not available"
    base = _base_config(ua)

    # ---- breakdown bars
    bars: list[Bar] = []
    configs = baseline_configs(base)
    for key, label in BASELINES:
        tr = [t for t in trials if t.user_attrs.get("kind") == f"baseline:{key}" and t.user_attrs.get("breakdown")]
        # prefer a trained record, then the latest
        tr.sort(key=lambda t: (t.state.name == "COMPLETE", t.number))
        if tr:
            t = tr[-1]
            pt = by_number[t.number]
            parts = _breakdown_dict(t.user_attrs["breakdown"])
            peak = pt.peak_bytes if pt.peak_bytes is not None else sum(parts.values())
            fits = pt.fits if pt.fits is not None else _fits(peak, vram)
            bars.append(Bar(key, label, parts, peak, f"trial #{t.number}", fits, pt.metric, t.number))
        elif spec is not None and estimator is not None:
            try:
                peak, parts = estimator(spec, configs[key])
                bars.append(Bar(key, label, parts, peak, "cost model", _fits(peak, vram)))
            except PlannerError as exc:
                notes["breakdown"] = "; ".join(filter(None, [notes.get("breakdown"), f"{label}: {exc}"]))
    if best is not None:
        t = next(t for t in trials if t.number == best.number)
        parts = _breakdown_dict(t.user_attrs.get("breakdown"))
        peak = best.peak_bytes if best.peak_bytes is not None else sum(parts.values())
        bars.append(Bar(PLAN_KEY, f"{PLAN_LABEL} (#{best.number})", parts, peak, f"trial #{best.number}",
                        best.fits if best.fits is not None else _fits(peak, vram), best.metric, best.number))
    else:
        notes["breakdown"] = "; ".join(filter(None, [notes.get("breakdown"),
                                                     "no trial was trained within the budget: no tuned plan to draw"]))
    if not bars:
        notes["breakdown"] = "no breakdown recorded and no cost model for this model"

    # ---- trade-off, history, importance
    if not any(p.metric is not None for p in points):
        notes["tradeoff"] = "no trial completed with a metric"
        notes["history"] = notes["tradeoff"]
    importance = _importance_maps(trials, by_number, num_layers, direction, best.number if best else None)
    if not importance:
        notes["importance"] = "no trial of an adaptive scorer recorded per-layer weights that change over training"

    # ---- sweeps
    gamma_sweep = Sweep("active layers γ", points=[(p.gamma, p.peak_bytes, p.number) for p in points
                                                   if p.gamma is not None and p.peak_bytes is not None])
    depth_sweep = Sweep("lowest active layer", points=[(p.lowest_layer, p.peak_bytes, p.number) for p in points
                                                       if p.lowest_layer is not None and p.peak_bytes is not None])
    if spec is not None and estimator is not None:
        try:
            sweep_base = _trial_config(base, next(t for t in trials if t.number == best.number).params) if best else configs["lisa"]
        except (PlannerError, KeyError, ValueError, TypeError):
            sweep_base = configs["lisa"]
        gamma = sweep_base.active_layers or LISA_DEFAULT_GAMMA
        _model_sweeps(gamma_sweep, depth_sweep, spec, sweep_base, estimator, gamma,
                      f"cost model for {model}; dots: the trials' own predictions",
                      f"curves: γ = {gamma}, the sampler never drawing below the layer on the x axis; dots: trials of any γ")
    else:
        gamma_sweep.note = f"trials' own predictions ({spec_why})"
        depth_sweep.note = gamma_sweep.note
    if not gamma_sweep.curves and not gamma_sweep.points and not depth_sweep.points:
        notes["sweeps"] = f"no predictions to draw ({spec_why or 'no trial recorded a predicted peak'})"

    states = [p.state for p in points]
    counts = {
        "trials": len(points),
        "complete": states.count("COMPLETE"),
        "gated": sum(p.gated for p in points),
        "pruned": sum(1 for p in points if p.state == "PRUNED" and not p.gated),
        "failed": states.count("FAIL"),
        "running": states.count("RUNNING") + states.count("WAITING"),
    }
    synthetic = bool(ua.get("synthetic", False))
    details = [f"{k.replace('_', ' ')}: {ua[k]}" for k in ("workload", "steps", "seed") if ua.get(k) is not None]
    if details:
        details = ["study settings: " + ", ".join(details).replace("steps:", "proxy steps per trial:")]
    title = f"planner report: study {study.study_name}" + (" (SYNTHETIC study, not measured)" if synthetic else "")
    return ReportData(
        name=study.study_name, title=title, source="study", model=model, num_layers=num_layers,
        vram_bytes=vram, metric_name=str(ua.get("metric_name") or "metric"), direction=direction, device=device,
        bars=bars, trials=points, best_trial=best.number if best else None,
        gamma_sweep=gamma_sweep, depth_sweep=depth_sweep, importance=importance,
        history=_history(points, direction), savings=savings_table(bars), notes=notes, counts=counts,
        synthetic=synthetic, details=details,
    )


# ---------------------------------------------------------------- plan


def plan_report_data(plan: Plan, *, name: str, estimator: Estimator | None = None, device: str | None = None) -> ReportData:
    """Report data for a plan alone: bars, sweeps and savings from the cost model; the rest says "no study"."""
    from planner.spec import load_spec

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
    for b in plan.baselines:
        for key, _ in BASELINES:
            if key in b.name.lower().replace("baseline:", ""):
                metrics[key] = b.metric
    bars: list[Bar] = []
    gamma_sweep = depth_sweep = None
    if spec is not None and estimator is not None:
        plan.train.check_against(spec.num_layers)
        failed = []
        for key, label in BASELINES:
            try:
                peak, parts = estimator(spec, baseline_configs(plan.train)[key])
            except PlannerError as exc:
                failed.append(f"{label}: {exc}")
                continue
            bars.append(Bar(key, label, parts, peak, "cost model", _fits(peak, plan.vram_bytes), metrics.get(key)))
        try:
            peak, parts = estimator(spec, plan.train)
            source = "cost model"
        except PlannerError as exc:
            failed.append(f"{PLAN_LABEL}: {exc}; drawn from the plan file")
            peak, parts, source = plan.predicted_peak_bytes, _breakdown_dict(plan.breakdown), "plan file"
        bars.append(Bar(PLAN_KEY, PLAN_LABEL, parts, peak, source, _fits(peak, plan.vram_bytes), plan.metric,
                        plan.trial_number))
        if failed:
            notes["breakdown"] = "; ".join(failed)
        gamma = plan.train.active_layers or (len(plan.layers) if plan.layers else plan.active_layers)
        sweep_base = plan.train if plan.train.active_layers else _config(plan.train, layers=None, active_layers=gamma)
        gamma_sweep, depth_sweep = Sweep("active layers γ"), Sweep("lowest active layer")
        g_err, d_err = _model_sweeps(gamma_sweep, depth_sweep, spec, sweep_base, estimator, gamma,
                                     f"cost model for {plan.model}",
                                     f"γ = {gamma}, the sampler never drawing below the layer on the x axis")
        if not gamma_sweep.curves and not depth_sweep.curves:
            notes["sweeps"] = f"no cost-model curve ({g_err or d_err})"
    else:
        # without a cost model the plan still carries its own prediction
        parts = _breakdown_dict(plan.breakdown)
        bars.append(Bar(PLAN_KEY, PLAN_LABEL, parts, plan.predicted_peak_bytes, "plan file",
                        _fits(plan.predicted_peak_bytes, plan.vram_bytes), plan.metric, plan.trial_number))
        notes["sweeps"] = f"no cost model ({why})"
        notes["breakdown"] = f"only the plan's own breakdown ({why})"
    return ReportData(
        name=name, title=f"planner report: plan {name}", source="plan", model=plan.model,
        num_layers=plan.num_layers, vram_bytes=plan.vram_bytes, metric_name=plan.metric_name, direction="maximize",
        device=device, bars=bars, best_trial=plan.trial_number, gamma_sweep=gamma_sweep, depth_sweep=depth_sweep,
        savings=savings_table(bars, metrics), notes=notes,
        details=[f"plan: γ = {plan.active_layers}, K = {plan.period}, scorer {plan.scorer}, embeddings "
                 f"{'trained' if plan.train_embeddings else 'frozen'}, head {'trained' if plan.train_head else 'frozen'}"
                 + (f", from study {plan.study_name} trial #{plan.trial_number}" if plan.study_name else "")],
    )


def gib(n: int | float | None) -> float | None:
    """Bytes to GiB (the unit every figure and table uses)."""
    return None if n is None else n / GiB
