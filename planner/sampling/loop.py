"""A plain PyTorch training loop driven by a LayerSampler (the tuner's proxy trainer runs it)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from planner.errors import PlannerError
from planner.sampling.sampler import LayerSampler


class DivergedError(PlannerError):
    """Training produced a NaN or infinite loss."""

    def __init__(self, step: int, loss: float):
        self.step, self.loss = step, loss
        super().__init__(f"training loss must stay finite, but step {step} gave loss={loss}")


@dataclass
class TrainResult:
    """Per-step losses, (step, value) evaluations, and the sampler's draw history."""

    losses: list[float] = field(default_factory=list)
    evals: list[tuple[int, float]] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    steps: int = 0


REPLAY_LIMIT = 64  # a one-shot iterator's batches kept for replay; past this many none are kept


def _cycle(batches: Iterable[dict]) -> Iterator[dict]:
    """Yield batches forever: re-iterate an iterable; replay what a one-shot iterator gave when it ends.

    Replaying keeps a one-shot iterator's batches alive, so only its first :data:`REPLAY_LIMIT` are kept; one that
    yields more is taken as endless (a generator of batches) and keeps none: ending later is an error.
    """
    if iter(batches) is not batches:
        while True:
            empty = True
            for b in batches:
                empty = False
                yield b
            if empty:
                raise PlannerError("batches must hold at least one batch, but the iterable was empty")
    seen: list[dict] | None = []
    count = 0
    for b in batches:
        count += 1
        if seen is not None:
            seen.append(b)
            if len(seen) > REPLAY_LIMIT:
                seen = None  # an endless stream: keeping its batches would hold every one for the whole run
        yield b
    if not count:
        raise PlannerError("batches must hold at least one batch, but the iterator was empty")
    if seen is None:
        raise PlannerError(
            f"a one-shot iterator of batches must be endless or hold at most {REPLAY_LIMIT} batches to "
            f"replay, but it ended after {count}: pass a list or another re-iterable"
        )
    while True:
        yield from seen


def _to(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def train_layerwise(
    model: nn.Module,
    batches: Iterable[dict],
    *,
    sampler: LayerSampler,
    optimizer: torch.optim.Optimizer | None = None,
    steps: int,
    eval_fn: Callable[[nn.Module], float] | None = None,
    eval_every: int | None = None,
    on_eval: Callable[[int, float], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    calib_batch: dict | None = None,
    lr_scheduler=None,
    max_grad_norm: float | None = None,
    lr: float = 1e-3,
    loss_fn: Callable[[nn.Module, dict], torch.Tensor] | None = None,
) -> TrainResult:
    """Train ``steps`` optimizer steps on ``batches`` (cycled), switching layers through ``sampler``.

    ``optimizer`` defaults to ``sampler.make_optimizer(AdamW, lr=lr)``; one made elsewhere is
    completed with every managed parameter. Scorers that need a calibration batch get
    ``calib_batch`` (default: the first training batch). Every ``eval_every`` steps,
    ``eval_fn(model)`` runs under ``torch.no_grad()`` in eval mode and ``on_eval(step, value)``
    is called; whatever it raises (e.g. ``optuna.TrialPruned``) propagates. ``on_step(step)`` is called as each
    step begins: after ``sampler`` drew the step's layers, before its forward. ``loss_fn(model, batch)``
    replaces the model's own loss (a lever's, e.g. the chunked cross-entropy). Raises
    :class:`DivergedError` on a NaN/inf loss.
    """
    if not isinstance(steps, int) or steps < 0:
        raise PlannerError(f"steps must be an integer >= 0, but got steps={steps!r}")
    if eval_every is not None and (not isinstance(eval_every, int) or eval_every < 1):
        raise PlannerError(f"eval_every must be an integer >= 1, but got eval_every={eval_every!r}")
    if sampler.model is not model:
        raise PlannerError("sampler must be built on the model being trained, but it holds a different model")
    if optimizer is None:
        optimizer = sampler.optimizer or sampler.make_optimizer(torch.optim.AdamW, lr=lr)
    else:
        sampler.attach_optimizer(optimizer)
    device = _device(model)
    stream = _cycle(batches)
    result = TrainResult(history=sampler.history)
    model.train()
    first = None
    if sampler.scorer.needs_calibration and not sampler.calibrated:
        if calib_batch is None:
            first = calib_batch = next(stream)
        sampler.calibrate(_to(calib_batch, device), step=0)
        calib_batch = None  # the first step still takes it (first); the loop keeps it no longer
    for step in range(steps):
        batch = _to(first if first is not None else next(stream), device)
        first = None
        sampler.begin_step(step)
        if on_step is not None:
            on_step(step)
        loss = model(**batch).loss if loss_fn is None else loss_fn(model, batch)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise DivergedError(step, value)
        loss.backward()
        sampler.after_backward(step)
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(sampler.trainable_parameters(), max_grad_norm)
        optimizer.step()
        if lr_scheduler is not None:
            lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        result.losses.append(value)
        sampler.end_step(step, value, batch)
        result.steps = step + 1
        if eval_fn is not None and eval_every and (step + 1) % eval_every == 0:
            result.evals.append((step + 1, _evaluate(model, eval_fn)))
            if on_eval is not None:
                on_eval(step + 1, result.evals[-1][1])
    return result


def _evaluate(model: nn.Module, eval_fn: Callable[[nn.Module], float]) -> float:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return float(eval_fn(model))
    finally:
        model.train(was_training)
