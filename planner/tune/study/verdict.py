"""Confirmed plans weighed against the seed noise (:mod:`planner.tune.study.confirm` trains them): per candidate its
confirmation runs' metrics, the margins of the tuned plan over the baselines, and whether the scores tell plans apart.

Noise: the margin of plan a over baseline b is ``mean_a - mean_b`` (signed so > 0 means a is better).
It exceeds the seed noise when ``|margin| > 2·SE``, ``SE = sqrt(s_a²/n_a + s_b²/n_b)`` (Welch's
standard error of a difference of means; s: the sample std over seeds, n: seeds). Example: means 0.80
and 0.74, stds 0.03 and 0.05 over 3 seeds: SE = sqrt(0.0009/3 + 0.0025/3) = 0.034, 2·SE = 0.067 >
0.06: within the seed noise.

Signal: before the plan is named, the tuned plan (the best confirmed mean) is compared, by the same
rule, with the runner-up (the next best confirmed candidate, searched or baseline) and with every
confirmed baseline. When none of these margins exceeds 2·SE the scores cannot tell the plans apart:
the record says so (``separated`` False and a one-line ``verdict``), and `planner tune` prints that
line and exits with 1. With one seed no noise is measured (``separated`` None).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

from planner.confirmation import Margin
from planner.tune.study import record
from planner.tune.study.baselines import KINDS, best_of_kind
from planner.tune.study.kinds import SEARCH, Baseline, Confirm
from planner.tune.study.record import counted, kind_of

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

NOISE_SE = 2.0  # a margin beyond this many standard errors of the difference exceeds the seed noise
BEYOND, WITHIN, WORSE = "beyond the seed noise", "within the seed noise", "worse beyond the seed noise"


def plan_name(trial) -> str:
    """How a confirmed plan is named: its baseline (``lora``), or ``trial <number>`` for a searched one."""
    kind = kind_of(trial)
    return kind.name if isinstance(kind, Baseline) else f"trial {trial.number}"


@dataclass
class Confirmed:
    source: FrozenTrial
    metrics: list[float]
    failed: int

    @property
    def complete(self) -> bool:
        return not self.failed and bool(self.metrics)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.metrics) if self.metrics else None

    @property
    def std(self) -> float | None:
        if not self.metrics:
            return None
        return statistics.stdev(self.metrics) if len(self.metrics) > 1 else 0.0

    @property
    def peak(self) -> int:
        peak = record.read(self.source).predicted_peak_bytes
        assert peak is not None  # the source trained within the budget: its peak was predicted
        return int(peak)


def confirmed(trials) -> list[Confirmed]:
    """Every confirmed source trial with its per-seed metrics (one finished run per seed index)."""
    from optuna.trial import TrialState  # optuna: deferred, 'planner tune --help' loads this module (through confirm)

    by_number = {t.number: t for t in trials}
    runs: dict[int, dict[int, float | None]] = {}
    for t in sorted(trials, key=lambda t: t.number):
        kind = kind_of(t)
        if not isinstance(kind, Confirm) or not counted(t) or kind.trial not in by_number:
            continue
        seeds = runs.setdefault(kind.trial, {})
        if kind.seed not in seeds:
            seeds[kind.seed] = record.read(t).finite_metric if t.state == TrialState.COMPLETE else None
    out = []
    for number, seeds in runs.items():
        values = [seeds[i] for i in sorted(seeds)]
        out.append(Confirmed(by_number[number], [v for v in values if v is not None], sum(v is None for v in values)))
    return out


def best_confirmed(runs: list[Confirmed], direction: str) -> Confirmed | None:
    """The best mean among candidates whose every seed finished (the lower predicted peak breaks ties)."""
    sign = 1.0 if direction == "maximize" else -1.0
    ok = [r for r in runs if r.complete]
    # a complete run has metrics: its mean is theirs
    return max(ok, key=lambda r: (sign * statistics.fmean(r.metrics), -r.peak, -r.source.number), default=None)


def margin(a: Confirmed, b: Confirmed, direction: str) -> tuple[float, float, str]:
    """(margin of a over b, 2·SE, verdict); see the module docstring."""
    sign = 1.0 if direction == "maximize" else -1.0
    if a.mean is None or b.mean is None or a.std is None or b.std is None:
        raise ValueError("a margin compares two runs with metrics")
    diff = sign * (a.mean - b.mean)
    noise = NOISE_SE * math.sqrt(a.std**2 / len(a.metrics) + b.std**2 / len(b.metrics))
    verdict = BEYOND if diff > noise else (WORSE if diff < -noise else WITHIN)
    return diff, noise, verdict


def margins(runs: list[Confirmed], best: Confirmed, trials, direction: str) -> list[Margin]:
    """Per baseline: the tuned plan against it, or, when the tuned plan's predicted peak is higher, the best
    confirmed searched plan at equal or lower peak (so a win is never bought with memory)."""
    by_source = {r.source.number: r for r in runs if r.complete}
    out = []
    for kind in KINDS:
        t = best_of_kind(trials, kind, direction)
        rec = None if t is None else record.read(t)
        if rec is None or rec.predicted_peak_bytes is None:
            continue
        name, peak = kind.name, int(rec.predicted_peak_bytes)
        if rec.fits is not True:
            out.append(
                Margin(
                    baseline=name,
                    baseline_peak_bytes=peak,
                    fits=False,
                    verdict="does not fit the budget: never trained",
                )
            )
            continue
        base = by_source.get(t.number)
        if base is None:
            out.append(
                Margin(baseline=name, baseline_peak_bytes=peak, fits=True, verdict="not confirmed (its runs failed)")
            )
            continue
        versus = best
        searched = [r for r in by_source.values() if kind_of(r.source) == SEARCH]
        if best.peak > peak:
            versus = best_confirmed([r for r in searched if r.peak <= peak], direction) or best
        if versus is base:  # the baseline is the tuned plan: how far the search got is the margin worth stating
            other = best_confirmed([r for r in searched if r.peak <= peak], direction) or best_confirmed(
                searched, direction
            )
            if other is None:
                out.append(
                    Margin(
                        baseline=name,
                        baseline_peak_bytes=peak,
                        fits=True,
                        verdict="is the tuned plan; no searched plan was confirmed to compare with it",
                    )
                )
                continue
            versus = other
        diff, noise, verdict = margin(versus, base, direction)
        if versus.peak > peak:
            verdict += f" (at a higher predicted peak: no confirmed searched plan fits in the {name} baseline's memory)"
        out.append(
            Margin(
                baseline=name,
                baseline_peak_bytes=peak,
                fits=True,
                versus=plan_name(versus.source),
                versus_peak_bytes=versus.peak,
                margin=diff,
                noise=noise,
                verdict=verdict,
            )
        )
    return out


def signal_verdict(runs: list[Confirmed], best: Confirmed, direction: str) -> tuple[bool | None, str]:
    """(separated, one line): whether the tuned plan ``best`` is ahead of the runner-up or of any confirmed baseline
    by more than the seed noise (see the module docstring); None when there is nothing to compare or no noise."""
    others = [r for r in runs if r.complete and r.source.number != best.source.number]
    compared = {}
    runner = best_confirmed(others, direction)
    if runner is not None:
        compared[runner.source.number] = runner
    for r in others:
        if kind_of(r.source) != SEARCH:
            compared[r.source.number] = r
    if not compared:
        return None, "signal not measured: no other confirmed plan to compare the tuned plan with"
    if min(len(r.metrics) for r in (best, *compared.values())) < 2:
        return None, "signal not measured: one confirmation seed measures no seed noise (--confirm-seeds 2 or more)"
    rows = [(plan_name(r.source), *margin(best, r, direction)) for r in compared.values()]
    ahead = [(name, diff, noise) for name, diff, noise, verdict in rows if verdict == BEYOND]
    if ahead:
        return True, (
            f"signal: the tuned plan ({plan_name(best.source)}) is ahead beyond the seed noise of "
            + ", ".join(f"{name} by {diff:.4f} > {noise:.4f}" for name, diff, noise in ahead)
            + " (margin > 2 standard errors)"
        )
    name, diff, noise = max(((n, d, e) for n, d, e, _v in rows), key=lambda row: row[1] - row[2])
    return False, (
        f"no signal: the tuned plan ({plan_name(best.source)}) is not ahead of {', '.join(n for n, *_ in rows)} "
        f"beyond the seed noise (closest: {name} by {diff:+.4f}, 2 standard errors {noise:.4f}); the "
        f"scores cannot tell these plans apart: train longer (--steps), confirm with more seeds "
        f"(--confirm-seeds) or use other data (--data)"
    )
