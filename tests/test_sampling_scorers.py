"""Scorers: the registry contract, walked over every entry, and each scorer's behaviour."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from planner.errors import PlannerError
from planner.sampling import SCORERS, LayerSampler, get_scorer, register_scorer, train_layerwise
from planner.sampling.scorers import Scorer
from planner.sampling.scorers.semantic import best_depth
from planner.spec import build_model


def batch(vocab=256, b=2, s=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (b, s), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


@pytest.fixture(scope="module")
def model4():
    from planner.spec.tiny import tiny_spec

    return build_model(tiny_spec("llama", num_layers=4))


# contract ---------------------------------------------------------------------------------------
def test_registry_lists_every_method():
    assert {"uniform", "ist", "gradnorm", "outlier", "semantic", "cyclic", "fixed"} <= set(SCORERS)


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_scorer_contract(name, model4):
    """Every registered scorer: draws γ distinct layers >= min_depth, exposes weights, runs in the loop."""
    scorer = get_scorer(name)
    assert isinstance(scorer, Scorer) and scorer.name == name
    sampler = LayerSampler(model4, active_layers=2, period=2, scorer=name, min_depth=1, seed=0)
    result = train_layerwise(model4, [batch(seed=i) for i in range(3)], sampler=sampler, steps=10)
    assert len(result.losses) == 10 and all(math.isfinite(x) for x in result.losses)
    assert result.history is sampler.history and len(sampler.history) >= 5
    for entry in sampler.history:
        assert set(entry) == {"step", "active", "weights"}
        assert 1 <= len(entry["active"]) <= 2 and len(set(entry["active"])) == len(entry["active"])
        assert all(1 <= i < 4 for i in entry["active"])
        assert len(entry["weights"]) == 4 and entry["weights"][0] == 0.0
        assert math.isclose(sum(entry["weights"]), 1.0, rel_tol=1e-9) and min(entry["weights"]) >= 0.0
    with pytest.raises(PlannerError, match="unknown"):
        get_scorer(name, definitely_not_an_option=1)


def test_get_scorer_rejects_unknown_names():
    with pytest.raises(PlannerError, match="scorer must be one of"):
        get_scorer("lisa2")


def test_register_scorer_adds_a_strategy(model4):
    @register_scorer("test-top-only")
    class TopOnly(Scorer):
        def __init__(self) -> None:
            pass

        def select(self, step):
            return [self.num_layers - 1]

    try:
        s = LayerSampler(model4, active_layers=1, scorer="test-top-only")
        assert s.active == [3]
        with pytest.raises(PlannerError, match="unique"):
            register_scorer("test-top-only")(type("Other", (Scorer,), {}))
    finally:
        SCORERS.pop("test-top-only")


# behaviour --------------------------------------------------------------------------------------
def test_uniform_draw_frequencies_are_uniform(model4):
    s = LayerSampler(model4, active_layers=2, period=1, scorer="uniform", seed=0)
    for step in range(1, 3000):
        s.begin_step(step)
    counts = Counter(i for h in s.history for i in h["active"])
    expected = 3000 * 2 / 4
    assert all(abs(counts[i] - expected) < 0.06 * expected for i in range(4)), counts
    assert all(h["weights"] == [0.25] * 4 for h in s.history)


def test_gradnorm_prefers_layers_with_larger_gradients(model4):
    s = LayerSampler(model4, active_layers=1, period=1, scorer="gradnorm", seed=0)
    scorer = s.scorer
    assert scorer.weights() == [0.25] * 4  # nothing measured: every layer gets the optimistic prior
    scorer.on_gradients(0, {0: 1.0})
    # an unmeasured layer is as attractive as the best measured one
    assert scorer.weights()[1] == scorer.weights()[0]
    for step, norms in enumerate([{1: 4.0}, {2: 1.0}, {3: 1.0}, {1: 6.0}, {0: 1.0}]):
        scorer.on_gradients(step, norms)
    w = scorer.weights()
    assert w[1] == pytest.approx(5.0 / 8.0) and w[0] == w[2] == w[3]
    counts = Counter()
    for step in range(1, 2000):
        s.begin_step(step)
        counts[s.active[0]] += 1
    assert counts[1] > 4 * counts[0]


def test_gradnorm_learns_from_real_gradients(tiny):
    """A layer whose gradients are scaled up (its output amplified) ends with the largest weight."""
    model = build_model(tiny("llama", num_layers=4))
    with torch.no_grad():
        model.model.layers[2].mlp.down_proj.weight.mul_(30.0)
    s = LayerSampler(
        model, active_layers=1, period=1, scorer="gradnorm", seed=0, train_embeddings=False, train_head=False
    )
    train_layerwise(model, [batch()], sampler=s, steps=12, lr=1e-6)
    assert set(s.scorer.count) == {0, 1, 2, 3}
    w = s.history[-1]["weights"]
    assert max(range(4), key=w.__getitem__) == 2
    sparse = LayerSampler(model, active_layers=1, period=1, scorer="gradnorm", scorer_options={"every": 4}, seed=0)
    train_layerwise(model, [batch()], sampler=sparse, steps=12, lr=1e-6)
    assert sum(sparse.scorer.count.values()) == 3  # steps 0, 4, 8


def test_ist_scores_move_with_the_reward(model4):
    s = LayerSampler(model4, active_layers=1, scorer="ist", seed=0)
    ist = s.scorer
    assert ist.weights() == [0.25] * 4
    # suppressing {0, 1} hurt (high loss), suppressing {2, 3} did not
    ist.update([[0, 1], [2, 3]], [3.0, 1.0])
    r_hi = math.exp(-1.0) - (math.exp(-1.0) + math.exp(-3.0)) / 2
    assert ist.scores[2] == pytest.approx(10 * r_hi * 0.25) and ist.scores[3] == ist.scores[2]
    assert ist.scores[0] == pytest.approx(-ist.scores[2])
    w = ist.weights()  # important (harmful to suppress) layers are drawn more
    assert w[0] == w[1] > 0.25 > w[2] == w[3]


def test_ist_rollouts_find_the_layer_that_matters(tiny):
    """Only layer 1 learned the batch (the others are near-identity): suppressing it costs loss, so its score falls."""
    model = build_model(tiny("llama", num_layers=4))
    b = batch()
    with torch.no_grad():
        for i in (0, 2, 3):
            model.model.layers[i].self_attn.o_proj.weight.mul_(1e-3)
            model.model.layers[i].mlp.down_proj.weight.mul_(1e-3)
    learn = LayerSampler(model, active_layers=1, scorer="fixed", scorer_options={"layers": [1]}, train_embeddings=False)
    result = train_layerwise(model, [b], sampler=learn, steps=40, lr=1e-2)
    assert result.losses[-1] < result.losses[0] - 1.0
    s = LayerSampler(model, active_layers=1, period=1, scorer="ist", seed=0)
    ist = s.scorer
    for _ in range(30):
        ist.update(*ist.rollout_losses(model, b))
    assert min(range(4), key=ist.scores.__getitem__) == 1
    assert max(range(4), key=ist.weights().__getitem__) == 1


def test_ist_suppression_scales_the_residual_update(tiny):
    """Under suppression a layer returns h + 0.25·(layer(h) − h); other layers and later calls are untouched."""
    from planner.sampling.suppress import suppressed

    model = build_model(tiny("llama", num_layers=2))
    layers = model.model.layers
    x = torch.randn(1, 5, 64)
    pos = model.model.rotary_emb(x, torch.arange(5)[None])
    with torch.no_grad():
        y = layers[0](x, position_embeddings=pos)
        with suppressed(layers, [0], 0.25):
            y_s = layers[0](x, position_embeddings=pos)
            y1 = layers[1](x, position_embeddings=pos)
        assert torch.allclose(y_s, x + 0.25 * (y - x), atol=1e-6)
        assert torch.equal(y1, layers[1](x, position_embeddings=pos))
        assert torch.equal(layers[0](x, position_embeddings=pos), y)  # hooks removed on exit


def test_outlier_prefers_a_layer_with_planted_outliers(tiny):
    model = build_model(tiny("llama", num_layers=4))
    with torch.no_grad():
        w = model.model.layers[2].mlp.up_proj.weight
        g = torch.Generator().manual_seed(0)
        idx = torch.randperm(w.numel(), generator=g)[: w.numel() // 50]
        w.view(-1)[idx] *= 200.0
    s = LayerSampler(model, active_layers=1, period=1, scorer="outlier", seed=0)
    assert not s.scorer.calibrated and max(range(4), key=s.scorer.weights().__getitem__) == 2  # |W| alone
    s.calibrate(batch())
    assert s.scorer.calibrated
    shares = s.scorer.shares
    assert shares[2] > 0 and shares[2] == max(shares)
    for step in range(1, 200):
        s.begin_step(step)
    counts = Counter(h["active"][0] for h in s.history)
    assert counts.most_common(1)[0][0] == 2


def test_outlier_activation_norms_change_the_shares(tiny):
    """A column whose input feature is large makes that column's weights outliers (A = |W|·‖X‖)."""
    model = build_model(tiny("llama", num_layers=2))
    s = LayerSampler(model, active_layers=1, scorer="outlier")
    layer = s.parts.layers[1]
    q = layer.self_attn.q_proj
    plain = s.scorer.outlier_shares(None)
    norms = {id(q): torch.ones(q.in_features)}
    norms[id(q)][:3] = 1e4
    boosted = s.scorer.outlier_shares(norms)
    assert boosted[1] > plain[1] and boosted[0] == plain[0]


