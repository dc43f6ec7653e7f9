"""Report data of a study written by `planner tune`: its trials, baselines, sweeps and history.

The study's target (``user_attrs['target']``, ``['target_shape']``) is what every bar and curve
is for: the trials' own predictions (their records, :mod:`planner.tune.study.record`), and cost-model curves for the
target in its training shape.
"""

from __future__ import annotations

from pathlib import Path

from planner.config import TrainConfig
from planner.errors import PlannerError
from planner.report.costing import config_with, cost_model_estimator, fits_with, form_label, model_sweeps
from planner.report.data import (
    BASELINES,
    PLAN_KEY,
    PLAN_LABEL,
    Bar,
    Estimator,
    ReportData,
    Sweep,
    breakdown_dict,
    fits_budget,
    savings_table,
)
from planner.report.trials import best_point, importance_maps, int_or_none, metric_history, pareto_front, trial_point
from planner.tune.study import record
from planner.tune.study.baselines import LISA_BASELINE, baseline_configs, best_of_kind, trial_form_words
from planner.tune.search.space import LISA_ACTIVE_LAYERS as LISA_DEFAULT_ACTIVE_LAYERS
from planner.tune.study.confirm import report_lines
from planner.tune.study.kinds import Baseline
from planner.tune.study.verdict import best_confirmed, confirmed
from planner.tune.storage.backends import DEFAULT_STORAGE, check_storage, open_storage
from planner.units import format_bytes


def open_existing_storage(url: str):
    """The Optuna storage at ``url``; unlike ``planner tune`` a report never creates one."""
    url = check_storage(url)
    path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else (url if "://" not in url else None)
    if path is not None and not Path(path).expanduser().is_file():
        raise PlannerError(
            f"--storage must name an existing study storage, but {path!r} does not exist (run `planner tune` first)"
        )
    return open_storage(url)


def load_study(name: str, storage: str | None = None):
    """Load study ``name``; an unknown name lists the studies the storage holds."""
    import optuna  # optuna: deferred to reading a study, a plan's report does without it

    url = storage or DEFAULT_STORAGE
    st = open_existing_storage(url)
    names = optuna.get_all_study_names(st)
    if name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise PlannerError(f"--study must name a study in {url}, but got {name!r} (studies there: {known})")
    return optuna.load_study(study_name=name, storage=st)


def _base_config(study_attrs: dict) -> TrainConfig:
    """The target's training shape the study costed its trials at: ``target_shape`` (batch, sequence length,
    dtype, autocast, optimizer), else, for older studies, the search space's sequence length and first batch size."""
    shape = study_attrs.get("target_shape")
    changes = dict(shape) if isinstance(shape, dict) else {}
    space = study_attrs.get("search_space")
    if not changes and isinstance(space, dict):
        if space.get("seq_len"):
            changes["seq_len"] = int(space["seq_len"])
        if space.get("batch_sizes"):
            changes["batch_size"] = int(space["batch_sizes"][0])
    try:
        return TrainConfig(**changes)
    except Exception:  # noqa: BLE001 - an unusual record falls back to the defaults
        return TrainConfig()


def _trial_config(base: TrainConfig, params: dict, num_layers: int | None = None) -> TrainConfig:
    active_layers = int(params["active_layers"])
    depth = int(params.get("min_depth", 0))
    if num_layers is not None:
        depth = min(depth, max(0, num_layers - active_layers))  # as the search lowers it (planner.tune.search.space)
    changes = dict(
        layers=None,
        active_layers=active_layers,
        min_depth=depth,
        gradient_checkpointing=bool(params.get("gradient_checkpointing", False)),
        train_embeddings=bool(params.get("train_embeddings", True)),
        train_head=bool(params.get("train_head", True)),
        lora_rank=params.get("lora_rank") or None,
    )  # 0 = full layer weights
    if params.get("batch_size"):
        changes["batch_size"] = int(params["batch_size"])
    return config_with(base, **changes)


def _study_spec(model: str | None):
    """The study's model spec, or (None, why) when it cannot be loaded by name."""
    if not model:
        return None, "the study does not record its model"
    try:
        from planner.spec import load_spec  # planner.spec (torch): deferred, a study is read before it

        return load_spec(model), ""
    except PlannerError as exc:
        return None, f"model {model!r} cannot be loaded by name ({exc})"


