"""What a person watching `planner tune` sees while it runs: a progress bar."""

from __future__ import annotations

import math


class TrialProgress:
    """An Optuna callback driving a rich progress bar: trials done, gated, best so far, time left."""

    def __init__(self, total: int, done: int, *, metric_name: str, direction: str, console=None, enabled: bool = True):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.metric_name = metric_name
        self.direction = direction
        self.best: float | None = None
        self.gated = 0
        self.failed = 0
        self.progress = Progress(
            TextColumn("[bold]tune"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(), console=console, disable=not enabled,
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
        from optuna.trial import TrialState

        if trial.user_attrs.get("gated"):
            self.gated += 1
        elif trial.state == TrialState.FAIL:
            self.failed += 1
        value = trial.user_attrs.get("metric")
        if trial.state == TrialState.COMPLETE and value is not None and math.isfinite(value):
            better = self.best is None or (value > self.best if self.direction == "maximize" else value < self.best)
            if better:
                self.best = float(value)

    def _refresh(self) -> None:
        best = "-" if self.best is None else f"{self.best:.4g}"
        self.progress.update(self.task, info=f"best {self.metric_name} {best} | gated {self.gated} | failed {self.failed}")

    def __call__(self, study, trial) -> None:
        self._see(trial)
        self.progress.advance(self.task)
        self._refresh()

