"""Confirmation: before the plan is written, the best searched plans and every baseline that fits train again
with fresh seeds at the full proxy budget, and the plan is the best mean.

Candidates: the ``--confirm-top`` best searched trials (complete, within budget, distinct proxy runs) and
each baseline at the best learning rate of its sweep (:func:`planner.tune.study.baselines.best_of_kind`).
Each trains ``--confirm-seeds`` times. A confirmation run is a trial of the study whose kind is
:class:`~planner.tune.study.kinds.Confirm` (stored ``"confirm:<trial>:<i>"``: trial ``<trial>``'s point, seed index
``i``): stored, resumed and reported like any trial, never counted toward ``--n-trials``, never pruned.

Seeds: index ``i`` trains with :func:`confirm_seed` (``--seed``, ``i``) for every candidate, so all
candidates see the same data order and layer-draw stream (common random numbers), none the search's
own seed (the searched winners' lucky draws are not re-used); the data split stays fixed by ``--seed``.

Noise and signal: the confirmed means are weighed by :mod:`planner.tune.study.verdict` (a margin counts when it
exceeds 2 standard errors); with none beyond the seed noise the scores cannot tell the plans apart, and
`planner tune` says so and exits with 1.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from typing import TYPE_CHECKING

from planner.confirmation import Confirmation, ConfirmedRun
from planner.tune.study import record
from planner.tune.study.baselines import KINDS, best_of_kind, enqueue_sweeps, trial_point
from planner.tune.study.progress import TrialProgress
from planner.tune.study.kinds import SEARCH, Confirm
from planner.tune.study.record import TrialRecord, interrupted, is_confirm, kind_of
from planner.tune.study.verdict import Confirmed, best_confirmed, confirmed, margins, plan_name, signal_verdict
from planner.units import human_bytes

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from planner.tune.proxy.pool import ProxyPool

DEFAULT_CONFIRM_SEEDS = 3
DEFAULT_CONFIRM_TOP = 2


def confirm_seed(seed: int, index: int) -> int:
    """The proxy seed of confirmation seed ``index`` in a study run with ``--seed seed`` (32 bits)."""
    digest = hashlib.sha256(f"planner-confirm:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _metric(trial) -> float | None:
    return record.read(trial).finite_metric


def select_candidates(trials, direction: str, top: int) -> list[FrozenTrial]:
    """The source trials to confirm: the ``top`` best searched ones (one per proxy run, the lower predicted
    peak first among equals) and every baseline's best trial that trained within the budget."""
    sign = 1.0 if direction == "maximize" else -1.0

    def rank(t) -> tuple[float, int | None, int]:
        metric = _metric(t)
        assert metric is not None  # a trained trial has a finite metric
        return -sign * metric, record.read(t).predicted_peak_bytes, t.number

    searched = sorted((t for t in trials if kind_of(t) == SEARCH and record.trained(t)), key=rank)
    out: list[FrozenTrial] = []
    keys: set[str | int | None] = set()
    for t in searched:
        rec = record.read(t)
        key = rec.proxy_key if "proxy_key" in rec.model_fields_set else t.number
        if key not in keys and len(out) < top:
            keys.add(key)
            out.append(t)
    for kind in KINDS:
        t = best_of_kind(trials, kind, direction)
        if t is not None and record.trained(t):
            out.append(t)
    return out


def enqueue_confirmation(study, candidates, seeds: int) -> int:
    """Queue each candidate's missing seeds (a resume queues none twice); returns how many confirmation runs wait."""
    trials = study.get_trials(deepcopy=False)
    have = {kind_of(t) for t in trials if is_confirm(t) and not interrupted(t)}
    # the longest runs first (as the candidate's own trial took): runs trained at once then end together
    for t in sorted(candidates, key=lambda t: -(record.read(t).train_seconds or 0.0)):
        for i in range(seeds):
            kind = Confirm(t.number, i)
            if kind not in have:
                rec = TrialRecord(kind=kind, confirm_of=t.number, confirm_seed=i)
                record.enqueue(study, dict(t.params), rec)
    from optuna.trial import TrialState  # optuna: deferred, 'planner tune --help' loads this module

    return sum(t.state == TrialState.WAITING and is_confirm(t) for t in study.get_trials(deepcopy=False))