def test_semantic_best_depth_trades_block_size_for_deviation():
    assert best_depth([0.0, 0.0, 1.0, 1.0], 0, 0.5) == 2
    assert best_depth([1.0, 1.0, 1.0, 1.0], 0, 0.5) == 0  # all deviate: train them all
    assert best_depth([1.0, 1.0, 1.0, 1.0], 2, 0.5) == 2  # never below the lowest allowed depth
    assert best_depth([1.0, 1.0, 1.0, 1.0], 0, 0.0) == 3  # no size gain: the smallest block wins ties


def test_semantic_picks_a_contiguous_top_block(tiny):
    model = build_model(tiny("llama", num_layers=6))
    s = LayerSampler(model, active_layers=4, period=2, scorer="semantic")
    train_layerwise(model, [batch(seed=i) for i in range(2)], sampler=s, steps=6)
    sem = s.scorer
    assert sem.deviations is not None and len(sem.deviations) == 6
    assert all(0.0 <= d <= 2.0 for d in sem.deviations)
    d = sem.depth
    assert 2 <= d <= 5
    assert d == best_depth(sem.deviations, 2, 0.5)
    assert all(h["active"] == list(range(d, 6)) for h in s.history[1:])  # static once calibrated


def test_cyclic_order(model4):
    def actives(order, active_layers, **opts):
        s = LayerSampler(
            model4, active_layers=active_layers, period=1, scorer="cyclic", scorer_options={"order": order, **opts}
        )
        for step in range(1, 6):
            s.begin_step(step)
        return [h["active"] for h in s.history]

    assert actives("ascending", 1) == [[0], [1], [2], [3], [0], [1]]
    assert actives("descending", 1) == [[3], [2], [1], [0], [3], [2]]
    assert actives("ascending", 2) == [[0, 1], [2, 3]] * 3
    assert actives("ascending", 3) == [[0, 1, 2], [1, 2, 3]] * 3  # the last block is the top γ
    assert actives("ascending", 1, start_block=2) == [[2], [3], [0], [1], [2], [3]]
    rand = actives("random", 1)
    assert sorted(map(tuple, rand[:4])) == [(0,), (1,), (2,), (3,)]  # every block once per round
    with pytest.raises(PlannerError, match="order"):
        get_scorer("cyclic", order="sideways")


