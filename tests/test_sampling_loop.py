"""The plain training loop and the Hugging Face Trainer callback, on tiny models on CPU."""

from __future__ import annotations

import math

import pytest
import torch

from planner.errors import PlannerError
from planner.sampling import DivergedError, LayerSampler, TrainResult, train_layerwise
from planner.spec import build_model


def batch(vocab=256, b=2, s=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (b, s), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def test_loop_trains_evaluates_and_reports(tiny):
    model = build_model(tiny("llama", num_layers=4))
    s = LayerSampler(model, active_layers=2, period=5, scorer="uniform", seed=0)
    opt = s.make_optimizer(torch.optim.AdamW, lr=3e-3)
    reported = []
    modes = []

    def eval_fn(m):
        modes.append((m.training, torch.is_grad_enabled()))
        return float(m(**batch(seed=9)).loss)

    result = train_layerwise(
        model,
        [batch(seed=i) for i in range(3)],
        sampler=s,
        optimizer=opt,
        steps=30,
        eval_fn=eval_fn,
        eval_every=10,
        on_eval=lambda step, v: reported.append((step, v)),
    )
    assert isinstance(result, TrainResult) and result.steps == 30 and len(result.losses) == 30
    assert [st for st, _ in result.evals] == [10, 20, 30] and reported == result.evals
    assert modes == [(False, False)] * 3 and model.training
    assert sum(result.losses[-3:]) < sum(result.losses[:3])  # it learns the three batches
    assert [h["step"] for h in result.history] == [0, 5, 10, 15, 20, 25]


def test_loop_cycles_a_one_shot_iterator_and_makes_its_optimizer(tiny):
    model = build_model(tiny("llama", num_layers=2))
    s = LayerSampler(model, active_layers=1, period=3)
    result = train_layerwise(model, iter([batch(seed=0), batch(seed=1)]), sampler=s, steps=7)
    assert len(result.losses) == 7 and s.optimizer is not None
    assert result.losses[0] != result.losses[1]
    with pytest.raises(PlannerError, match="at least one batch"):
        train_layerwise(model, [], sampler=s, steps=1)


def test_on_step_sees_every_step_begin_with_its_drawn_layers(tiny):
    model = build_model(tiny("llama", num_layers=4))
    s = LayerSampler(model, active_layers=1, period=3, scorer="uniform", seed=0)
    seen = []
    result = train_layerwise(
        model, [batch()], sampler=s, steps=7, on_step=lambda step: seen.append((step, list(s.active)))
    )
    draws = {h["step"]: h["active"] for h in result.history}
    assert [step for step, _ in seen] == list(range(7)) and sorted(draws) == [0, 3, 6]
    assert all(active == draws[step - step % 3] for step, active in seen)  # a re-draw is seen from its own step on


def test_on_eval_exceptions_propagate(tiny):
    class Pruned(Exception):
        pass

    model = build_model(tiny("llama", num_layers=2))
    s = LayerSampler(model, active_layers=1)

    def prune(step, value):
        raise Pruned(step)

    with pytest.raises(Pruned) as err:
        train_layerwise(model, [batch()], sampler=s, steps=50, eval_fn=lambda m: 0.0, eval_every=4, on_eval=prune)
    assert err.value.args == (4,)


def test_loop_raises_diverged_on_nan(tiny):
    model = build_model(tiny("llama", num_layers=2))
    s = LayerSampler(model, active_layers=1)
    with pytest.raises(DivergedError, match="finite") as err:
        train_layerwise(model, [batch()], sampler=s, steps=10, lr=1e6)
    assert err.value.step >= 1 and not math.isfinite(err.value.loss)
    assert isinstance(err.value, PlannerError)


def test_loop_completes_a_foreign_optimizer(tiny):
    """An optimizer built only over what trained at creation gets the other layers added (LMFlow issue 726)."""
    model = build_model(tiny("llama", num_layers=4))
    s = LayerSampler(model, active_layers=1, period=1, scorer="cyclic")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    before = [layer.mlp.up_proj.weight.detach().clone() for layer in s.parts.layers]
    train_layerwise(model, [batch()], sampler=s, optimizer=opt, steps=4)
    assert all(not torch.equal(layer.mlp.up_proj.weight, w) for layer, w in zip(s.parts.layers, before))


def test_loop_calibrates_scorers_that_need_a_batch(tiny):
    model = build_model(tiny("llama", num_layers=4))
    s = LayerSampler(model, active_layers=2, scorer="semantic")
    assert not s.calibrated
    train_layerwise(model, [batch()], sampler=s, steps=2, calib_batch=batch(seed=5))
    assert s.calibrated and s.scorer.depth is not None


def test_ist_updates_every_ten_steps_in_the_loop(tiny):
    model = build_model(tiny("llama", num_layers=4))
    s = LayerSampler(model, active_layers=1, period=1, scorer="ist")
    train_layerwise(model, [batch()], sampler=s, steps=25)
    assert s.scorer.updates == 2 and any(x != 0.0 for x in s.scorer.scores)


# Hugging Face Trainer ---------------------------------------------------------------------------
class _Rows(torch.utils.data.Dataset):
    def __init__(self, n=16, s=16, vocab=256):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (n, s), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.ids[i]}


