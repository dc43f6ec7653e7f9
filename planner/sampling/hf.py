"""Hugging Face Trainer integration: a TrainerCallback that drives a LayerSampler.

The Trainer builds its optimizer from the parameters with ``requires_grad=True`` at creation
time (``Trainer.create_optimizer``), so layers the sampler froze before would be left out of it
forever. At ``on_train_begin`` (after the optimizer exists) the callback adds every missing
managed parameter to the group of its counterpart in another layer, keeping the Trainer's
weight-decay split and its learning-rate schedule. Switches happen at ``on_step_begin``, once per
optimizer step (gradient accumulation included), when gradients are already zero. Gradient
norms are read at ``on_pre_optimizer_step``, after the Trainer's clipping (one factor for all
layers of a step).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from transformers import TrainerCallback

from planner.sampling.sampler import LayerSampler


class LayerwiseCallback(TrainerCallback):
    """Re-draw the sampler's active layers every K optimizer steps inside ``Trainer.train()``.

    Scorers that need batches (calibration, IST rollouts) take ``calib_batch`` when given,
    else batches from the Trainer's own training dataloader.
    """

    def __init__(self, sampler: LayerSampler, calib_batch: dict | None = None) -> None:
        self.sampler = sampler
        self.calib_batch = calib_batch
        self._batches: Iterator[dict] | None = None
        self.added: list = []

    def _next_batch(self, train_dataloader) -> dict | None:
        if self.calib_batch is not None:
            return self.calib_batch
        if train_dataloader is None:
            return None
        try:
            if self._batches is not None:
                return next(self._batches)
        except (StopIteration, TypeError):
            pass
        self._batches = iter(train_dataloader)  # the first batch, or the first again after the last
        return next(self._batches, None)

    def _on_device(self, batch: dict | None) -> dict | None:
        if batch is None:
            return None
        device = next(self.sampler.model.parameters()).device
        return {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}

    def on_train_begin(self, args, state, control, optimizer=None, train_dataloader=None, **kwargs):
        if optimizer is not None:
            self.added = self.sampler.attach_optimizer(optimizer)
        if self.sampler.scorer.needs_calibration and not self.sampler.calibrated:
            batch = self._on_device(self._next_batch(train_dataloader))
            if batch is not None:
                self.sampler.calibrate(batch, step=state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        self.sampler.begin_step(state.global_step)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.sampler.after_backward(state.global_step)

    def on_step_end(self, args, state, control, train_dataloader=None, **kwargs):
        step = state.global_step - 1  # the step just finished; the Trainer does not hand callbacks its loss
        batch = self._on_device(self._next_batch(train_dataloader)) if self.sampler.scorer.wants_batch(step) else None
        self.sampler.end_step(step, float("nan"), batch)
