"""Proxy training: one configuration trained briefly on the workload, evaluated on its held-out split."""

from __future__ import annotations

from dataclasses import dataclass, field
from time import perf_counter
from typing import Callable

from planner.tune.space import TrialParams

MAX_HISTORY = 50  # sampler re-draws kept per trial (the report's importance heatmap)


@dataclass
class ProxyResult:
    metric: float
    history: list[dict]
    train_seconds: float
    evaluations: list[tuple[int, float]] = field(default_factory=list)


def thin(history: list, limit: int = MAX_HISTORY) -> list:
    """At most ``limit`` entries, evenly spaced, first and last kept."""
    if len(history) <= limit:
        return list(history)
    step = (len(history) - 1) / (limit - 1)
    return [history[round(i * step)] for i in range(limit)]


def _jsonable(entry) -> dict:
    """A sampler history entry as plain JSON types (storage keeps user_attrs as JSON)."""
    if not isinstance(entry, dict):
        entry = dict(getattr(entry, "__dict__", {}))
    out = {}
    for key, value in entry.items():
        if hasattr(value, "tolist"):
            value = value.tolist()
        elif isinstance(value, (tuple, set)):
            value = list(value)
        if isinstance(value, list):
            value = [float(v) if isinstance(v, float) else (int(v) if isinstance(v, int) else v) for v in value]
        out[str(key)] = value
    return out


def add_lora(model, rank: int):
    """Rank-``rank`` LoRA adapters on every linear layer inside the decoder layers (peft)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear")
    return get_peft_model(model, config)


def run_proxy(workload, params: TrialParams, *, batch_size: int, steps: int, eval_every: int, seed: int = 0,
              on_eval: Callable[[int, float], None] | None = None) -> ProxyResult:
    """Train ``params`` for ``steps`` steps with the layer-wise sampler; return the held-out metric.

    ``on_eval(step, value)`` sees every intermediate evaluation (a pruner may raise from it).
    Raises ``planner.sampling.DivergedError`` when the loss goes NaN.
    """
    import torch

    from planner.sampling import LayerSampler, train_layerwise

    model = workload.new_model(seed)
    if params.adapter_rank:
        model = add_lora(model, params.adapter_rank)
    sampler = LayerSampler(model, gamma=params.gamma, period=params.period, scorer=params.scorer, scorer_options={},
                           train_embeddings=params.train_embeddings, train_head=params.train_head, min_depth=0, seed=seed)
    optimizer = sampler.make_optimizer(torch.optim.AdamW, lr=params.lr)
    evaluations: list[tuple[int, float]] = []

    def _on_eval(step: int, value: float) -> None:
        evaluations.append((int(step), float(value)))
        if on_eval is not None:
            on_eval(int(step), float(value))

    start = perf_counter()
    result = train_layerwise(model, workload.train_batches(batch_size, seed), sampler=sampler, optimizer=optimizer,
                             steps=steps, eval_fn=workload.evaluate, eval_every=eval_every, on_eval=_on_eval)
    if evaluations and evaluations[-1][0] >= steps:
        metric = evaluations[-1][1]
    else:
        metric = float(workload.evaluate(model))
    seconds = perf_counter() - start
    history = [_jsonable(h) for h in thin(list(getattr(result, "history", []) or []))]
    return ProxyResult(float(metric), history, seconds, evaluations)
