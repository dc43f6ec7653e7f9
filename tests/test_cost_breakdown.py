"""The breakdown of a prediction: every bucket non-negative.

A bucket goes negative when composition frees bytes under another category than they were allocated
under (a segment traced at one depth placed at another). (The buckets add up to the peak by construction:
a segment's peak is the sum of its categories at that instant, and the CUDA overhead is what remains.)"""

import itertools

import pytest

from planner.config import TrainConfig
from planner.cost import estimate, family, replay
from planner.spec import load_spec


@pytest.fixture(autouse=True)
def _no_disk_cache(monkeypatch):
    monkeypatch.setenv("PLANNER_COST_CACHE", "0")


@pytest.fixture
def fresh(monkeypatch):
    """Traces and replays made anew: the in-process caches do not tell fake traces from real ones."""
    monkeypatch.setattr(family, "_traces", {})
    monkeypatch.setattr(replay, "_memo", {})


def assert_sound(est, what):
    buckets = est.breakdown.model_dump()
    assert min(buckets.values()) >= 0, (what, buckets)


GRID = [
    dict(gradient_checkpointing=ckpt, train_embeddings=emb, train_head=emb, layers=layers)
    for ckpt, emb, layers in itertools.product((False, True), (False, True), ("all", [1, 2]))
]
GRID += [
    dict(gradient_checkpointing=ckpt, lora_rank=8, layers="all", train_embeddings=False, train_head=False)
    for ckpt in (False, True)
]


# Fake and real traces have the same segments (test_cost_compose.py::test_fake_trace_equals_real_trace, both kernel
# sets): each architecture runs both, on one device each, and each device sees both, not all twelve pairs.
@pytest.mark.parametrize(
    "arch,device,fake",
    [
        ("llama", "cpu", True),
        ("llama", "cuda", False),
        ("qwen2", "cpu", True),
        ("qwen2", "cuda", False),
        ("gpt2", "cpu", False),
        ("gpt2", "cuda", True),
    ],
    ids=lambda v: {True: "fake", False: "real"}.get(v, v) if isinstance(v, bool) else v,
)
def test_breakdown_buckets_are_non_negative(tiny, fresh, arch, device, fake):
    spec = tiny(arch, hidden=128, vocab=512)
    for kw in GRID:
        est = estimate(spec, TrainConfig(batch_size=2, seq_len=64, dtype="bfloat16", **kw), device=device, fake=fake)
        assert_sound(est, kw)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_llama_3_8b_checkpointed_breakdown_has_no_negative_bucket(fresh, device):
    """The configuration that showed activations = -251,658,240 B (30 hidden states of 1024 x 4096 in bfloat16):
    each layer's output, traced at the top of the reduced model (freed by the head's forward), was counted as
    transient, and the same output below the top as an activation when its layer's backward freed it."""
    cfg = TrainConfig(
        batch_size=1, seq_len=1024, dtype="bfloat16", layers="all", optimizer="adamw8bit", gradient_checkpointing=True
    )
    est = estimate(load_spec("llama-3-8b"), cfg, device=device)
    assert_sound(est, device)
    assert est.breakdown.activations >= 0
