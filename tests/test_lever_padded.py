"""Padded batches: the mask the lever gives the model changes its memory (costed to the byte in test_levers.py), not
what it learns; the exports say where a trainer pads batches the plan was costed without padding."""

import pytest
import torch
from plan_factory import make_plan

from planner.config import TrainConfig
from planner.cost import measure_training_peak
from planner.cost.measure import compute_loss, lever_batch, make_batch
from planner.export import EXPORTERS, export_plan
from planner.levers import LEVERS
from planner.spec import build_model

PADDED = LEVERS["padded_batches"]


def _loss_and_grads(model, batch, padded: bool):
    cfg = TrainConfig(batch_size=2, seq_len=64, padded_batches=padded, layers="all")
    model.zero_grad()
    torch.manual_seed(1)  # gpt2's dropout draws the same masks in both runs
    loss = compute_loss(model, lever_batch(batch, cfg), cfg)
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
    """On a model with fewer key-value heads than heads the masked path costs memory; a batch that brings its own
    mask keeps it (all ones: transformers drops it, and the step is the unpadded one)."""
    spec = tiny("llama", hidden=128, vocab=512)
    batch = make_batch(spec.vocab_size, 2, 64)
    cfg = TrainConfig(batch_size=2, seq_len=64, padded_batches=True, layers=[1, 2])
    padded = lever_batch(batch, cfg)
    mask = padded["attention_mask"]
    assert mask.dtype == batch["input_ids"].dtype and mask.sum().item() == 2 * 64 - 1 and mask[0, -1] == 0
    own = {**batch, "attention_mask": torch.ones(2, 64, dtype=torch.long)}
    assert lever_batch(own, cfg)["attention_mask"] is own["attention_mask"]
    unpadded = TrainConfig(batch_size=2, seq_len=64, layers=[1, 2])
    peak = {
        name: measure_training_peak(build_model(spec), c, b)
        for name, c, b in (("plain", unpadded, batch), ("padded", cfg, batch), ("all ones", cfg, own))
    }
    assert peak["padded"] > peak["plain"] + mask.nbytes  # the masked attention path, not only the mask
    assert peak["all ones"] == peak["plain"] + mask.nbytes  # the unpadded step, with the batch's mask beside it


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
