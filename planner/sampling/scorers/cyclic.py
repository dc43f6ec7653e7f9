"""BAdam-style block coordinate descent (Luo et al. 2024): blocks of γ consecutive layers in turn."""

from __future__ import annotations

from planner.errors import PlannerError
from planner.sampling.scorers.base import Scorer, register_scorer

ORDERS = ("ascending", "descending", "random")


@register_scorer("cyclic")
class CyclicScorer(Scorer):
    """Partition the candidates into consecutive blocks of γ layers and visit them in ``order``.

    ``ascending`` starts at the lowest block (BAdam's ``badam_switch_mode: ascending``),
    ``descending`` at the top one, ``random`` visits a fresh permutation of the blocks each
    round. When γ does not divide the candidate count, the last block is the top γ layers.
    ``start_block`` skips that many blocks of the first round (BAdam's ``badam_start_block``).
    """

    draw = "ordered"

    def __init__(self, *, order: str = "ascending", start_block: int = 0) -> None:
        if order not in ORDERS:
            raise PlannerError(f"cyclic scorer `order` must be one of {list(ORDERS)}, but got {order!r}")
        if start_block < 0:
            raise PlannerError(f"cyclic scorer `start_block >= 0` must hold, but got start_block={start_block}")
        self.order = order
        self.start_block = int(start_block)
        self._round: list[int] = []
        self._pos = 0

    def bind(self, sampler) -> None:
        super().bind(sampler)
        cand = self.candidates
        self.blocks = [cand[i : i + self.active_layers] for i in range(0, len(cand), self.active_layers)]
        if len(self.blocks[-1]) < self.active_layers:
            self.blocks[-1] = cand[-self.active_layers :]
        if self.start_block >= len(self.blocks):
            raise PlannerError(
                f"cyclic scorer `start_block < {len(self.blocks)}` (the number of blocks) must hold, but got start_block={self.start_block}"
            )
        self.current: list[int] | None = None

    def _next_round(self) -> list[int]:
        n = len(self.blocks)
        if self.order == "ascending":
            return list(range(n))
        if self.order == "descending":
            return list(range(n - 1, -1, -1))
        return [int(i) for i in self.rng.permutation(n)]

    def select(self, step: int) -> list[int]:
        if not self._round:
            self._round = self._next_round()
            if self.current is None:
                self._pos = self.start_block
        if self._pos >= len(self._round):
            self._round, self._pos = self._next_round(), 0
        self.current = sorted(self.blocks[self._round[self._pos]])
        self._pos += 1
        return list(self.current)

    def weights(self) -> list[float]:
        if self.current is None:
            return self._normalize([1.0] * self.num_layers)
        return self._indicator(self.current)
