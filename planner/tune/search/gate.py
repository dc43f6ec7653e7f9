"""The budget gate: every trial's peak is predicted before any training; over budget = never trained."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from planner.config import TrainConfig
from planner.plan import BREAKDOWN_KEYS
from planner.units import human_bytes  # noqa: F401 - the budget's words; defined with the other byte units


@dataclass(frozen=True)
class Prediction:
    """The cost model's answer for one configuration, and whether it fits the budget."""

    peak_bytes: int
    breakdown: dict  # the six BREAKDOWN_KEYS, ints
    trainable_layers: list[int]  # the worst-case draw's layers (a sampler can draw any of them)
    fits: bool

    @property
    def lowest_layer(self) -> int:
        """Lowest decoder layer of the worst-case draw (it sets activation memory); -1 if none."""
        return min(self.trainable_layers) if self.trainable_layers else -1


def _breakdown_dict(breakdown) -> dict:
    if hasattr(breakdown, "model_dump"):
        breakdown = breakdown.model_dump()
    return {k: int(breakdown.get(k, 0)) for k in BREAKDOWN_KEYS}


class BudgetGate:
    """Predicts peaks with ``planner.cost.estimate`` (cached per configuration) against ``vram_bytes``."""

    def __init__(self, spec, vram_bytes: int, *, device: str = "cuda", profile=None, estimator: Callable | None = None):
        self.spec = spec
        self.vram_bytes = int(vram_bytes)
        self.device = device
        self.profile = profile
        self._estimator = estimator
        self._cache: dict[str, Prediction] = {}

    def _estimate(self, config: TrainConfig):
        if self._estimator is None:
            # planner.cost (torch): deferred to the first prediction, 'planner tune --help' loads this module
            from planner.cost import estimate

            self._estimator = estimate
        return self._estimator(self.spec, config, device=self.device, profile=self.profile)

    def predict(self, config: TrainConfig) -> Prediction:
        key = config.model_dump_json()
        if key not in self._cache:
            est = self._estimate(config)
            peak = int(est.peak_bytes)
            layers = sorted(int(i) for i in (getattr(est, "trainable_layers", None) or []))
            self._cache[key] = Prediction(peak, _breakdown_dict(est.breakdown), layers, peak <= self.vram_bytes)
        return self._cache[key]

    def reason(self, prediction: Prediction) -> str:
        """The one-line reason a gated trial was never trained."""
        return (
            f"predicted peak {human_bytes(prediction.peak_bytes)} ({prediction.peak_bytes} B) exceeds the budget "
            f"{human_bytes(self.vram_bytes)} ({self.vram_bytes} B)"
        )
