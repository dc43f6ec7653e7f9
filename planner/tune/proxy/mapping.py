"""From a target plan to the proxy plan that trains in its place, and the learning rate back.

Depth rule (target with L_t decoder layers, proxy with L_p <= L_t, f = L_p / L_t):

    γ_p         = clamp(round(γ · f), 1, L_p)
    min_depth_p = clamp(round(min_depth · f), 0, L_p - γ_p)

K (steps between re-draws), the scorer, embeddings/head and the LoRA rank are unchanged;
rounding is half up. Levers that change memory and time, not the result (gradient checkpointing,
the step in backward, chunked loss: ``Lever.changes_result`` false): only the target itself trains
with them (its measured memory must match the prediction); any other proxy trains without them.
Levers that change the result (quantized frozen weights, the optimizer) stay. Example: Llama-3-8B (32 layers) on a
4-layer proxy: γ = 5 at min_depth 24 trains γ_p = round(0.625) = 1 at min_depth_p = 3.
Target plans that map to the same proxy plan may share one proxy run. The built-in proxy is as deep
as targets of up to 32 layers (f = 1: the rule is the identity); Llama-2-70B (80 layers) on its 32:
γ = 5 trains γ_p = round(2.0) = 2.

Learning-rate rule: the search tunes the proxy's learning rate. When the proxy is narrower
than the target, the target's rate is ``lr_p · d_p / d_t`` (d: hidden size): with Adam the
learning rate of hidden weight matrices scales as 1/width (μP; Yang et al. 2022, "Tensor
Programs V", Table 3). Example: 1e-3 tuned on the built-in proxy (d=64) -> 1e-3 · 64/4096 = 1.6e-5
for a d=4096 target. A proxy of the target's width (the target itself) keeps the rate.
"""

from __future__ import annotations

from dataclasses import asdict, replace

from planner.errors import PlannerError
from planner.levers import lever_of
from planner.tune.search.space import TrialParams


def _round_half_up(x: float) -> int:
    return int(x + 0.5)


def proxy_params(params: TrialParams, *, target_layers: int, proxy_layers: int, is_target: bool = False) -> TrialParams:
    """The proxy point for target point ``params`` (see the module docstring)."""
    if not 1 <= proxy_layers <= target_layers:
        raise PlannerError(
            f"`1 <= proxy layers <= target layers` must hold, but got {proxy_layers} and {target_layers}"
        )
    if is_target:
        return params
    params = replace(
        params,
        gradient_checkpointing=False,
        levers=tuple((k, v) for k, v in params.levers if lever_of(k).changes_result),
    )
    if proxy_layers == target_layers:
        return params
    f = proxy_layers / target_layers
    active_layers = min(proxy_layers, max(1, _round_half_up(params.active_layers * f)))
    depth = min(proxy_layers - active_layers, max(0, _round_half_up(params.min_depth * f)))
    return replace(params, active_layers=active_layers, min_depth=depth)


def target_lr(proxy_lr: float, *, proxy_hidden: int, target_hidden: int) -> float:
    """The target's learning rate for a rate tuned on the proxy (μP width rule; see the module docstring)."""
    if proxy_hidden <= 0 or target_hidden <= 0:
        raise PlannerError(f"hidden sizes must be > 0, but got proxy {proxy_hidden} and target {target_hidden}")
    return proxy_lr * proxy_hidden / target_hidden


def reuse_key(params: TrialParams, batch_size: int) -> str:
    """Trials whose proxy runs would be identical share this key: every field of the proxy point (LoRA rank
    0 and None both mean no adapters) and the batch."""
    fields = asdict(replace(params, lora_rank=params.adapter_rank, batch_size=None))
    return repr((sorted(fields.items()), batch_size))
