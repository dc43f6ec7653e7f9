"""With --lora the search samples QLoRA's base-weight storage for LoRA points, and only for them."""

from __future__ import annotations

import optuna
from optuna.samplers import RandomSampler

from planner.tune.study.baselines import trial_point
from planner.tune.search.space import SearchSpace


def space(**kw) -> SearchSpace:
    return SearchSpace(
        num_layers=4,
        scorers=("uniform",),
        seq_len=16,
        lora_ranks=(0, 8),
        quantize_choices=(None, "nf4-dq"),
        extra={"dtype": "bfloat16", "amp": "none"},
        **kw,
    )


def test_only_lora_points_draw_quantize_and_their_config_carries_it():
    s = space()
    study = optuna.create_study(sampler=RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        p = s.suggest(trial)
        study.tell(trial, 0.0)
        quant = dict(p.levers).get("quantize")
        if p.adapter_rank:
            assert "quantize" in trial.params and quant == trial.params["quantize"]
            seen.add(quant)
        else:
            assert "quantize" not in trial.params and quant is None
        assert s.train_config(p).quantize == quant  # the gate costs what was drawn
        assert s.from_params(trial.params) == p
    assert seen == {None, "nf4-dq"}


def test_a_fixed_lora_point_keeps_its_storage():
    s = space()
    study = optuna.create_study(sampler=RandomSampler(seed=1))
    lora = s.point(
        active_layers=4, period=5, scorer="uniform", train_embeddings=False, train_head=False, lr=1e-3, lora_rank=8
    )
    qlora = lora.__class__(**{**lora.__dict__, "levers": (("quantize", "nf4-dq"),)})
    for point in (lora, qlora):
        for _ in range(5):  # never drawn: the enqueued value stands
            study.enqueue_trial(s.enqueue_params(point))
            trial = study.ask()
            assert s.suggest(trial) == point
            study.tell(trial, 0.0)
            assert trial_point(study.trials[-1], s) == point


def test_a_space_without_quantize_choices_never_suggests_it():
    s = SearchSpace(num_layers=4, scorers=("uniform",), seq_len=16, lora_ranks=(0, 8))
    study = optuna.create_study(sampler=RandomSampler(seed=0))
    for _ in range(10):
        trial = study.ask()
        s.suggest(trial)
        assert "quantize" not in trial.params
        study.tell(trial, 0.0)


def test_a_static_scorer_draws_quantize_and_is_costed_as_its_top_block_stored_quantized_below():
    s = SearchSpace(
        num_layers=4,
        scorers=("semantic", "uniform"),
        seq_len=16,
        quantize_choices=(None, "nf4-dq"),
        static_scorers=("semantic",),
        min_depths=(0, 1),
        extra={"dtype": "bfloat16", "amp": "none"},
    )
    study = optuna.create_study(sampler=RandomSampler(seed=2))
    quantized = 0
    for _ in range(60):
        trial = study.ask()
        p = s.suggest(trial)
        study.tell(trial, 0.0)
        # a sampled plan's layers all train, and so do a static set's of γ = L
        assert ("quantize" in trial.params) == (p.scorer == "semantic" and p.active_layers < 4)
        cfg = s.train_config(p)
        if dict(p.levers).get("quantize"):
            quantized += 1
            # the semantic block lies in the top γ whatever min_depth (<= L - γ) allows
            assert (
                cfg.layers == list(range(4 - p.active_layers, 4))
                and cfg.active_layers is None
                and cfg.quantize == "nf4-dq"
            )
        else:
            assert cfg.layers is None and cfg.active_layers == p.active_layers and cfg.quantize is None
    assert quantized
