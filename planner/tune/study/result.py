"""From a finished study to answers: the best plan that fits, the baselines, and how much tuning wins."""

from __future__ import annotations

from dataclasses import dataclass, field

from optuna.trial import TrialState

from planner.config import TrainConfig
from planner.errors import PlannerError
from planner.export.data import generated_data, training_data
from planner.plan import BaselineResult, Breakdown, Plan, ProxyInfo
from planner.tune.study import record
from planner.tune.study.baselines import KINDS, best_of_kind, trial_form_words, trial_point
from planner.tune.study.confirm import confirmation_record
from planner.tune.proxy.mapping import proxy_params, target_lr
from planner.tune.study.kinds import TrialKind
from planner.tune.study.record import counted, interrupted, is_confirm
from planner.tune.study.verdict import best_confirmed, confirmed
from planner.tune.search.space import SearchSpace, TrialParams


class NoFinishedTrial(PlannerError):
    """The study holds no trained trial that fits: nothing to recommend."""

    exit_code = 1


def _reasons(trials, most: int = 3) -> str:
    """The distinct reasons the trials stored for not training (first ``most``), so the error explains itself."""
    seen: list[str] = []
    for t in trials:
        reason = t.user_attrs.get("reason")
        if reason and reason not in seen:
            seen.append(reason)
    if not seen:
        return ""
    more = f" and {len(seen) - most} more" if len(seen) > most else ""
    return "; the trials' reasons: " + " | ".join(seen[:most]) + more


class NoSignal(PlannerError):
    """Every trained trial scored the same: the metric cannot tell plans apart, so none is named."""

    exit_code = 1


def check_signal(trials, metric_name: str, study_name: str) -> None:
    """Raise :class:`NoSignal` when the trained trials' metrics are all equal (all 0 accuracy, say)."""
    metrics = [metric_of(t) for t in trials]
    if len(set(metrics)) == 1 and (len(metrics) > 1 or metrics[0] == 0):
        raise NoSignal(
            f"the trained trials must differ in {metric_name} to name a best plan, but all {len(metrics)} of "
            f"study {study_name!r} scored {metrics[0]:.4f}: no plan written; train longer (--steps), check "
            f"the data (--data) or the model (--model)"
        )


@dataclass
class SummaryRow:
    name: str
    kind: TrialKind  # the stored string: equal to "search", "baseline:lora", ...
    metric: float | None
    predicted_peak_bytes: int | None
    fits: bool | None
    trial_number: int | None
    state: str
    delta: float | None = None  # tuned metric better by this much (in the metric's units; > 0 = tuned wins)
    reason: str | None = None
    std: float | None = None  # confirmed rows: metric is the mean over ``seeds`` confirmation seeds
    seeds: int | None = None


@dataclass
class TuneResult:
    plan: Plan
    best_trial_number: int
    rows: list[SummaryRow]
    counts: dict  # trial states and gated count
    pareto: list[dict] = field(default_factory=list)
    plan_path: str | None = None
    measured: list[dict] = field(default_factory=list)  # proxy runs of the target: predicted vs measured peaks

    @property
    def largest_error(self) -> dict | None:
        """The measured trial whose prediction was furthest off (relative to the device memory it used)."""
        return max(self.measured, key=lambda m: abs(m["prediction_error"]), default=None)


def finished(trial) -> bool:
    """A trial that counts toward ``--n-trials``: complete, pruned or failed, but not interrupted."""
    return counted(trial)


def metric_of(trial) -> float | None:
    return record.read(trial).finite_metric


def _peak(trial) -> int:
    """The predicted peak of a trained trial."""
    peak = record.read(trial).predicted_peak_bytes
    assert peak is not None  # a trial trains only after its peak was predicted (and fit)
    return peak


def params_of(trial, space: SearchSpace) -> TrialParams:
    return trial_point(trial, space)


def _better(direction: str):
    return max if direction == "maximize" else min


