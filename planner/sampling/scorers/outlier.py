"""OwLore-style outlier-weighted sampling (Li et al. 2024, arXiv 2405.18380).

Layer l's share of outlier weights, the layerwise outlier distribution of OWL:

    A_ij = |W_ij| · ‖X_j‖₂,   D_l = #{(i, j) in layer l : A_ij > M · mean_l(A)} / #weights of layer l,   p_l ∝ D_l

over every linear weight of the layer (mean_l over the whole layer), with ‖X_j‖₂ the L2 norm of
input feature j over the tokens of a calibration batch, and M ≈ 13. Before a calibration batch
is seen (and only then) ‖X_j‖₂ is taken as 1, i.e. outliers of |W| alone. When no layer has an
outlier the draw is uniform.
"""

from __future__ import annotations

import torch
from torch import nn

from planner.errors import PlannerError
from planner.sampling.scorers.base import Scorer, forward_with_hooks, register_scorer


def layer_linears(layer: nn.Module) -> list[tuple[nn.Module, torch.Tensor]]:
    """(module, weight as (out, in)) for each dense projection of a layer, adapters excluded."""
    found: list[tuple[nn.Module, torch.Tensor]] = []
    for name, module in layer.named_modules():
        if "lora_" in name:
            continue
        if isinstance(module, nn.Linear):
            found.append((module, module.weight))
        elif type(module).__name__ == "Conv1D":  # GPT-2 stores (in, out)
            found.append((module, module.weight.t()))
    return found


@register_scorer("outlier")
class OutlierScorer(Scorer):
    """p_l ∝ D_l, the share of outlier weights of layer l (activation-aware once calibrated)."""

    needs_calibration = True

    def __init__(self, *, threshold: float = 13.0) -> None:
        if not threshold > 0:
            raise PlannerError(f"outlier scorer `threshold > 0` must hold, but got threshold={threshold}")
        self.threshold = float(threshold)
        self.calibrated = False

    def bind(self, sampler) -> None:
        super().bind(sampler)
        self.shares = self.outlier_shares(None)

    def outlier_shares(self, act_norms: dict[int, torch.Tensor] | None) -> list[float]:
        """D_l for every layer; ``act_norms`` maps id(module) to ‖X_j‖₂ (None: |W| only)."""
        shares = []
        with torch.no_grad():
            for layer in self.sampler.parts.layers:
                scores = []
                for module, w in layer_linears(layer):
                    a = w.detach().abs().float()
                    if act_norms is not None and id(module) in act_norms:
                        a = a * act_norms[id(module)].to(a.device)[None, :]
                    scores.append(a.flatten())
                if not scores:
                    shares.append(0.0)
                    continue
                a = torch.cat(scores)
                shares.append(float((a > self.threshold * a.mean()).sum()) / a.numel())
        return shares

    def calibrate(self, model, batch: dict) -> None:
        sums: dict[int, torch.Tensor] = {}

        def hook(module, args):
            x = args[0].detach().float()
            sq = x.reshape(-1, x.shape[-1]).pow(2).sum(0)
            sums[id(module)] = sums.get(id(module), 0) + sq

        handles = [
            m.register_forward_pre_hook(hook) for layer in self.sampler.parts.layers for m, _ in layer_linears(layer)
        ]
        forward_with_hooks(model, batch, handles)
        self.shares = self.outlier_shares({k: v.sqrt() for k, v in sums.items()})
        self.calibrated = True

    def weights(self) -> list[float]:
        return self._normalize(self.shares)
