"""A CPU run of the target measures its own training steps (live tensor bytes, one peak per draw of layers) and
holds each draw against the CPU cost model's prediction for that set of layers.

The truth is the tracker over the trial's real steps (the sampler, the optimizer, the batches as the run takes
them); the prediction is composed from traced per-layer segments of another, two-step run: independent runs that
must agree to the byte.
"""

import optuna
import pytest
import torch
from tune_helpers import write_user_workload

from planner.cli.main import main
from planner.tune.study import record
from planner.tune.proxy.train import ran_form, shaped_batches
from planner.tune.storage.backends import open_storage


DTYPE = "bfloat16"  # a saved float32 checkpoint trained in bfloat16: weights cast, RoPE buffers kept


def test_every_draw_of_a_cpu_run_of_the_target_is_measured_and_equals_its_prediction(tmp_path, capsys):
    model_dir, data = write_user_workload(tmp_path)
    storage = f"sqlite:///{tmp_path}/s.db"
    code = main(
        [
            "tune",
            "--vram",
            "2MB",
            "--model",
            model_dir,
            "--data",
            data,
            "--proxy",
            "target",
            "--device",
            "cpu",
            "--proxy-device",
            "cpu",
            "--seq-len",
            "32",
            "--batch-size",
            "2",
            "--dtype",
            DTYPE,
            "--n-trials",
            "5",
            "--steps",
            "6",
            "--eval-every",
            "6",
            "--scorers",
            "uniform,cyclic",
            "--confirm-seeds",
            "0",
            "--threads",
            "1",
            "--storage",
            storage,
            "--study",
            "m",
            "--out",
            str(tmp_path / "plan.yaml"),
            "--quiet",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    trials = optuna.load_study(study_name="m", storage=open_storage(storage)).trials
    measured = [record.read(t).measured_memory for t in trials if record.read(t).measured_memory]
    assert len(measured) >= 3, out
    draws = [d for m in measured for d in m.draws]
    assert all(m.device == "cpu" for m in measured) and len(draws) >= len(measured)
    # every draw's training peak, measured on its own steps, is the cost model's for those layers
    assert all(d.predicted_bytes == d.measured_bytes for d in draws), [
        (d.layers, d.predicted_bytes, d.measured_bytes) for d in draws
    ]
    assert all(m.prediction_error == 0 for m in measured)
    assert f"{len(draws)} of {len(draws)} draws exactly as predicted" in out


def test_the_form_a_proxy_run_executes_leaves_off_the_levers_it_does_not_run():
    from planner.config import TrainConfig

    cfg = TrainConfig(
        batch_size=1,
        seq_len=8,
        active_layers=2,
        gradient_checkpointing=True,
        optimizer_in_backward=True,
        loss_chunks=4,
        optimizer="adamw8bit",
    )
    ran, unrun = ran_form(cfg)
    assert unrun == ["optimizer_in_backward"]
    assert (ran.optimizer_in_backward, ran.loss_chunks, ran.optimizer, ran.gradient_checkpointing) == (
        False,
        4,
        "adamw8bit",
        True,
    )
    q, unrun = ran_form(TrainConfig(batch_size=1, seq_len=8, layers="all", lora_rank=4, quantize="nf4"))
    assert unrun == ["quantize"] and q.quantize is None and q.lora_rank == 4


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_a_right_padded_batch_trains_the_same_without_its_attention_mask(tiny, kv_heads):
    """shaped_batches leaves the mask out: under the causal mask no real token sees the padding after it, which
    carries no label, so the loss and every gradient are the masked batch's."""
    from planner.spec import build_model

    model = build_model(tiny("llama", num_layers=2, kv_heads=kv_heads), seed=0)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [5, 6, 7, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    labels = torch.tensor([[-100, -100, 7, 8, 9, 10], [-100, 6, 7, -100, -100, -100]])
    batch = {"input_ids": ids[:, :6], "attention_mask": mask, "labels": labels}
    (shaped,) = list(shaped_batches([batch], 8, pad_id=0))
    assert set(shaped) == {"input_ids", "labels"} and shaped["input_ids"].shape == (2, 8)

    def loss_and_grads(b):
        model.zero_grad(set_to_none=True)
        loss = model(**b, use_cache=False).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    masked, g_masked = loss_and_grads(batch)
    unmasked, g_unmasked = loss_and_grads(shaped)
    torch.testing.assert_close(unmasked, masked, rtol=1e-5, atol=1e-6)
    assert len(g_masked) == len(g_unmasked)
    for a, b in zip(g_unmasked, g_masked):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