def summarize(
    study,
    space: SearchSpace,
    *,
    target,
    proxy,
    vram_bytes: int,
    layers_attribute: str,
    storage: str,
    multi_objective: bool = False,
    seed: int = 0,
    steps: int = 0,
    data: str | None = None,
) -> TuneResult:
    """The best fitting trained trial as a Plan for ``target``, with every baseline next to it. ``data``: what
    ``--data`` named (None: the study generated its task, or a library caller passed its own workload)."""
    workload = proxy.workload
    trials = study.get_trials(deepcopy=False)
    direction = workload.direction
    sign = 1.0 if direction == "maximize" else -1.0
    ok = [t for t in trials if record.trained(t) and not is_confirm(t)]
    if not ok:
        states = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
        raise NoFinishedTrial(
            f"the study must hold a trained trial that fits, but it has none ({states}){_reasons(trials)}; "
            f"raise --n-trials/--vram"
        )
    check_signal(ok, workload.metric_name, study.study_name)
    if multi_objective:
        front = [t for t in study.best_trials if record.trained(t) and not is_confirm(t)]
        candidates = front or ok
    else:
        front, candidates = [], ok
    best = _better(direction)(candidates, key=lambda t: (metric_of(t), -_peak(t) * sign))
    best_metric = metric_of(best)
    runs = {r.source.number: r for r in confirmed(trials)}  # the tuned plan is the best confirmed mean
    top = best_confirmed(list(runs.values()), direction)
    confirmation = (
        None if top is None else confirmation_record(trials, top, seed=seed, steps=steps, direction=direction)
    )
    if top is not None:
        best, best_metric = top.source, top.mean
    assert best_metric is not None  # a trained trial's metric is finite; a complete confirmation has a mean

    def spread(t) -> tuple[float | None, int | None]:
        """(std, seeds) of ``t``'s confirmation runs; (None, None) when it was not confirmed."""
        run = runs.get(t.number)
        return (None, None) if run is None else (run.std, len(run.metrics))

    best_record = record.read(best)
    std, seeds = spread(best)
    rows = [
        SummaryRow(
            "tuned plan",
            best_record.kind,
            best_metric,
            best_record.predicted_peak_bytes,
            True,
            best.number,
            best.state.name.lower(),
            std=std,
            seeds=seeds,
        )
    ]
    baselines = []
    for kind in KINDS:
        t = best_of_kind(trials, kind, direction)  # a baseline at the best learning rate of its sweep
        if t is None:
            continue
        metric = metric_of(t) if t.state == TrialState.COMPLETE else None
        if top is not None and metric is not None and t.number in runs:
            metric = runs[t.number].mean
        rec = record.read(t)
        peak, fits = rec.predicted_peak_bytes, rec.fits
        # the tuned plan is this baseline: no margin over itself (the confirmation states the search's)
        delta = None if metric is None or t.number == best.number else sign * (best_metric - metric)
        std, seeds = spread(t) if top is not None else (None, None)
        rows.append(
            SummaryRow(
                kind.name + trial_form_words(t),
                kind,
                metric,
                peak,
                fits,
                t.number,
                t.state.name.lower(),
                delta,
                "the tuned plan" if t.number == best.number else rec.reason,
                std,
                seeds,
            )
        )
        if peak is not None:
            baselines.append(
                BaselineResult(
                    name=kind.name,
                    predicted_peak_bytes=int(peak),
                    fits=bool(fits),
                    metric=metric,
                    trial_number=t.number,
                )
            )

    params = params_of(best, space)
    config: TrainConfig = space.train_config(params)
    small = proxy_params(
        params, target_layers=space.num_layers, proxy_layers=proxy.num_layers, is_target=proxy.is_target
    )
    lr = (
        params.lr
        if proxy.is_target
        else target_lr(params.lr, proxy_hidden=proxy.hidden_size, target_hidden=target.hidden_size)
    )
    assert best_record.breakdown is not None  # stored with the predicted peak, before the trial trained
    proxy_batch = (best_record.proxy_plan.batch_size if best_record.proxy_plan else None) or space.batch_size_of(params)
    plan = Plan(
        model=target.source,
        model_type=target.spec.model_type,
        num_layers=space.num_layers,
        layers_attribute=layers_attribute,
        active_layers=params.active_layers,
        min_depth=params.min_depth,
        period=params.period,
        scorer=params.scorer,
        scorer_options={},
        layers=None,
        train_embeddings=params.train_embeddings,
        train_head=params.train_head,
        learning_rate=lr,
        lora_rank=params.adapter_rank,
        train=config,
        device=target.device,
        vram_bytes=vram_bytes,
        predicted_peak_bytes=_peak(best),
        breakdown=Breakdown.model_validate(best_record.breakdown),
        metric_name=workload.metric_name,
        metric=best_metric,
        baselines=baselines,
        study_name=study.study_name,
        storage=storage,
        trial_number=best.number,
        proxy=ProxyInfo(
            name=proxy.name,
            kind=proxy.kind,
            num_layers=proxy.num_layers,
            hidden_size=proxy.hidden_size,
            device=proxy.device,
            active_layers=small.active_layers,
            min_depth=small.min_depth,
            learning_rate=params.lr,
            batch_size=int(proxy_batch),
        ),
        confirmation=confirmation,
        data=training_data(data) if data is not None else generated_data(workload.name),
        steps=steps or None,
    )
    counts = {
        s.name.lower(): sum(t.state == s and not is_confirm(t) and not interrupted(t) for t in trials)
        for s in TrialState
    }
    counts["interrupted"] = sum(interrupted(t) for t in trials)
    counts["confirmation"] = sum(is_confirm(t) and finished(t) for t in trials)
    # gated trials are pruned ones: a trial gated, then stopped before it was stored as pruned, is interrupted only
    records = {t.number: record.read(t) for t in trials}
    counts["gated"] = sum(
        t.state == TrialState.PRUNED and bool(records[t.number].gated) and not is_confirm(t) and not interrupted(t)
        for t in trials
    )
    counts["reused"] = sum(rec.reused_from is not None for rec in records.values())
    pareto = [
        {"trial": t.number, "metric": metric_of(t), "predicted_peak_bytes": _peak(t), "params": dict(t.params)}
        for t in sorted(front, key=_peak)
    ]
    measured = [
        {
            "trial": number,
            "predicted_peak_bytes": rec.predicted_peak_bytes,
            **rec.measured_memory.model_dump(exclude_unset=True),
        }
        for number, rec in records.items()
        if rec.measured_memory
    ]
    return TuneResult(plan, best.number, rows, counts, pareto, measured=measured)
