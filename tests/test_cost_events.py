"""The allocation templates composed at full depth (planner.cost.events) against a trace of the full-depth model.

On CUDA the allocator model replays :func:`planner.cost.events.step_ops`: the allocations and frees of
one training step composed from traces of 2-3 layers. Truth: the same step traced at full depth
(every layer of a 6-layer model, real tensors). The live bytes of the composed stream must peak where
the real step's do, to the byte, above all where the traced roles sit at other depths than in the
full model: frozen layers above layer 0 below the lowest trained one (traced at layer 0 only, where
the model holds the layer's input until its forward returns), and gpt2's final LayerNorm, which
saves the top layer's output until the head's backward.
"""

from __future__ import annotations

import numpy as np
import pytest

from planner.config import TrainConfig
from planner.cost.roles import ROLES
from planner.cost.estimator import _role_matrix
from planner.cost.family import embeddings_grad, get_family, get_trace
from planner.cost.events import step_ops

LAYERS = 6
CASES = [  # arch, dtype, kernels, trained layers (embeddings and head frozen)
    ("llama", "float32", "cpu", [4, 5]),  # FB x4, T0, T
    ("qwen2", "bfloat16", "cuda", [3, 5]),  # FB x3, T0, FA, T
    ("gpt2", "float32", "cuda", [2]),  # FB x2, T0, FA x3; memory-efficient attention
    ("gpt2", "bfloat16", "cuda", [0, 1]),  # no FB: T0, T, FA x4
    ("llama", "bfloat16", "cuda", [0, 1]),
]


@pytest.fixture(autouse=True)
def _no_disk_cache(monkeypatch):
    monkeypatch.setenv("PLANNER_COST_CACHE", "0")


def _live_peak(ops: list[int]) -> int:
    sizes, live, peak = [], 0, 0
    for op in ops:
        if op >= 0:
            sizes.append(op)
            live += op
        else:
            live -= sizes[-op - 1]
        peak = max(peak, live)
    return peak


@pytest.mark.parametrize(
    "arch,dtype,kernels,layers", CASES, ids=[f"{a}-{d}-{k}-{'.'.join(map(str, ls))}" for a, d, k, ls in CASES]
)
def test_composed_step_peaks_like_the_full_depth_trace(tiny, arch, dtype, kernels, layers):
    spec = tiny(arch, num_layers=LAYERS, hidden=64, vocab=256)
    cfg = TrainConfig(batch_size=2, seq_len=32, dtype=dtype, layers=layers, train_embeddings=False, train_head=False)
    masks = np.zeros((1, LAYERS), bool)
    masks[0, layers] = True
    roles = [int(r) for r in _role_matrix(masks, embeddings_grad(spec, cfg))[0]]
    fam = get_family(spec, cfg, {ROLES[r] for r in roles}, {ROLES[roles[0]]}, fake=False, kernels=kernels)
    assert max(len(p) for p in fam.patterns) < LAYERS  # composed from fewer layers than the model has
    ops, _, _ = step_ops(fam, roles)
    full = get_trace(spec, cfg, [ROLES[r] for r in roles], fake=False, kernels=kernels)  # every layer, traced
    assert _live_peak(ops) == full.peak_bytes - full.base_bytes
