"""From a finished study to answers: the best plan that fits, the baselines, and how much tuning wins."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from planner.config import TrainConfig
from planner.errors import PlannerError
from planner.plan import BaselineResult, Breakdown, Plan
from planner.tune.baselines import KINDS, SEARCH
from planner.tune.space import SearchSpace, TrialParams


class NoFinishedTrial(PlannerError):
    """The study holds no trained trial that fits: nothing to recommend."""

    exit_code = 1


@dataclass
class SummaryRow:
    name: str
    kind: str
    metric: float | None
    predicted_peak_bytes: int | None
    fits: bool | None
    trial_number: int | None
    state: str
    delta: float | None = None  # tuned metric better by this much (in the metric's units; > 0 = tuned wins)
    reason: str | None = None


@dataclass
class TuneResult:
    plan: Plan
    best_trial_number: int
    rows: list[SummaryRow]
    counts: dict  # trial states and gated count
    pareto: list[dict] = field(default_factory=list)
    plan_path: str | None = None


def finished(trial) -> bool:
    """A trial that counts toward ``--n-trials``: complete, pruned or failed, but not interrupted."""
    from planner.tune.lifecycle import counted

    return counted(trial)


def metric_of(trial) -> float | None:
    value = trial.user_attrs.get("metric")
    return None if value is None or not math.isfinite(value) else float(value)


def _trained_ok(trial) -> bool:
    from optuna.trial import TrialState

    return trial.state == TrialState.COMPLETE and trial.user_attrs.get("fits") is True and metric_of(trial) is not None


def params_of(trial, space: SearchSpace) -> TrialParams:
    p = trial.params
    return TrialParams(int(p["gamma"]), int(p["period"]), str(p["scorer"]), bool(p["train_embeddings"]),
                       bool(p["train_head"]), float(p["lr"]),
                       int(p["lora_rank"]) if "lora_rank" in p else None,
                       int(p["batch_size"]) if "batch_size" in p else None)


def _better(direction: str):
    return max if direction == "maximize" else min


def summarize(study, space: SearchSpace, *, workload, vram_bytes: int, layers_attribute: str, storage: str,
              multi_objective: bool = False) -> TuneResult:
    """The best fitting trained trial as a Plan, with every baseline next to it."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    direction = workload.direction
    sign = 1.0 if direction == "maximize" else -1.0
    ok = [t for t in trials if _trained_ok(t)]
    if not ok:
        states = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
        raise NoFinishedTrial(f"the study must hold a trained trial that fits, but it has none ({states}); "
                              f"see the trials' user_attrs 'reason', or raise --n-trials/--vram")
    if multi_objective:
        front = [t for t in study.best_trials if _trained_ok(t)]
        candidates = front or ok
    else:
        front, candidates = [], ok
    best = _better(direction)(candidates, key=lambda t: (metric_of(t), -t.user_attrs["predicted_peak_bytes"] * sign))
    best_metric = metric_of(best)

    rows = [SummaryRow("tuned plan", best.user_attrs.get("kind", SEARCH), best_metric, best.user_attrs["predicted_peak_bytes"],
                       True, best.number, best.state.name.lower())]
    baselines = []
    for kind in KINDS:
        of_kind = [t for t in trials if t.user_attrs.get("kind") == kind and finished(t)]
        if not of_kind:
            continue
        t = max(of_kind, key=lambda t: (_trained_ok(t), t.number))
        metric = metric_of(t) if t.state == TrialState.COMPLETE else None
        peak = t.user_attrs.get("predicted_peak_bytes")
        fits = t.user_attrs.get("fits")
        delta = None if metric is None else sign * (best_metric - metric)
        rows.append(SummaryRow(kind.split(":", 1)[1], kind, metric, peak, fits, t.number, t.state.name.lower(), delta,
                               t.user_attrs.get("reason")))
        if peak is not None:
            baselines.append(BaselineResult(name=kind.split(":", 1)[1], predicted_peak_bytes=int(peak), fits=bool(fits),
                                            metric=metric, trial_number=t.number))

    params = params_of(best, space)
    config: TrainConfig = space.train_config(params)
    plan = Plan(
        model=str(workload.model_source), model_type=workload.spec.model_type, num_layers=space.num_layers,
        layers_attribute=layers_attribute, active_layers=params.gamma, period=params.period, scorer=params.scorer,
        scorer_options={}, layers=None, train_embeddings=params.train_embeddings, train_head=params.train_head,
        learning_rate=params.lr, lora_rank=params.adapter_rank, train=config, vram_bytes=vram_bytes,
        predicted_peak_bytes=int(best.user_attrs["predicted_peak_bytes"]), breakdown=Breakdown(**best.user_attrs["breakdown"]),
        metric_name=workload.metric_name, metric=best_metric, baselines=baselines, study_name=study.study_name,
        storage=storage, trial_number=best.number,
    )
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    counts["gated"] = sum(bool(t.user_attrs.get("gated")) for t in trials)
    pareto = [{"trial": t.number, "metric": metric_of(t), "predicted_peak_bytes": t.user_attrs["predicted_peak_bytes"],
               "params": dict(t.params)} for t in sorted(front, key=lambda t: t.user_attrs["predicted_peak_bytes"])]
    return TuneResult(plan, best.number, rows, counts, pareto)
