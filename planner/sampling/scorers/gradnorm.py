"""GRASS-style gradient-norm sampling: layers with larger gradients train more often."""

from __future__ import annotations

from planner.errors import PlannerError
from planner.sampling.scorers.base import Scorer, register_scorer


@register_scorer("gradnorm")
class GradNormScorer(Scorer):
    """p_l ∝ ḡ_l, the running mean of layer l's gradient L2 norm over the steps it was active.

    ``ema=None`` keeps the plain mean; ``ema=β`` an exponential mean ḡ ← β·ḡ + (1−β)·g. A layer
    never measured gets the optimistic prior ``prior × max_l ḡ_l`` (1.0 before any measurement), so
    every layer is explored before the estimate settles. ``every=n`` reads the norms on every
    n-th step only (a read costs one pass over the active layers' gradients).
    """

    wants_gradients = True

    def __init__(self, *, ema: float | None = None, prior: float = 1.0, every: int = 1) -> None:
        if not isinstance(every, int) or every < 1:
            raise PlannerError(f"gradnorm scorer `every` must be an integer >= 1, but got every={every!r}")
        if ema is not None and not 0.0 <= ema < 1.0:
            raise PlannerError(f"gradnorm scorer `0 <= ema < 1` must hold, but got ema={ema}")
        if not prior > 0:
            raise PlannerError(f"gradnorm scorer `prior > 0` must hold, but got prior={prior}")
        self.ema = ema
        self.prior = float(prior)
        self.every = every
        self.mean: dict[int, float] = {}
        self.count: dict[int, int] = {}

    def gradients_due(self, step: int) -> bool:
        return step % self.every == 0

    def on_gradients(self, step: int, norms: dict[int, float]) -> None:
        for i, g in norms.items():
            n = self.count.get(i, 0)
            if n == 0:
                self.mean[i] = g
            elif self.ema is None:
                self.mean[i] += (g - self.mean[i]) / (n + 1)
            else:
                self.mean[i] = self.ema * self.mean[i] + (1 - self.ema) * g
            self.count[i] = n + 1

    def weights(self) -> list[float]:
        optimistic = self.prior * max(self.mean.values(), default=1.0)
        return self._normalize([self.mean.get(i, optimistic) for i in range(self.num_layers)])
