"""Padded batches: the mask the lever gives the model changes its memory (costed to the byte in test_levers.py), not
what it learns; the exports say where a trainer pads batches the plan was costed without padding."""

import pytest
import torch
from plan_factory import make_plan

from planner.config import TrainConfig
from planner.cost import measure_training_peak
from planner.cost.measure import compute_loss, make_batch
from planner.export import EXPORTERS, export_plan
from planner.levers import LEVERS
from planner.spec import build_model

PADDED = LEVERS["padded_batches"]


def _loss_and_grads(model, batch, padded: bool):
    cfg = TrainConfig(batch_size=2, seq_len=64, padded_batches=padded, layers="all")
    model.zero_grad()
    torch.manual_seed(1)  # gpt2's dropout draws the same masks in both runs
    with PADDED.forward_context(model, cfg):
        loss = compute_loss(model, batch, cfg)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_the_padding_changes_no_loss_and_no_gradient(tiny, arch):
    """Only the first row's last token is masked: no label reads its logits and no other token attends to it."""
    spec = tiny(arch, hidden=128, vocab=512)
    model = build_model(spec, dtype="float32")
    batch = make_batch(spec.vocab_size, 2, 64)
    (plain, plain_grads), (padded, padded_grads) = (
        _loss_and_grads(model, batch, False),
        _loss_and_grads(model, batch, True),
    )
    assert torch.equal(plain, padded)
    for a, b in zip(plain_grads, padded_grads):  # SDPA's masked kernel sums in another order: float32 rounding
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6 * a.abs().max().item())


def test_the_mask_reaches_the_model_and_a_batch_of_its_own_is_kept(tiny):
    """On a model with fewer key-value heads than heads the masked path costs memory; a real batch's own mask is
    left as it is (all ones: transformers drops it and the step is the unpadded one)."""
    spec = tiny("llama", hidden=128, vocab=512)
    batch = make_batch(spec.vocab_size, 2, 64)
    peaks = {}
    for padded in (False, True):
        cfg = TrainConfig(batch_size=2, seq_len=64, padded_batches=padded, layers=[1, 2])
        peaks[padded] = measure_training_peak(build_model(spec, dtype=cfg.dtype), cfg, batch)
    assert peaks[True] > peaks[False]
    cfg = TrainConfig(batch_size=2, seq_len=64, padded_batches=True, layers=[1, 2])
    own = {**batch, "attention_mask": torch.ones(2, 64, dtype=torch.long)}
    seen = []
    model = build_model(spec, dtype=cfg.dtype)
    with PADDED.forward_context(model, cfg):
        # after the lever's own hook: what the decoder stack receives
        model.model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["attention_mask"]), with_kwargs=True)
        model(**own, use_cache=False)
        model(input_ids=batch["input_ids"], use_cache=False)
    assert seen[0] is own["attention_mask"] and seen[1].sum().item() == 2 * 64 - 1 and seen[1][0, -1] == 0


def _plan(tmp_path, **train):
    cfg = TrainConfig(layers="all", seq_len=16, **train)
    return make_plan(layers=[0, 1, 2, 3], active_layers=4, scorer="fixed", scorer_options={}, train=cfg).save(
        tmp_path / "plan.yaml"
    )


@pytest.mark.parametrize(
    "train, said", [({"batch_size": 2}, True), ({"batch_size": 2, "padded_batches": True}, False), ({}, False)]
)
def test_a_trainer_that_pads_says_so_where_the_plan_was_costed_without(tmp_path, train, said):
    path = _plan(tmp_path, **train)
    for target in sorted(EXPORTERS):
        lost = "\n".join(export_plan(path, target, tmp_path / target).lost)
        expected = said and target not in ("planner", "peft")  # the plan file; an adapter config, no trainer
        assert ("pads each batch to its longest row" in lost and "--padded-batches" in lost) == expected, target
