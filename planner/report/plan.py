"""Report data of a plan file alone: bars, sweeps and savings from the cost model; the sections a study fills say so."""

from __future__ import annotations

from planner.config import TrainConfig
from planner.errors import PlannerError
from planner.plan import Plan
from planner.report.costing import config_with, cost_model_estimator, fits_with, form_label, model_sweeps
from planner.report.data import (
    BASELINES,
    NO_STUDY,
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
from planner.tune.study.baselines import baseline_configs
from planner.tune.study.kinds import Baseline


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
                    fits_budget(peak, plan.vram_bytes),
                    metrics.get(key),
                )
            )
        try:
            peak, parts = estimator(spec, plan.train)
            source = "cost model"
        except PlannerError as exc:
            failed.append(f"{PLAN_LABEL}: {exc}; drawn from the plan file")
            peak, parts, source = plan.predicted_peak_bytes, breakdown_dict(plan.breakdown), "plan file"
        bars.append(
            Bar(
                PLAN_KEY,
                PLAN_LABEL,
                parts,
                peak,
                source,
                fits_budget(peak, plan.vram_bytes),
                plan.metric,
                plan.trial_number,
            )
        )
        if failed:
            notes["breakdown"] = "; ".join(failed)
        active_layers = plan.train.active_layers or (len(plan.layers) if plan.layers else plan.active_layers)
        sweep_base = (
            plan.train
            if plan.train.active_layers
            else config_with(plan.train, layers=None, active_layers=active_layers)
        )
        active_layers_sweep, depth_sweep = Sweep("active layers γ"), Sweep("lowest active layer")
        g_err, d_err = model_sweeps(
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
        parts = breakdown_dict(plan.breakdown)
        bars.append(
            Bar(
                PLAN_KEY,
                PLAN_LABEL,
                parts,
                plan.predicted_peak_bytes,
                "plan file",
                fits_budget(plan.predicted_peak_bytes, plan.vram_bytes),
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