def confirm_run(trial, space, seed: int):
    """(point, proxy seed) of a confirmation trial, read from its kind and its source trial; None for other kinds."""
    kind = kind_of(trial)
    if not isinstance(kind, Confirm):
        return None
    number, index = kind.trial, kind.seed
    source = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == number)
    point = trial_point(source, space)  # a baseline runs in its recorded form
    return replace(space.suggest_fixed(trial, point), levers=point.levers), confirm_seed(seed, index)


def waiting_confirmations(study) -> int:
    """Queued runs outside ``--n-trials`` (confirmations, learning-rate sweeps), e.g. of an interrupted run."""
    from optuna.trial import TrialState  # optuna: deferred, 'planner tune --help' loads this module

    return sum(t.state == TrialState.WAITING and _extra(t) for t in study.get_trials(deepcopy=False))


def confirm_phase(
    study,
    objective,
    space,
    *,
    top: int,
    seeds: int,
    workload,
    console=None,
    progress: bool = True,
    callbacks=(),
    pool: ProxyPool | None = None,
) -> int:
    """The baselines' learning-rate sweeps, then the confirmation runs still missing; returns how many ran
    (``pool``: trained ``pool.jobs`` at once)."""
    trained = {_metric(t) for t in study.get_trials(deepcopy=False) if record.trained(t) and not _extra(t)}
    if len(trained) < 2:  # nothing to confirm: no plan, or a metric that cannot tell plans apart (no plan is named)
        return 0
    sweeps = enqueue_sweeps(study, space)
    if sweeps and console is not None:
        console.print(f"learning-rate sweeps of the baselines that fit: {sweeps} proxy runs", highlight=False)
    ran = _run_queued(study, objective, sweeps, workload, console, progress, callbacks, pool)
    candidates = select_candidates(study.get_trials(deepcopy=False), workload.direction, top)
    waiting = enqueue_confirmation(study, candidates, seeds)
    if waiting and console is not None:
        console.print(
            f"confirming {len(candidates)} plans ({', '.join(plan_name(t) for t in candidates)}) with {seeds} seeds "
            f"each: {waiting} proxy runs",
            highlight=False,
        )
    return ran + _run_queued(study, objective, waiting, workload, console, progress, callbacks, pool)


def _extra(trial) -> bool:
    """A run outside ``--n-trials``: a confirmation or a baseline's learning-rate sweep."""
    rec = record.read(trial)
    return rec.is_confirm or rec.is_sweep


def _run_queued(study, objective, waiting: int, workload, console, progress, callbacks, pool=None) -> int:
    """Train the queued extra runs, this process's share of them (other queued trials keep waiting)."""
    if not waiting:
        return 0
    bar = TrialProgress(
        waiting, 0, metric_name=workload.metric_name, direction=workload.direction, console=console, enabled=progress
    )

    def body() -> None:
        # not study.optimize: when another worker takes the last queued run, it would start a fresh searched trial
        while (trial_id := _pop_extra(study)) is not None:
            frozen = _run_one(study, objective, trial_id)
            for callback in (bar, *callbacks):
                callback(study, frozen)

    with bar:
        if pool is None:
            body()
        else:
            from planner.tune.study.slots import in_slots  # deferred: it loads optuna, 'planner tune --help' this

            in_slots(pool, body)
    return bar.done  # the bar counts every run that ended, under its lock when slots end runs at once


