"""A plan's confirmation record: its candidates re-trained with several seeds, and the margins over the baselines.

Written by ``planner tune`` (see :mod:`planner.tune.study.confirm` for how it is measured) into the plan file.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ConfirmedRun(BaseModel):
    """One candidate's seeds: a searched plan (``kind`` search) or a baseline at its best learning rate."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="'trial N' for a searched plan, else the baseline's name")
    kind: str
    trial_number: int = Field(description="the trial whose point was re-trained")
    learning_rate: float = Field(description="the proxy's learning rate")
    predicted_peak_bytes: int
    metrics: list[float] = Field(description="the held-out metric of each confirmation seed, in seed order")
    failed: int = Field(default=0, description="seeds whose run failed or diverged")
    mean: float | None = None
    std: float | None = Field(default=None, description="sample standard deviation across seeds (0 for one seed)")


class Margin(BaseModel):
    """The tuned plan (or the best confirmed plan at equal or lower predicted memory) against one baseline."""

    model_config = ConfigDict(extra="forbid")
    baseline: str
    baseline_peak_bytes: int
    fits: bool = Field(description="whether the baseline fits the budget (one that does not is never trained)")
    versus: str | None = Field(
        default=None, description="the confirmed plan compared: the tuned plan when its peak is not higher"
    )
    versus_peak_bytes: int | None = None
    margin: float | None = Field(
        default=None, description="versus mean - baseline mean, signed so > 0 means versus is better"
    )
    noise: float | None = Field(default=None, description="2 × the standard error of the difference of the two means")
    verdict: str


class Confirmation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seeds: list[int] = Field(description="the proxy seeds (data order and layer draws) every candidate trained with")
    steps: int
    candidates: list[ConfirmedRun]
    margins: list[Margin] = Field(default_factory=list)
    separated: bool | None = Field(
        default=None,
        description=(
            "whether the tuned plan's margin over the runner-up or over a trained baseline exceeds the seed noise "
            "(False: the scores cannot tell the plans apart; None: nothing to compare, or one seed measures no noise)"
        ),
    )
    verdict: str | None = Field(default=None, description="that comparison in one line")
