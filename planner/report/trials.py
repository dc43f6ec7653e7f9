"""A study's trials as a report sees them: one point per trial, the Pareto front, the best trial, the
metric's history and the adaptive scorers' importance maps."""

from __future__ import annotations

import math

from planner.report.data import HistoryPoint, ImportanceMap, TrialPoint
from planner.tune.study import record
from planner.tune.study.kinds import SEARCH, Confirm

MAX_IMPORTANCE_MAPS = 4


def int_or_none(v) -> int | None:
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


def trial_point(t) -> TrialPoint:
    rec, p = record.read(t), t.params
    state = t.state.name
    metric = None
    if state == "COMPLETE":
        vals = t.values
        metric = _finite(vals[0]) if vals else _finite(rec.metric)
    lowest = rec.lowest_layer
    if lowest is None and rec.trainable_layers:
        lowest = min(rec.trainable_layers)
    return TrialPoint(
        number=t.number,
        state=state,
        kind=rec.kind,
        peak_bytes=rec.predicted_peak_bytes,
        metric=metric,
        gated=bool(rec.gated),
        fits=rec.fits,
        reason=rec.reason or "",
        active_layers=int_or_none(p.get("active_layers")),
        lowest_layer=lowest,
        scorer=p.get("scorer"),
    )


def pareto_front(points: list[TrialPoint], direction: str) -> list[int]:
    """Numbers of the trials no other trial beats on both metric and predicted peak (lower peak is better)."""
    sign = 1.0 if direction == "maximize" else -1.0
    # (number, signed metric: higher is better, peak)
    cand = [
        (p.number, sign * p.metric, p.peak_bytes) for p in points if p.metric is not None and p.peak_bytes is not None
    ]
    front = []
    for number, metric, peak in cand:
        dominated = any(
            (q_metric >= metric and q_peak <= peak) and (q_metric > metric or q_peak < peak)
            for _, q_metric, q_peak in cand
        )
        if not dominated:
            front.append(number)
    return sorted(front)


def best_point(points: list[TrialPoint], direction: str, multi_objective: bool) -> TrialPoint | None:
    """The trial ``planner tune`` writes as the plan: the best metric among trained trials that fit (any
    kind; on the Pareto front when multi-objective), the lower predicted peak breaking ties."""
    sign = 1.0 if direction == "maximize" else -1.0
    cand = [
        p
        for p in points
        if p.state == "COMPLETE" and p.metric is not None and p.fits is True and not isinstance(p.kind, Confirm)
    ]  # a confirmation run is one seed of another trial's point
    if multi_objective and any(p.pareto for p in cand):
        cand = [p for p in cand if p.pareto]
    if not cand:
        return None

    def rank(p: TrialPoint) -> tuple[float, int, int]:
        assert p.metric is not None  # cand holds trials with a metric only
        return sign * p.metric, -(p.peak_bytes or 0), -p.number

    return max(cand, key=rank)


def metric_history(points: list[TrialPoint], direction: str) -> list[HistoryPoint]:
    sign = 1.0 if direction == "maximize" else -1.0
    best = None
    out = []
    for p in sorted(points, key=lambda p: p.number):
        if p.metric is None:
            continue
        if p.kind == SEARCH and (best is None or sign * p.metric > sign * best):
            best = p.metric
        out.append(HistoryPoint(p.number, p.kind, p.metric, best))
    return out


def importance_maps(
    trials, points: dict[int, TrialPoint], num_layers: int | None, direction: str, best: int | None
) -> list[ImportanceMap]:
    """One map per adaptive scorer: the scorer's best trial whose sampling weights change over training."""
    sign = 1.0 if direction == "maximize" else -1.0
    per_scorer: dict[str, ImportanceMap] = {}
    for t in trials:
        history = record.read(t).importance or []
        rows = [r for r in history if isinstance(r, dict) and r.get("weights")]
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
        m = ImportanceMap(
            t.number,
            scorer,
            [int(r.get("step", i)) for i, r in enumerate(rows)],
            L,
            weights,
            [sorted(int(a) for a in (r.get("active") or [])) for r in rows],
            pt.metric,
        )
        cur = per_scorer.get(scorer)

        def rank(x: ImportanceMap):
            return (x.trial_number == best, x.metric is not None, sign * (x.metric or 0.0))

        if cur is None or rank(m) > rank(cur):
            per_scorer[scorer] = m
    maps = sorted(per_scorer.values(), key=lambda m: (m.trial_number != best, m.scorer))
    return maps[:MAX_IMPORTANCE_MAPS]
