"""CUDA reduction scratch (planner.cost.reductions) against the allocator history of an H200 step.

Truth: tests/fixtures/gpu-truth/h200-history-q05b-frozen-fp32-b2s2048-L23.json, the CUDA caching
allocator's own record of a Qwen2.5-0.5B float32 step (batch 2 x 2048 tokens, layers 2-3 trained):
every reduction split across blocks shows as ``alloc buffer, alloc semaphores, free semaphores,
free buffer`` right after its output."""

from __future__ import annotations

import collections
import json
from pathlib import Path

from planner.cost.reductions import reduction_scratch

HISTORY = Path(__file__).parent / "fixtures" / "gpu-truth" / "h200-history-q05b-frozen-fp32-b2s2048-L23.json"
HIDDEN, KV, TOKENS = 896, 128, 2 * 2048


def _measured_pairs() -> collections.Counter:
    h = [(a, n) for a, n in json.loads(HISTORY.read_text()) if a != "segment_alloc"]
    pairs = collections.Counter()
    for (a1, n1), (a2, n2), (a3, n3), (a4, n4) in zip(h, h[1:], h[2:], h[3:]):
        if (a1, a2, a3, a4) == ("alloc", "alloc", "free_completed", "free_completed") and n2 == n3 < 1024 <= n1 == n4:
            pairs[n1, n2] += 1
    return pairs


def _contiguous(shape):
    strides, s = [], 1
    for n in reversed(shape):
        strides.insert(0, s)
        s *= n
    return tuple(shape), tuple(strides)


def test_weight_and_bias_gradient_reductions_match_the_history():
    norm_weight = reduction_scratch(*_contiguous((2, 2048, HIDDEN)), {0, 1})  # RMSNorm weight gradient
    q_bias = reduction_scratch(*_contiguous((TOKENS, HIDDEN)), {0})  # q_proj bias gradient
    kv_bias = reduction_scratch(*_contiguous((TOKENS, KV)), {0})  # k_proj / v_proj bias gradients
    assert norm_weight == q_bias == (29_360_128, 28)
    assert kv_bias == (4_194_304, 4)
    measured = _measured_pairs()
    # two trained layers: two norm weights and the q bias each, the k and v biases each
    assert measured[norm_weight] == 2 * 3 and measured[kv_bias] == 2 * 2
    # the only other such pattern: math attention's all-masked-row check, (b, h, s) bools (planner.cost.kernels)
    assert set(measured) - {norm_weight, kv_bias} == {(2 * 14 * 2048, 4)}


def test_reductions_within_blocks_take_no_scratch():
    assert reduction_scratch(*_contiguous((2, 2048, HIDDEN)), {2}) == (0, 0)  # RMSNorm's mean over the hidden size
    assert reduction_scratch(*_contiguous((1, 512, 2048)), {0, 1}) == (0, 0)  # 512 rows: one block per column
