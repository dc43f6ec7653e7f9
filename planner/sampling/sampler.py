"""LayerSampler: keep γ decoder layers trainable and re-draw them every K steps through a scorer.

A switch freezes the layers that leave the active set, drops their gradients and their
optimizer state (AdamW's moments), and makes the new layers trainable; the optimizer creates
their state at its next step. Build the optimizer over every parameter once
(:meth:`LayerSampler.make_optimizer`): AdamW skips parameters whose ``.grad`` is None, so frozen
layers cost nothing and live memory stays flat across switches.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
from torch import nn

from planner.errors import PlannerError, collect
from planner.spec.parts import model_parts
from planner.sampling.scorers import Scorer, get_scorer


def unwrap_optimizer(optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside wrappers such as accelerate's ``AcceleratedOptimizer``."""
    while not isinstance(optimizer, torch.optim.Optimizer) and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def _dot_self(g: torch.Tensor) -> float:
    """‖g‖₂² in fp32 (a BLAS dot: faster on CPU than a norm reduction)."""
    v = g.reshape(-1)
    if v.dtype != torch.float32:
        v = v.float()
    return float(torch.dot(v, v))


def _as_int(value):
    """Integers of any kind (numpy's included) as int; anything else unchanged, for the error to name."""
    try:
        return operator.index(value) if not isinstance(value, bool) else value
    except TypeError:
        return value


