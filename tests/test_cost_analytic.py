"""Analytic per-layer formulas (planner.cost.analytic) against reduced-depth traces."""

import pytest

from planner.cost import analytic
from planner.cost.estimator import get_trace
from planner.config import TrainConfig

B, S = 2, 64


@pytest.fixture(autouse=True)
def _no_disk_cache(monkeypatch):
    monkeypatch.setenv("PLANNER_COST_CACHE", "0")


def _shape(spec):
    c = spec.config
    h, a = c.hidden_size, c.num_attention_heads
    h_kv = c.num_key_value_heads * (h // a)
    return h, a, c.intermediate_size, h_kv


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_layer_weights_grads_state_match_trace(tiny, arch):
    spec = tiny(arch, hidden=128, vocab=512)
    h, a, inter, h_kv = _shape(spec)
    tr = get_trace(spec, TrainConfig(batch_size=B, seq_len=S, layers="all", train_embeddings=True), ["T", "FA", "T"])
    traced_params = sum(n for n, _, _ in tr.params["layer"])
    phi = analytic.llama_layer_params(h, inter, h_kv, qkv_bias=arch == "qwen2")
    assert traced_params == phi
    assert sum(n * b for n, b, _ in tr.params["layer"]) == analytic.weight_bytes(phi, 4)
    # a trainable layer's backward leaves exactly its gradients behind
    assert tr.layers["bwd:T"].delta[0] == analytic.gradient_bytes(phi, 4)
    from planner.optimizers import get_optimizer

    tensors = [(n, b) for n, b, _ in tr.params["layer"]]
    assert get_optimizer("adamw").state_bytes(tensors, "cpu") == analytic.adamw_state_bytes(phi, 4, len(tensors))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # causal SDPA without an explicit mask (no sliding window)
def test_trainable_layer_activations_match_trace(tiny, arch):
    spec = tiny(arch, hidden=128, vocab=512)
    h, a, inter, _ = _shape(spec)
    tr = get_trace(spec, TrainConfig(batch_size=B, seq_len=S, layers="all", train_embeddings=True), ["T", "FA", "T"])
    kept = tr.layers["fwd:T"].delta[1]  # activations a trainable layer adds in its forward
    assert kept == analytic.llama_trainable_layer_activation_bytes(S, B, h, a, inter, 4)


def test_korthikanti_formula_arithmetic():
    # sbh(34 + 5as/h) for s=2048, b=1, h=4096, a=32 (Llama-7B shapes): 34·sbh + 5·a·s²·b
    s, b, h, a = 2048, 1, 4096, 32
    assert analytic.korthikanti_activation_bytes(s, b, h, a) == s * b * h * (34 + 5 * a * s // h)
