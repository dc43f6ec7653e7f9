"""What a person watching `planner tune` sees while it runs.

On a terminal, a progress bar; otherwise (``planner tune | tee log``, CI logs) one line per
finished trial, flushed as it happens, since a bar is only drawn once at the end off a terminal.
"""

from __future__ import annotations

import threading
import time

from planner.tune.study import record
from planner.units import human_bytes


class TrialProgress:
    """An Optuna callback: a rich progress bar on a terminal (trials done, gated, best so far, time
    left), else one line per finished trial."""

    def __init__(self, total: int, done: int, *, metric_name: str, direction: str, console=None, enabled: bool = True):
        # rich: deferred to the first bar, ~0.1 s that 'planner tune --help' (it loads this module) need not pay
        from rich import get_console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.metric_name = metric_name
        self.direction = direction
        self.best: float | None = None
        self.gated = 0
        self.failed = 0
        self.total = total
        self.done = min(done, total)
        self.console = console if console is not None else get_console()
        self.lines = enabled and not self.console.is_terminal
        self.started = time.perf_counter()
        self._lock = threading.Lock()  # trials of several slots end at once
        self.progress = Progress(
            TextColumn("[bold]tune"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not enabled or self.lines,
            transient=False,
        )
        self.task = self.progress.add_task("tune", total=total, completed=min(done, total), info="")

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()
        return False

    def seed_best(self, study) -> None:
        """Start from what a resumed study already holds."""
        for trial in study.get_trials(deepcopy=False):
            self._see(trial)
        self._refresh()

    def _see(self, trial) -> None:
        from optuna.trial import TrialState  # optuna: deferred, 'planner tune --help' loads this module

        rec = record.read(trial)
        if rec.gated:
            self.gated += 1
        elif trial.state == TrialState.FAIL and not rec.interrupted:
            self.failed += 1
        value = rec.finite_metric
        if trial.state == TrialState.COMPLETE and value is not None:
            better = self.best is None or (value > self.best if self.direction == "maximize" else value < self.best)
            if better:
                self.best = float(value)

    def _refresh(self) -> None:
        best = "-" if self.best is None else f"{self.best:.4g}"
        self.progress.update(
            self.task, info=f"best {self.metric_name} {best} | gated {self.gated} | failed {self.failed}"
        )

    def __call__(self, study, trial) -> None:
        with self._lock:
            self._see(trial)
            self.progress.advance(self.task)
            self._refresh()
            self.done += 1
            if self.lines:
                print(self.line(trial), file=self.console.file, flush=True)

    def line(self, trial) -> str:
        """``tune: trial 5/24 (#4, search) complete: accuracy 0.8125 | γ=2 K=20 uniform ... | best ... | 41 s``."""
        from optuna.trial import TrialState  # optuna: deferred, 'planner tune --help' loads this module

        rec, p = record.read(trial), trial.params
        if rec.gated:
            outcome = "gated (over budget, not trained)"
        elif trial.state == TrialState.COMPLETE:
            value = rec.metric
            outcome = f"complete: {self.metric_name} " + ("-" if value is None else f"{value:.4f}")
        elif trial.state == TrialState.PRUNED:
            outcome = "pruned early"
        elif trial.state == TrialState.FAIL:
            outcome = f"failed: {(rec.reason or '')[:80]}"
        else:
            outcome = trial.state.name.lower()
        what = (
            f"γ={p['active_layers']} K={p['period']} {p['scorer']}"
            + (f" lora r={p['lora_rank']}" if p.get("lora_rank") else "")
            if "active_layers" in p
            else ""
        )
        peak = rec.predicted_peak_bytes
        if peak is not None:
            what += f", peak {human_bytes(peak)}"
        best = "-" if self.best is None else f"{self.best:.4f}"
        return (
            f"tune: trial {min(self.done, self.total)}/{self.total} (#{trial.number}, {rec.kind}) "
            f"{outcome} | {what} | best {self.metric_name} {best} | gated {self.gated} | failed {self.failed} | "
            f"{time.perf_counter() - self.started:.0f} s"
        )