def _train_with_trainer(tmp_path, model, sampler, steps, **args):
    from transformers import Trainer, TrainingArguments

    from planner.sampling.hf import LayerwiseCallback

    targs = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=steps,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        weight_decay=0.1,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        **args,
    )
    callback = LayerwiseCallback(sampler)
    trainer = Trainer(model=model, args=targs, train_dataset=_Rows(), callbacks=[callback])
    trainer.train()
    return trainer, callback


def test_hf_trainer_trains_every_drawn_layer(tiny, tmp_path):
    model = build_model(tiny("llama", num_layers=4))
    s = LayerSampler(model, active_layers=1, period=2, scorer="cyclic")  # freezes layers 1..3 before the Trainer exists
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer, callback = _train_with_trainer(tmp_path, model, s, steps=8)
    assert [h["active"] for h in s.history] == [[0], [1], [2], [3]]
    # the Trainer built its optimizer from layer 0 only; the callback added layers 1..3
    assert callback.added and {id(p) for g in trainer.optimizer.param_groups for p in g["params"]} >= {
        id(p) for p in s.managed_parameters()
    }
    for i, layer in enumerate(s.parts.layers):
        name = f"model.layers.{i}.mlp.up_proj.weight"
        assert not torch.equal(dict(model.named_parameters())[name], before[name]), f"layer {i} never trained"
    # weight decay split kept: a layer's norm weights sit with the no-decay group like layer 0's
    inner = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    group_of = {id(p): g["weight_decay"] for g in inner.param_groups for p in g["params"]}
    assert (
        group_of[id(s.parts.layers[3].input_layernorm.weight)]
        == group_of[id(s.parts.layers[0].input_layernorm.weight)]
        == 0.0
    )
    assert group_of[id(s.parts.layers[3].mlp.up_proj.weight)] == 0.1
    # state released: only the last active layer (and embeddings/head) hold AdamW moments
    held = {id(p) for p in inner.state}
    assert held == {id(p) for p in s.trainable_parameters()}


def test_hf_trainer_with_gradient_accumulation_and_ist(tiny, tmp_path):
    model = build_model(tiny("llama", num_layers=4))
    s = LayerSampler(model, active_layers=2, period=3, scorer="ist", scorer_options={"update_every": 2}, seed=0)
    _train_with_trainer(tmp_path, model, s, steps=6, gradient_accumulation_steps=2)
    assert [h["step"] for h in s.history] == [0, 3]  # switches once per optimizer step, not per micro-batch
    assert s.scorer.updates == 3  # rollouts on batches drawn from the Trainer's dataloader


def test_hf_trainer_gradnorm_and_outlier(tiny, tmp_path):
    model = build_model(tiny("gpt2", num_layers=3))
    s = LayerSampler(model, active_layers=1, period=1, scorer="gradnorm", seed=0)
    _train_with_trainer(tmp_path / "g", model, s, steps=4)
    assert sum(s.scorer.count.values()) == 4
    model = build_model(tiny("llama", num_layers=3))
    s = LayerSampler(model, active_layers=1, period=2, scorer="outlier", seed=0)
    _train_with_trainer(tmp_path / "o", model, s, steps=2)
    assert s.scorer.calibrated


def test_hf_trainer_with_lora_trains_only_active_adapters(tiny, tmp_path):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        build_model(tiny("llama", num_layers=4)), LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0)
    )
    s = LayerSampler(
        model,
        active_layers=1,
        period=100,
        scorer="fixed",
        scorer_options={"layers": [2]},
        train_embeddings=False,
        train_head=False,
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer, _ = _train_with_trainer(tmp_path, model, s, steps=3)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n and ".layers.2." in n for n in changed)
    inner = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    assert {id(p) for p in inner.state} == {id(p) for p in s.parts.layer_params[2]}


def test_an_endless_one_shot_iterator_keeps_no_batch_and_a_long_one_that_ends_is_refused(tiny):
    import weakref

    from planner.sampling.loop import REPLAY_LIMIT

    model = build_model(tiny("llama", num_layers=2))
    s = LayerSampler(model, active_layers=1, period=3)
    alive = []

    def endless():
        seed = 0
        while True:
            b = batch(seed=seed % 3)
            b["input_ids"] = b["input_ids"].clone()  # a tensor of its own, to watch
            alive.append(weakref.ref(b["input_ids"]))
            seed += 1
            yield b

    steps = REPLAY_LIMIT + 8
    train_layerwise(model, endless(), sampler=s, steps=steps)
    assert len(alive) == steps and sum(r() is not None for r in alive) == 0  # none kept once the run returned
    s2 = LayerSampler(model, active_layers=1, period=3)
    with pytest.raises(
        PlannerError, match=f"at most {REPLAY_LIMIT} batches to replay, but it ended after {REPLAY_LIMIT + 1}"
    ):
        train_layerwise(
            model, iter([batch(seed=i % 3) for i in range(REPLAY_LIMIT + 1)]), sampler=s2, steps=REPLAY_LIMIT + 2
        )