def study_report_data(
    study, *, estimator: Estimator | None = None, use_cost_model: bool = True, device: str | None = None
) -> ReportData:
    """Report data for an Optuna study written by ``planner tune``.

    Baseline bars use the baselines' own trial breakdowns; a baseline the study lacks is
    estimated with the cost model. The γ and lowest-layer curves come from the cost model
    for the study's model, with the trials' own predictions drawn over them; when the model
    cannot be loaded by name, the trials' predictions alone.
    """
    ua = study.user_attrs
    direction = str(ua.get("direction") or study.directions[0].name.lower())
    device = device or str(ua.get("device") or "cpu")
    vram = int_or_none(ua.get("vram_bytes"))
    num_layers = int_or_none(ua.get("num_layers"))
    model = str(ua.get("model") or "?")
    trials = study.get_trials(deepcopy=False)
    points = [trial_point(t) for t in trials]
    by_number = {p.number: p for p in points}
    front = set(pareto_front([p for p in points if p.state == "COMPLETE"], direction))
    for p in points:
        p.pareto = p.number in front
    best = best_point(points, direction, len(study.directions) > 1 or bool(ua.get("multi_objective")))
    top = best_confirmed(confirmed(trials), direction)  # as `planner tune` writes it: the best confirmed mean
    best = by_number[top.source.number] if top is not None else best
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
    configs = (
        baseline_configs(base, num_layers or 1, fits=fits_with(estimator, spec, vram))
        if spec is not None and estimator is not None
        else {}
    )
    for key, label in BASELINES:
        # the best learning rate of its sweep (a trained record first, then the latest)
        t = best_of_kind([t for t in trials if record.read(t).breakdown], Baseline(key), direction)
        if t is not None:
            pt = by_number[t.number]
            parts = breakdown_dict(record.read(t).breakdown)
            peak = pt.peak_bytes if pt.peak_bytes is not None else sum(parts.values())
            fits = pt.fits if pt.fits is not None else fits_budget(peak, vram)
            bars.append(
                Bar(key, label + trial_form_words(t), parts, peak, f"trial #{t.number}", fits, pt.metric, t.number)
            )
        elif spec is not None and estimator is not None:
            try:
                cfg = configs[Baseline(key)]
                peak, parts = estimator(spec, cfg)
                bars.append(Bar(key, form_label(label, cfg), parts, peak, "cost model", fits_budget(peak, vram)))
            except PlannerError as exc:
                notes["breakdown"] = "; ".join(filter(None, [notes.get("breakdown"), f"{label}: {exc}"]))
    if best is not None:
        t = next(t for t in trials if t.number == best.number)
        parts = breakdown_dict(record.read(t).breakdown)
        peak = best.peak_bytes if best.peak_bytes is not None else sum(parts.values())
        bars.append(
            Bar(
                PLAN_KEY,
                f"{PLAN_LABEL} (#{best.number})",
                parts,
                peak,
                f"trial #{best.number}",
                best.fits if best.fits is not None else fits_budget(peak, vram),
                best.metric,
                best.number,
            )
        )
    else:
        notes["breakdown"] = "; ".join(
            filter(None, [notes.get("breakdown"), "no trial was trained within the budget: no tuned plan to draw"])
        )
    if not bars:
        notes["breakdown"] = "no breakdown recorded and no cost model for this model"

    # ---- trade-off, history, importance
    if not any(p.metric is not None for p in points):
        notes["tradeoff"] = "no trial completed with a metric"
        notes["history"] = notes["tradeoff"]
    importance = importance_maps(trials, by_number, num_layers, direction, best.number if best else None)
    if not importance:
        notes["importance"] = "no trial of an adaptive scorer recorded per-layer weights that change over training"

    # ---- sweeps
    active_layers_sweep = Sweep(
        "active layers γ",
        points=[
            (p.active_layers, p.peak_bytes, p.number)
            for p in points
            if p.active_layers is not None and p.peak_bytes is not None
        ],
    )
    depth_sweep = Sweep(
        "lowest active layer",
        points=[
            (p.lowest_layer, p.peak_bytes, p.number)
            for p in points
            if p.lowest_layer is not None and p.peak_bytes is not None
        ],
    )
    if spec is not None and estimator is not None:
        try:
            best_params = next(t for t in trials if t.number == best.number).params if best else None
            sweep_base = _trial_config(base, best_params, num_layers) if best_params else configs[LISA_BASELINE]
        except (PlannerError, KeyError, ValueError, TypeError):
            sweep_base = configs[LISA_BASELINE]
        active_layers = sweep_base.active_layers or LISA_DEFAULT_ACTIVE_LAYERS
        model_sweeps(
            active_layers_sweep,
            depth_sweep,
            spec,
            sweep_base,
            estimator,
            active_layers,
            f"cost model for {model}; dots: the trials' own predictions",
            f"curves: γ = {active_layers}, the sampler never drawing below the layer on the x axis; dots: trials of any γ",
        )
    else:
        active_layers_sweep.note = f"trials' own predictions ({spec_why})"
        depth_sweep.note = active_layers_sweep.note
    if not active_layers_sweep.curves and not active_layers_sweep.points and not depth_sweep.points:
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
    details = _details(ua, base, num_layers, trials) + report_lines(
        trials, direction, str(ua.get("metric_name") or "metric")
    )
    target = (ua.get("target") or {}).get("name") or model
    title = (
        f"planner report: study {study.study_name} for {target}"
        + (f" ({num_layers} layers)" if num_layers else "")
        + (" (SYNTHETIC study, not measured)" if synthetic else "")
    )
    return ReportData(
        name=study.study_name,
        title=title,
        source="study",
        model=model,
        num_layers=num_layers,
        vram_bytes=vram,
        metric_name=str(ua.get("metric_name") or "metric"),
        direction=direction,
        device=device,
        bars=bars,
        trials=points,
        best_trial=best.number if best else None,
        active_layers_sweep=active_layers_sweep,
        depth_sweep=depth_sweep,
        importance=importance,
        history=metric_history(points, direction),
        savings=savings_table(bars),
        notes=notes,
        counts=counts,
        synthetic=synthetic,
        details=details,
    )


