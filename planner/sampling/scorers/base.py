"""Scorer contract and registry: a scorer decides which decoder layers train next.

A scorer is a strategy registered by name (like optuna samplers). The sampler binds it to a
model, asks it for per-layer weights (what the importance heatmap shows) and for the next
active set, and feeds it what it may learn from: calibration batches, gradient norms of the
active layers, and the loss of each step with its batch.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from planner.errors import PlannerError
from planner.registry import registrar

if TYPE_CHECKING:
    from planner.sampling.sampler import LayerSampler

SCORERS: dict[str, type["Scorer"]] = {}


register_scorer = registrar(SCORERS, "scorer")
"""Class decorator factory: ``@register_scorer(name)`` makes a :class:`Scorer` available as ``get_scorer(name)``."""


def scorer_options(name: str) -> list[str]:
    """Keyword options a registered scorer accepts."""
    sig = inspect.signature(SCORERS[name].__init__)
    return [p.name for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY]


def get_scorer(name: str, **options: Any) -> "Scorer":
    """Instantiate the scorer registered as ``name`` with its keyword options."""
    if name not in SCORERS:
        raise PlannerError(f"scorer must be one of {sorted(SCORERS)}, but got {name!r}")
    allowed = scorer_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise PlannerError(f"scorer {name!r} takes options {allowed}, but got unknown {unknown}")
    return SCORERS[name](**options)


def draw_without_replacement(
    rng: np.random.Generator, candidates: list[int], weights: list[float], k: int
) -> list[int]:
    """Draw ``k`` distinct candidates with probability proportional to ``weights`` (sequentially, as numpy does)."""
    w = np.asarray(weights, dtype=float)
    w = np.where(np.isfinite(w) & (w > 0), w, 0.0)
    if np.count_nonzero(w) < k:  # too few positive weights: let zero-weight layers fill the draw
        w = w + (w.max() if w.max() > 0 else 1.0) * 1e-6
    picked = rng.choice(len(candidates), size=k, replace=False, p=w / w.sum())
    return sorted(int(candidates[i]) for i in picked)


class Scorer:
    """Base strategy: weighted draws of γ layers among the candidates (``min_depth..L-1``).

    Subclasses override :meth:`weights` (and :meth:`select` when the draw is not a weighted
    draw), and any of the learning hooks.
    """

    name: ClassVar[str] = ""
    #: wants a batch before the first draw (activation statistics, hidden-state traces)
    needs_calibration: ClassVar[bool] = False
    #: wants the gradient norm of each active layer after every backward
    wants_gradients: ClassVar[bool] = False
    #: draws only among the top γ layers and never changes them (a static set): the layers below L - γ never
    #: train, so their weights may be stored quantized (the quantize lever)
    static: ClassVar[bool] = False
    #: how its draws look to a trainer that only knows uniform or ordered draws (planner.export): ``uniform``,
    #: ``ordered`` (blocks in turn) or ``weighted`` (learns or weighs layers); a static scorer is its own kind
    draw: ClassVar[str] = "weighted"

    sampler: "LayerSampler"

    def bind(self, sampler: "LayerSampler") -> None:
        """Attach to a sampler; raise :class:`PlannerError` when the options cannot work for its model."""
        self.sampler = sampler

    @property
    def num_layers(self) -> int:
        return self.sampler.num_layers

    @property
    def candidates(self) -> list[int]:
        return self.sampler.candidates

    @property
    def active_layers(self) -> int:
        return self.sampler.active_layers

    @property
    def rng(self) -> np.random.Generator:
        return self.sampler.rng

    def weights(self) -> list[float]:
        """Per-layer sampling weights over all L layers, normalized to sum 1 over the candidates."""
        return self._normalize([1.0] * self.num_layers)

    def select(self, step: int) -> list[int]:
        """The next active set: γ distinct candidates."""
        w = self.weights()
        return draw_without_replacement(self.rng, self.candidates, [w[i] for i in self.candidates], self.active_layers)

    # learning hooks -------------------------------------------------------------------------
    def calibrate(self, model, batch: dict) -> None:
        """Measure what the scorer needs from one batch (called before the first draw of training)."""

    def gradients_due(self, step: int) -> bool:
        """Whether to read gradient norms after step ``step`` (only asked when ``wants_gradients``)."""
        return True

    def on_gradients(self, step: int, norms: dict[int, float]) -> None:
        """Gradient L2 norm of each active layer, after backward and before the optimizer step."""

    def wants_batch(self, step: int) -> bool:
        """Whether :meth:`observe` needs a batch after step ``step`` (trainers that do not hand one out fetch it)."""
        return False

    def observe(self, step: int, loss: float, batch: dict | None) -> None:
        """The loss of a finished step (NaN where the trainer does not expose it) and its batch."""

    # helpers -----------------------------------------------------------------------------------
    def _normalize(self, raw: list[float]) -> list[float]:
        cand = set(self.candidates)
        vals = [float(raw[i]) if i in cand else 0.0 for i in range(self.num_layers)]
        total = sum(vals)
        if not total > 0:
            vals = [1.0 if i in cand else 0.0 for i in range(self.num_layers)]
            total = float(len(cand))
        return [v / total for v in vals]

    def _indicator(self, layers: list[int]) -> list[float]:
        chosen = set(layers)
        return [1.0 / len(chosen) if i in chosen else 0.0 for i in range(self.num_layers)]


def forward_with_hooks(model, batch: dict, handles: list) -> None:
    """One no-grad forward of ``batch`` that removes the given hook handles afterwards, even on error."""
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        for h in handles:
            h.remove()
