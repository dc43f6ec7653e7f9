"""A tiny workload for the tuner's tests: a 3-layer llama learning to copy a few tokens."""

from __future__ import annotations

import random

from planner.data.workload import Example, Workload
from planner.spec import build_model
from planner.spec.tiny import tiny_spec


def tiny_workload(*, num_layers: int = 3, n_train: int = 32, n_held_out: int = 8, seed: int = 0,
                  metric: str = "eval_loss") -> Workload:
    """Prompt: 4 random tokens then a separator; answer: the same 4 tokens (eval loss or exact match)."""
    spec = tiny_spec("llama", num_layers=num_layers, hidden=32, heads=2, kv_heads=1, vocab=48)
    rng = random.Random(seed)
    sep, eos = 2, 1

    def example() -> Example:
        toks = tuple(rng.randrange(3, 48) for _ in range(4))
        return Example(prompt=toks + (sep,), answer=toks + (eos,), target=" ".join(map(str, toks)) if metric == "accuracy" else None)

    return Workload(
        name="tiny-copy", spec=spec, model_source="tiny-llama", train=[example() for _ in range(n_train)],
        held_out=[example() for _ in range(n_held_out)], model_factory=lambda s: build_model(spec, seed=s),
        decode=lambda ids: " ".join(str(i) for i in ids if i != eos), pad_id=0, eos_id=eos, metric_name=metric,
    )