class LayerSampler:
    """Keeps ``active_layers`` of the decoder layers ``min_depth..L-1`` trainable, re-drawn every ``period`` steps.

    Works on a transformers causal LM (every parameter of an active layer trains) and on a peft
    model (only the adapters inside active layers train). Embeddings and head train or stay
    frozen for the whole run (``train_embeddings``, ``train_head``).
    """

    def __init__(
        self,
        model: nn.Module,
        active_layers: int = 2,
        period: int = 20,
        scorer: str | Scorer = "uniform",
        scorer_options: dict[str, Any] | None = None,
        train_embeddings: bool = True,
        train_head: bool = True,
        min_depth: int = 0,
        seed: int = 0,
    ) -> None:
        self.model = model
        self.parts = model_parts(model)
        self.num_layers = self.parts.num_layers
        active_layers, period, min_depth = (_as_int(v) for v in (active_layers, period, min_depth))
        problems = []
        if not isinstance(active_layers, int) or active_layers < 1:
            problems.append(f"active_layers must be an integer >= 1, but got active_layers={active_layers!r}")
        if not isinstance(period, int) or period < 1:
            problems.append(f"period must be an integer >= 1, but got period={period!r}")
        if not isinstance(min_depth, int) or not 0 <= min_depth < self.num_layers:
            problems.append(
                f"`0 <= min_depth < num_layers` must hold, but got min_depth={min_depth!r} with {self.num_layers} layers"
            )
        elif isinstance(active_layers, int) and active_layers > self.num_layers - min_depth:
            problems.append(
                f"`active_layers <= num_layers - min_depth` must hold, but got active_layers={active_layers} > {self.num_layers} - {min_depth}"
            )
        empty = [i for i, ps in enumerate(self.parts.layer_params) if not ps]
        if empty:
            problems.append(
                f"every decoder layer must hold trainable parameters (adapters on a peft model), but layers {empty} hold none"
            )
        collect(problems)
        self.active_layers, self.period, self.min_depth, self.seed = active_layers, period, min_depth, seed
        self.train_embeddings, self.train_head = bool(train_embeddings), bool(train_head)
        self.candidates = list(range(min_depth, self.num_layers))
        self.rng = np.random.default_rng(seed)
        self.scorer = get_scorer(scorer, **(scorer_options or {})) if isinstance(scorer, str) else scorer
        self.scorer.bind(self)
        self.optimizer: torch.optim.Optimizer | None = None
        self.history: list[dict] = []
        self.switches = 0
        self.calibrated = False

        static = []
        if self.train_embeddings:
            static += self.parts.embeddings
        if self.train_head:
            static += self.parts.head_params
        self._static = {id(p): p for p in static}
        for p in self.parts.embeddings + self.parts.head_params:
            p.requires_grad_(id(p) in self._static)
        for params in self.parts.layer_params:
            for p in params:
                p.requires_grad_(False)
        self.active: list[int] = []
        self._apply(self.scorer.select(0), step=0)

    # parameters -------------------------------------------------------------------------------
    def managed_parameters(self) -> list[nn.Parameter]:
        """Every parameter this sampler may make trainable (all layers' plus trained embeddings/head), in the model's
        order: an optimizer built from them steps them as one built from the model's trainable parameters does (the
        first step's peak holds the last-stepped tensor's temporaries, so the order is part of the memory)."""
        managed = {id(p) for params in self.parts.layer_params for p in params} | set(self._static)
        return [p for p in self.model.parameters() if id(p) in managed]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What trains now: the active layers' parameters plus trained embeddings/head."""
        out = {id(p): p for i in self.active for p in self.parts.layer_params[i]}
        out.update(self._static)
        return list(out.values())

    def make_optimizer(self, optimizer_cls=torch.optim.AdamW, **kwargs) -> torch.optim.Optimizer:
        """Build ``optimizer_cls`` over every managed parameter once; state appears only for active ones."""
        self.attach_optimizer(optimizer_cls(self.managed_parameters(), **kwargs))
        assert self.optimizer is not None  # attach_optimizer keeps it
        return self.optimizer

    def attach_optimizer(self, optimizer) -> list[nn.Parameter]:
        """Use ``optimizer`` for state release; add managed parameters it lacks.

        A parameter that was frozen when the optimizer was built (a trainer that takes only
        ``requires_grad`` parameters) joins the group of its counterpart in another layer (same
        name inside the layer, so weight-decay splits are kept), else the first group.
        Drops any state it holds for frozen layers. Returns the parameters added.
        """
        inner = unwrap_optimizer(optimizer)
        group_of = {id(p): g for g, group in enumerate(inner.param_groups) for p in group["params"]}
        by_name: dict[str, int] = {}
        for params, names in zip(self.parts.layer_params, self.parts.layer_param_names):
            for p, name in zip(params, names):
                if id(p) in group_of:
                    by_name.setdefault(name, group_of[id(p)])
        added = []
        name_of = {
            id(p): n
            for params, names in zip(self.parts.layer_params, self.parts.layer_param_names)
            for p, n in zip(params, names)
        }
        for p in self.managed_parameters():
            if id(p) in group_of:
                continue
            g = by_name.get(name_of.get(id(p), ""), 0)
            inner.param_groups[g]["params"].append(p)
            group_of[id(p)] = g
            added.append(p)
        trainable = {id(p) for p in self.trainable_parameters()}
        for p in self.managed_parameters():
            if id(p) not in trainable:
                inner.state.pop(p, None)  # state of a frozen layer, e.g. from an earlier run
        self.optimizer = inner
        return added

    # the schedule -----------------------------------------------------------------------------
    def begin_step(self, step: int) -> bool:
        """Call before step ``step``'s forward (0-based); re-draws when ``step`` is a multiple of K > 0."""
        if step > 0 and step % self.period == 0 and step != self.history[-1]["step"]:
            self._apply(self.scorer.select(step), step=step)
            return True
        return False

    def after_backward(self, step: int) -> None:
        """Call after backward, before the optimizer step: feeds gradient norms to scorers that learn from them."""
        if not (self.scorer.wants_gradients and self.scorer.gradients_due(step)):
            return
        norms = {}
        with torch.no_grad():
            for i in self.active:
                squares = [_dot_self(p.grad) for p in self.parts.layer_params[i] if p.grad is not None]
                if squares:
                    norms[i] = sum(squares) ** 0.5
        self.scorer.on_gradients(step, norms)

    def end_step(self, step: int, loss: float, batch: dict | None = None) -> None:
        """Call after the optimizer step with the step's loss (and batch, for scorers that run rollouts)."""
        self.scorer.observe(step, loss, batch)

    observe = end_step

    def calibrate(self, batch: dict, step: int = 0) -> None:
        """Give a scorer that needs one its calibration batch, then re-draw from what it measured."""
        if not self.scorer.needs_calibration:
            return
        was_training = self.model.training
        self.model.eval()
        try:
            self.scorer.calibrate(self.model, batch)
        finally:
            self.model.train(was_training)
        self.calibrated = True
        self._apply(self.scorer.select(step), step=step)

    def switch(self, layers: list[int], step: int) -> None:
        """Make exactly ``layers`` the active set (validated), as a scorer's draw would."""
        self._apply(list(layers), step=step)

    # internals --------------------------------------------------------------------------------
    def _apply(self, layers: list[int], step: int) -> None:
        layers = sorted(int(i) for i in layers)
        bad = [i for i in layers if i not in self.candidates]
        if bad or len(set(layers)) != len(layers) or not 1 <= len(layers) <= self.active_layers:
            raise PlannerError(
                f"an active set must hold 1..{self.active_layers} distinct layers in {self.min_depth}..{self.num_layers - 1}, but got {layers}"
            )
        leaving = [i for i in self.active if i not in layers]
        for i in leaving:
            for p in self.parts.layer_params[i]:
                if id(p) in self._static:
                    continue
                p.requires_grad_(False)
                p.grad = None
                if self.optimizer is not None:
                    self.optimizer.state.pop(p, None)
        for i in layers:
            for p in self.parts.layer_params[i]:
                p.requires_grad_(True)
        if self.active and layers != self.active:
            self.switches += 1
        self.active = layers
        self.history.append(
            {"step": int(step), "active": list(layers), "weights": [float(w) for w in self.scorer.weights()]}
        )

    def __repr__(self) -> str:
        return (
            f"LayerSampler(active_layers={self.active_layers}, period={self.period}, scorer={self.scorer.name!r}, "
            f"min_depth={self.min_depth}, active={self.active})"
        )