def test_fixed_set(model4):
    s = LayerSampler(model4, active_layers=2, period=1, scorer="fixed", scorer_options={"layers": [3, 1]})
    for step in range(1, 5):
        s.begin_step(step)
    assert all(h["active"] == [1, 3] for h in s.history)
    assert s.history[0]["weights"] == [0.0, 0.5, 0.0, 0.5]
    assert LayerSampler(model4, active_layers=3, scorer="fixed").active == [1, 2, 3]  # top γ by default
    assert LayerSampler(model4, active_layers=2, scorer="fixed", scorer_options={"top": 2}).active == [2, 3]
    with pytest.raises(PlannerError, match="active_layers must equal"):
        LayerSampler(model4, active_layers=1, scorer="fixed", scorer_options={"layers": [0, 1]})
    with pytest.raises(PlannerError, match="fixed layers must satisfy"):
        LayerSampler(model4, active_layers=1, scorer="fixed", min_depth=2, scorer_options={"layers": [0]})


def test_ist_suppresses_only_adapter_outputs_under_lora(tiny):
    from peft import LoraConfig, get_peft_model

    from planner.sampling.suppress import suppressed

    model = get_peft_model(
        build_model(tiny("llama", num_layers=2)), LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0)
    )
    s = LayerSampler(model, active_layers=1, scorer="ist", train_embeddings=False, train_head=False)
    b = batch()
    layers = s.parts.layers
    with torch.no_grad():
        plain = model(**b).logits
        with suppressed(layers, [0, 1], 0.25, adapters=True):  # lora_B starts at zero: nothing to scale
            assert torch.equal(model(**b).logits, plain)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
        tuned = model(**b).logits
        with suppressed(layers, [1], 0.25, adapters=True):
            partly = model(**b).logits
        for name, p in model.named_parameters():
            if "lora_B" in name and ".layers.1." in name:
                p.mul_(0.25)
        assert torch.allclose(partly, model(**b).logits, atol=1e-5)  # = the adapter output ×0.25
        assert not torch.allclose(partly, tuned)
    sets, losses = s.scorer.rollout_losses(model, b)
    assert len(sets) == 3 and all(len(x) == 1 for x in sets) and all(math.isfinite(x) for x in losses)
