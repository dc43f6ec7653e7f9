"""IST, importance-aware sparse tuning (Yao et al., EMNLP Findings 2024).

Each layer i has a score s_i (high = suppressing it does no harm = unimportant). Layers are
drawn with weights σ(−s_i). Every ``update_every`` steps, R rollouts each suppress a random
half of the layers (drawn with weights σ(s_i)); a suppressed layer contributes α = 0.25 of its
update (residual update for full layers, adapter output for LoRA). With loss_k of rollout k:

    r_k = exp(−loss_k) − mean_j exp(−loss_j);   s_i += η · r_k · σ(s_i)(1 − σ(s_i))  for suppressed i

(η = 10, R = 3, suppressed share 50%, as published.)
"""

from __future__ import annotations

import math

import torch

from planner.errors import PlannerError, collect
from planner.sampling.scorers.base import Scorer, draw_without_replacement, register_scorer
from planner.sampling.suppress import suppressed


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@register_scorer("ist")
class ISTScorer(Scorer):
    """Layer scores learned from the loss of suppression rollouts; draws weighted by σ(−s)."""

    def __init__(
        self,
        *,
        update_every: int = 10,
        rollouts: int = 3,
        suppress_ratio: float = 0.5,
        alpha: float = 0.25,
        eta: float = 10.0,
    ) -> None:
        problems = []
        if update_every < 1:
            problems.append(f"ist scorer `update_every >= 1` must hold, but got update_every={update_every}")
        if rollouts < 2:
            problems.append(
                f"ist scorer `rollouts >= 2` must hold (the reward is relative), but got rollouts={rollouts}"
            )
        if not 0 < suppress_ratio < 1:
            problems.append(f"ist scorer `0 < suppress_ratio < 1` must hold, but got suppress_ratio={suppress_ratio}")
        if not 0 <= alpha < 1:
            problems.append(f"ist scorer `0 <= alpha < 1` must hold, but got alpha={alpha}")
        collect(problems)
        self.update_every, self.rollouts = int(update_every), int(rollouts)
        self.suppress_ratio, self.alpha, self.eta = float(suppress_ratio), float(alpha), float(eta)
        self.updates = 0

    def bind(self, sampler) -> None:
        super().bind(sampler)
        self.scores = [0.0] * self.num_layers

    def weights(self) -> list[float]:
        return self._normalize([_sigmoid(-s) for s in self.scores])

    def rollout_losses(self, model, batch: dict) -> tuple[list[list[int]], list[float]]:
        """Run the rollouts on ``batch``: which layers each suppressed and its loss."""
        n = max(1, round(self.suppress_ratio * self.num_layers))
        everyone = list(range(self.num_layers))
        sets, losses = [], []
        with torch.no_grad():
            for _ in range(self.rollouts):
                chosen = draw_without_replacement(self.rng, everyone, [_sigmoid(s) for s in self.scores], n)
                with suppressed(self.sampler.parts.layers, chosen, self.alpha, adapters=self.sampler.parts.adapters):
                    loss = float(model(**batch).loss)
                sets.append(chosen)
                losses.append(loss)
        return sets, losses

    def update(self, sets: list[list[int]], losses: list[float]) -> None:
        """Apply the IST score update for rollouts that suppressed ``sets`` and scored ``losses``."""
        if not all(math.isfinite(x) for x in losses):
            raise PlannerError(f"ist rollout losses must be finite, but got {losses}")
        rewards = [math.exp(-x) for x in losses]
        base = sum(rewards) / len(rewards)
        for chosen, r in zip(sets, rewards):
            r_k = r - base
            for i in chosen:
                sig = _sigmoid(self.scores[i])
                self.scores[i] += self.eta * r_k * sig * (1.0 - sig)
        self.updates += 1

    def wants_batch(self, step: int) -> bool:
        return (step + 1) % self.update_every == 0

    def observe(self, step: int, loss: float, batch: dict | None) -> None:
        if batch is None or not self.wants_batch(step):
            return
        self.update(*self.rollout_losses(self.sampler.model, batch))