def _details(ua: dict, base: TrainConfig, num_layers: int | None, trials) -> list[str]:
    """One-line facts: the target and its shape, the proxy, the study's settings, measured peaks."""
    out = []
    target = ua.get("target")
    if isinstance(target, dict):
        amp = f" + amp {base.amp}" if base.amp != "none" else ""
        out.append(
            f"target: {target.get('name', ua.get('model'))} ({num_layers} layers), batch {base.batch_size} × seq "
            f"{base.seq_len}, {base.dtype}{amp}, {base.optimizer}; every peak is predicted for it on "
            f"{ua.get('device', 'cuda')}"
        )
    proxy = ua.get("proxy")
    if isinstance(proxy, dict):
        name = str(proxy.get("name"))
        depth = "" if "layers" in name else f" ({proxy.get('num_layers')} layers)"
        out.append(
            f"proxy (trains the plans that fit, gives the metric): {name}{depth} on {ua.get('proxy_device', '?')}"
        )
    settings = [f"{k.replace('_', ' ')}: {ua[k]}" for k in ("workload", "steps", "seed") if ua.get(k) is not None]
    if settings:
        out.append("study settings: " + ", ".join(settings).replace("steps:", "proxy steps per trial:"))
    measured = []  # (trial number, predicted peak, what the GPU used)
    for t in trials:
        rec = record.read(t)
        if rec.measured_memory:
            measured.append((t.number, rec.predicted_peak_bytes, rec.measured_memory))
    if measured:
        number, predicted, m = max(measured, key=lambda row: abs(row[2].prediction_error))
        out.append(
            f"measured on the GPU in {len(measured)} trial(s): largest prediction error "
            f"{100 * m.prediction_error:+.1f}% (trial #{number}: predicted "
            f"{format_bytes(predicted) if predicted is not None else '?'}, in use at the peak "
            f"{format_bytes(m.device_used_bytes)})"
        )
    return out
