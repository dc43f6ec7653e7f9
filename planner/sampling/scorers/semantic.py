"""Static semantic-aware layer freezing, after Gu et al. (arXiv 2406.11753).

On a calibration batch, each decoder layer l moves the hidden state by Δh_l = h_l − h_{l−1}.
The ideal trace moves each position toward its next token, whose direction is that token's
row u_y of the output embedding. A layer's *deviation* is how far its transition veers off
that direction, averaged over the labelled positions:

    δ_l = 1 − mean_t cos(Δh_l,t , u_{y_t})        (0: straight to the target, 2: straight away)

The gain of training the top block l = d..L−1 (n = L − d layers) is estimated as the block's
mean deviation times a power law in its size (diminishing returns, as in scaling-law fits):

    G(d) = mean_{l ≥ d} δ_l · n^α,   α = 0.5 by default

and the layers at and below the best depth stay frozen. The block never exceeds γ layers nor
goes below ``min_depth``, so the memory planned for γ layers bounds it. Chosen once, on the
first calibration batch (static freezing); its weights (for the heatmap) are δ normalized.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from planner.errors import PlannerError
from planner.sampling.scorers.base import Scorer, forward_with_hooks, register_scorer


def best_depth(deviations: list[float], lowest: int, alpha: float) -> int:
    """argmax_d G(d) over d in ``lowest..L-1`` (ties: the smaller block)."""
    num = len(deviations)
    best, best_gain = num - 1, float("-inf")
    for d in range(num - 1, lowest - 1, -1):
        block = deviations[d:]
        gain = sum(block) / len(block) * len(block) ** alpha
        if gain > best_gain:
            best, best_gain = d, gain
    return best


@register_scorer("semantic")
class SemanticScorer(Scorer):
    """Train the contiguous top block above the depth of largest estimated gain."""

    needs_calibration = True
    static = True  # a top block of at most γ layers (``min_depth <= L - γ`` in the search), chosen once

    def __init__(self, *, alpha: float = 0.5) -> None:
        if not 0 <= alpha <= 1:
            raise PlannerError(f"semantic scorer `0 <= alpha <= 1` must hold, but got alpha={alpha}")
        self.alpha = float(alpha)
        self.deviations: list[float] | None = None
        self.depth: int | None = None

    def bind(self, sampler) -> None:
        super().bind(sampler)
        if self.sampler.parts.head_module is None or getattr(self.sampler.parts.head_module, "weight", None) is None:
            raise PlannerError(
                f"semantic scorer needs an output embedding, but {type(sampler.model).__name__} has none"
            )

    def measure(self, model, batch: dict) -> list[float]:
        """δ_l of every layer on ``batch`` (labels, or input_ids when absent, give the targets)."""
        layers = self.sampler.parts.layers
        states: dict[int, torch.Tensor] = {}

        def first_input(module, args, kwargs):
            states[-1] = (args[0] if args else kwargs["hidden_states"]).detach()

        def output_of(i):
            def hook(module, args, output):
                states[i] = (output[0] if isinstance(output, tuple) else output).detach()

            return hook

        handles = [layers[0].register_forward_pre_hook(first_input, with_kwargs=True)]
        handles += [layer.register_forward_hook(output_of(i)) for i, layer in enumerate(layers)]
        forward_with_hooks(model, batch, handles)
        labels = batch.get("labels", batch["input_ids"])
        targets = labels[:, 1:]
        keep = targets != -100
        # (tokens, H); bind() checked the output embedding has a weight, which nn.Module.__getattr__ types as
        # Tensor | Module
        head = self.sampler.parts.head_module
        u = head.weight.detach().float()[targets.clamp(min=0)][keep]  # type: ignore[union-attr, operator]
        deviations = []
        for i in range(len(layers)):
            delta = (states[i] - states[i - 1])[:, :-1].float()[keep]
            deviations.append(float(1.0 - F.cosine_similarity(delta, u, dim=-1).mean()))
        return deviations

    def calibrate(self, model, batch: dict) -> None:
        if self.depth is not None:  # static: chosen once
            return
        self.deviations = self.measure(model, batch)
        lowest = max(self.sampler.min_depth, self.num_layers - self.active_layers)
        self.depth = best_depth(self.deviations, lowest, self.alpha)

    def select(self, step: int) -> list[int]:
        depth = self.depth if self.depth is not None else self.num_layers - self.active_layers
        return list(range(depth, self.num_layers))

    def weights(self) -> list[float]:
        if self.deviations is None:
            return self._normalize([1.0] * self.num_layers)
        return self._normalize([max(d, 0.0) for d in self.deviations])
