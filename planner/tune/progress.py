"""What a person watching `planner tune` sees: a progress bar while it runs, a table at the end."""

from __future__ import annotations

import math

from planner.tune.gate import human_bytes


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


def summary_table(result, *, metric_name: str, vram_bytes: int):
    """Best plan vs baselines: metric, predicted peak, fits, and what tuning wins."""
    from rich.table import Table

    table = Table(title=f"planner tune: best plan vs baselines (budget {human_bytes(vram_bytes)})")
    for col in ("plan", metric_name, "predicted peak", "fits", "tuned wins by", "trial"):
        table.add_column(col, justify="left" if col in ("plan", "fits") else "right")
    for row in result.rows:
        metric = "-" if row.metric is None else f"{row.metric:.4f}"
        peak = "-" if row.predicted_peak_bytes is None else human_bytes(row.predicted_peak_bytes)
        fits = "-" if row.fits is None else ("yes" if row.fits else "no (never trained)")
        if row.name == "tuned plan":
            delta = ""
        elif row.delta is None:
            delta = (row.reason or row.state)[:40]
        else:
            delta = f"{row.delta:+.4f}"
        table.add_row(row.name, metric, peak, fits, delta, str(row.trial_number))
    return table
