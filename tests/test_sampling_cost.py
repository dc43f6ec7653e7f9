"""The cost model's worst case for a sampler bounds what the sampler really holds.

100 CPU training steps through ``train_layerwise`` under ``LiveBytesTracker``, enough for the sampler to draw every
set it can (checked): the predicted peak (``planner.cost.estimate`` with ``active_layers=γ``) must bound every step's
measured peak, and equal, to the byte, the peak of the steps that drew the predicted worst set.
"""

from __future__ import annotations

import gc
import itertools

import pytest
import torch

from planner.config import TrainConfig
from planner.cost import LiveBytesTracker, estimate
from planner.sampling import LayerSampler, train_layerwise
from planner.spec import build_model

STEPS = 100  # seed 0 draws every set by step 30 (6 sets of 2 in 4 layers); a set's peak is the same at each draw
BATCHES = 3


def measured_peaks(spec, cfg: TrainConfig, period: int, steps: int = STEPS) -> list[tuple[tuple[int, ...], int]]:
    """(active set, peak live bytes) of every step, counting one batch as the estimate does."""
    model = build_model(spec)
    if cfg.lora_rank:
        from planner.cost.trainable import add_lora  # the adapters the cost model predicts

        model = add_lora(model, cfg.lora_rank)
    sampler = LayerSampler(
        model,
        active_layers=cfg.active_layers,
        period=period,
        scorer="uniform",
        min_depth=cfg.min_depth,
        train_embeddings=cfg.train_embeddings,
        train_head=cfg.train_head,
        seed=0,
    )
    optimizer = sampler.make_optimizer(torch.optim.AdamW, lr=1e-4)
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(BATCHES):
        ids = torch.randint(0, spec.vocab_size, (cfg.batch_size, cfg.seq_len), generator=g)
        batches.append({"input_ids": ids, "labels": ids.clone()})
    other_batches = sum(t.untyped_storage().nbytes() for b in batches[1:] for t in b.values())
    tracker = LiveBytesTracker()
    peaks = []

    def on_eval(step, _):
        peaks.append((tuple(sampler.active), tracker.peak_bytes - other_batches))
        tracker.reset_peak()

    gc.collect()
    gc.disable()  # frees by refcount only: deterministic
    try:
        tracker.track(list(model.parameters()) + list(model.buffers()) + [t for b in batches for t in b.values()])
        with tracker:
            train_layerwise(
                model,
                batches,
                sampler=sampler,
                optimizer=optimizer,
                steps=steps,
                eval_fn=lambda m: 0.0,
                eval_every=1,
                on_eval=on_eval,
            )
    finally:
        gc.enable()
    assert sampler.switches >= steps // period // 4
    every = set(itertools.combinations(range(cfg.min_depth, spec.num_layers), cfg.active_layers))
    assert {active for active, _ in peaks} == every, (
        f"{steps} steps drew {len({a for a, _ in peaks})} of {len(every)} sets"
    )
    return peaks


@pytest.mark.parametrize(
    "arch,active_layers,min_depth,train_embeddings,train_head",
    [
        ("llama", 2, 0, False, True),  # frozen embeddings: the lowest drawn layer sets the activations
        ("gpt2", 1, 1, True, True),  # trainable (tied) embeddings: every layer keeps activations
    ],
)
def test_predicted_worst_case_bounds_the_measured_peak(
    tiny, arch, active_layers, min_depth, train_embeddings, train_head
):
    spec = tiny(arch, num_layers=4)
    cfg = TrainConfig(
        active_layers=active_layers,
        min_depth=min_depth,
        batch_size=2,
        seq_len=32,
        train_embeddings=train_embeddings,
        train_head=train_head,
    )
    est = estimate(spec, cfg, device="cpu")
    peaks = measured_peaks(spec, cfg, period=2)
    measured = max(p for _, p in peaks)
    assert measured <= est.peak_bytes, f"measured {measured} B > predicted {est.peak_bytes} B"
    worst = [p for active, p in peaks if active == tuple(est.trainable_layers)]
    assert worst, f"the predicted worst set {est.trainable_layers} was never drawn in {STEPS} steps"
    assert max(worst) == est.peak_bytes, f"worst draw measured {max(worst)} B vs predicted {est.peak_bytes} B"
    assert all(min(a) >= min_depth for a, _ in peaks)


def test_predicted_worst_case_bounds_lora_in_layers(tiny):
    spec = tiny("llama", num_layers=4)
    cfg = TrainConfig(active_layers=2, batch_size=2, seq_len=32, train_embeddings=False, train_head=True, lora_rank=4)
    est = estimate(spec, cfg, device="cpu")
    peaks = measured_peaks(spec, cfg, period=2, steps=100)
    assert max(p for _, p in peaks) <= est.peak_bytes
    worst = [p for active, p in peaks if active == tuple(est.trainable_layers)]
    assert worst and max(worst) == est.peak_bytes


def test_min_depth_lowers_the_measured_peak(tiny):
    """With frozen embeddings, a sampler that never draws layer 0 never pays for its activations."""
    spec = tiny("llama", num_layers=4)
    cfgs = [TrainConfig(active_layers=1, min_depth=d, batch_size=2, seq_len=32, train_embeddings=False) for d in (0, 2)]
    low, high = (estimate(spec, c, device="cpu").peak_bytes for c in cfgs)
    assert high < low
    assert max(p for _, p in measured_peaks(spec, cfgs[1], period=4, steps=60)) <= high < low