def _run_one(study, objective, trial_id: int):
    """One popped trial through ``objective`` and ``study.tell``, as ``study.optimize`` runs a trial."""
    # optuna: deferred, 'planner tune --help' loads this module
    import optuna
    from optuna.trial import TrialState

    trial = optuna.Trial(study, trial_id)
    value, state = None, None
    try:
        value = objective(trial)
    except optuna.TrialPruned:
        state = TrialState.PRUNED
    except Exception:  # noqa: BLE001 - the objective stored the reason; the study goes on, as with catch=(Exception,)
        state = TrialState.FAIL
    if state is None and (
        value is None or any(not math.isfinite(v) for v in (value if isinstance(value, tuple) else (value,)))
    ):
        state, value = TrialState.FAIL, None  # diverged: a failed trial
    return study.tell(trial, value, state=state, skip_if_finished=True)


def _pop_extra(study) -> int | None:
    """Claim the oldest queued extra run (:func:`_extra`); None when none is left."""
    # optuna: deferred, 'planner tune --help' loads this module
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    for t in study._storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,)):
        if not _extra(t):
            continue
        try:
            if study._storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                return t._trial_id
        except UpdateFinishedTrialError:
            continue
    return None


# ---- from the stored runs to the answer (weighed by planner.tune.study.verdict) ----------------


def confirmation_record(trials, best: Confirmed, *, seed: int, steps: int, direction: str) -> Confirmation:
    """What the plan file carries: every candidate's seeds, mean and std, and the margins over the baselines."""
    runs = confirmed(trials)
    n = max((len(r.metrics) + r.failed for r in runs), default=0)
    sign = 1.0 if direction == "maximize" else -1.0
    runs.sort(key=lambda r: (not r.complete, -sign * (r.mean if r.mean is not None else -sign * math.inf), r.peak))
    cands = [
        ConfirmedRun(
            name=plan_name(r.source),
            kind=str(kind_of(r.source)),
            trial_number=r.source.number,
            learning_rate=float(r.source.params["lr"]),
            predicted_peak_bytes=r.peak,
            metrics=r.metrics,
            failed=r.failed,
            mean=r.mean,
            std=r.std,
        )
        for r in runs
    ]
    top = next((r for r in runs if r.source.number == best.source.number), best)
    separated, verdict = signal_verdict(runs, top, direction)
    return Confirmation(
        seeds=[confirm_seed(seed, i) for i in range(n)],
        steps=steps,
        candidates=cands,
        margins=margins(runs, best, trials, direction),
        separated=separated,
        verdict=verdict,
    )


def report_lines(trials, direction: str, metric_name: str) -> list[str]:
    """The confirmation as one-line facts for `planner report`: each candidate's mean ± std, the margins."""
    runs = confirmed(trials)
    top = best_confirmed(runs, direction)
    if top is None:
        return []
    sign = 1.0 if direction == "maximize" else -1.0
    runs.sort(key=lambda r: (not r.complete, -sign * (r.mean if r.mean is not None else -sign * math.inf)))
    out = [
        f"confirmation ({max(len(r.metrics) + r.failed for r in runs)} seeds per plan, {metric_name} mean ± std, "
        f"predicted peak): "
        + "; ".join(
            f"{plan_name(r.source)}{' (tuned plan)' if r is top else ''} "
            + (f"{r.mean:.4f} ± {r.std:.4f}" if r.metrics else "-")
            + f" at {human_bytes(r.peak)}"
            + (f", {r.failed} failed" if r.failed else "")
            for r in runs
        )
    ]
    for m in margins(runs, top, trials, direction):
        out.append(
            f"vs {m.baseline} ({human_bytes(m.baseline_peak_bytes)}): "
            + (
                m.verdict
                if m.margin is None or m.versus_peak_bytes is None
                else f"{m.versus} at {human_bytes(m.versus_peak_bytes)} {m.margin:+.4f} (2 standard errors {m.noise:.4f}): {m.verdict}"
            )
        )
    out.append(signal_verdict(runs, top, direction)[1])
    return out
