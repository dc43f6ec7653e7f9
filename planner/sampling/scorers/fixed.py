"""A static set: an explicit list of layers, or the top k (LLaMA-Factory's ``freeze_trainable_layers``)."""

from __future__ import annotations

from planner.errors import PlannerError, collect
from planner.sampling.scorers.base import Scorer, register_scorer


@register_scorer("fixed")
class FixedScorer(Scorer):
    """Always the same layers: ``layers=[...]``, or ``top=k`` (default k = γ) for the last k layers."""

    static = True  # as the search runs it: the top γ layers

    def __init__(self, *, layers: list[int] | None = None, top: int | None = None) -> None:
        if layers is not None and top is not None:
            raise PlannerError(f"fixed scorer takes `layers` or `top`, not both, but got layers={layers}, top={top}")
        self.layers = None if layers is None else [int(i) for i in layers]
        self.top = top

    def bind(self, sampler) -> None:
        super().bind(sampler)
        if self.layers is None:
            k = self.active_layers if self.top is None else int(self.top)
            if not 1 <= k <= len(self.candidates):
                raise PlannerError(
                    f"fixed scorer `top` must satisfy 1 <= top <= {len(self.candidates)}, but got top={k}"
                )
            self.layers = self.candidates[-k:]
        problems = []
        bad = [i for i in self.layers if i not in self.candidates]
        if bad:
            problems.append(f"fixed layers must satisfy {sampler.min_depth} <= i < {self.num_layers}, but got {bad}")
        if len(set(self.layers)) != len(self.layers):
            problems.append(f"fixed layers must not repeat an index, but got {self.layers}")
        if len(self.layers) != self.active_layers:
            problems.append(
                f"active_layers must equal the number of fixed layers, but got active_layers={self.active_layers} with layers={self.layers}"
            )
        collect(problems)
        self.layers = sorted(self.layers)

    def weights(self) -> list[float]:
        assert self.layers is not None, "bind() sets the layers"
        return self._indicator(self.layers)

    def select(self, step: int) -> list[int]:
        assert self.layers is not None, "bind() sets the layers"
        return list(self.layers)
