"""Liger's fused linear cross-entropy (planner/levers/liger_fused_ce.py): the loss and its gradients equal
transformers' own loss and autograd; what the pure-torch function keeps equals what Liger-Kernel v0.8.2's
``fused_linear_cross_entropy_forward`` allocates, counted by hand from its source; the cost model's prediction is
exact against real CPU training steps and the CPU allocator's own events; combinations that cannot run are refused;
each exporter writes keys its trainer reads."""

import pytest
import torch

from planner.config import TrainConfig
from planner.cost import estimate, measure_training_peak
from planner.cost.measure import make_batch, make_optimizer, prepare_model
from planner.cost.tracker import LiveBytesTracker
from planner.errors import PlannerError
from planner.levers import LEVERS
from planner.levers.liger_fused_ce import chunking, fused_linear_cross_entropy_forward, liger_loss
from planner.spec import build_model

ARCHS = ("llama", "qwen2")  # qwen2's tiny model ties the head to the embeddings
CASES = {
    "some-layers-bf16": dict(layers=[1, 2], dtype="bfloat16"),
    "all-float32": dict(layers="all"),
    "frozen-head-bf16": dict(layers="all", train_embeddings=False, train_head=False, dtype="bfloat16"),
    "lora-frozen-head": dict(lora_rank=8, layers="all", train_embeddings=False, train_head=False),
    "amp-bf16": dict(layers=[2, 3], amp="bf16"),
    "ckpt-step-in-backward-bf16": dict(
        layers="all", gradient_checkpointing=True, optimizer_in_backward=True, dtype="bfloat16"
    ),
}


@pytest.fixture(autouse=True)
def _no_disk_cache(monkeypatch):
    monkeypatch.setenv("PLANNER_COST_CACHE", "0")


def _batch(vocab: int, ignored: int = 5) -> dict:
    """Two rows of 64 tokens, the first labels of row 0 ignored (-100)."""
    batch = make_batch(vocab, 2, 64)
    batch["labels"][0, :ignored] = -100
    return batch


# -- the loss -------------------------------------------------------------------------------------


def _both_losses(model, batch):
    """(the model's own loss, its parameters' gradients, the Liger loss after its own backward) on ``batch``."""
    plain = model(input_ids=batch["input_ids"], labels=batch["labels"], use_cache=False).loss
    plain.backward()
    truth = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    loss = liger_loss(model, batch)
    loss.backward()
    return plain, truth, loss


@pytest.mark.parametrize("arch", ARCHS)
def test_loss_and_gradients_equal_transformers_loss(tiny, arch):
    """Truth: the model's own forward with labels (transformers' ForCausalLMLoss) and autograd through it."""
    spec = tiny(arch, hidden=128, vocab=512)
    model = build_model(spec, dtype="float32")
    batch = _batch(spec.vocab_size)
    plain, truth, loss = _both_losses(model, batch)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, plain, rtol=1e-6, atol=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, truth[name], rtol=1e-4, atol=1e-6, msg=name)


def test_loss_with_a_frozen_head_and_under_autocast(tiny):
    """The head frozen: no weight gradient is made; under bf16 autocast the loss still matches the model's own
    (the logits in bfloat16, the kernel in float32, as Liger's)."""
    spec = tiny("llama", hidden=128, vocab=512)
    model = build_model(spec, dtype="float32")
    model.lm_head.weight.requires_grad_(False)
    batch = _batch(spec.vocab_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = model(input_ids=batch["input_ids"], labels=batch["labels"], use_cache=False).loss
        loss = liger_loss(model, batch)
    torch.testing.assert_close(loss, plain.float(), rtol=2e-2, atol=2e-2)
    loss.backward()
    assert model.lm_head.weight.grad is None and model.model.norm.weight.grad is not None


def test_final_logit_softcapping_is_applied_as_gemma2_does():
    """gemma2 caps its logits (``final_logit_softcapping``); Liger's lce_forward passes the cap to the kernel."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        final_logit_softcapping=5.0,
    )
    model = Gemma2ForCausalLM(config).float()
    batch = _batch(256)
    plain, truth, loss = _both_losses(model, batch)
    torch.testing.assert_close(loss, plain, rtol=1e-6, atol=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, truth[name], rtol=1e-4, atol=1e-6, msg=name)


# -- what it keeps ----------------------------------------------------------------------------------


def test_chunk_size_is_ligers_formula():
    # the example in fused_linear_cross_entropy.py: BT = 4096*4, V = 32000, H = 4096 -> inc_factor 8, chunk_size 2048
    assert chunking(4096 * 4, 4096, 32000) == (2048, 8)
    assert chunking(1024, 4096, 128256) == (32, 32)  # Llama-3-8B, 1 x 1024: ceil(V / H) = 32
    assert chunking(100, 128, 512) == (32, 4)  # rounded up to a power of 2; the last chunk is short


def _by_hand(rows: int, hidden: int, vocab: int, size: int, head_trains: bool) -> int:
    """Peak bytes above its start of Liger v0.8.2's fused_linear_cross_entropy_forward, from its source: grad_input
    (BT x H), grad_weight (V x H, head training), the float32 losses and the label mask, then per chunk the largest of
    (1) the new logits while the previous chunk's are still named, (2) grad_input's product (rows x H), with the
    previous chunk's logits alive through ``grad_logits_t`` when the head trains, (3) the V x H weight product and
    its float32 copy (``.float()`` is the product itself in float32)."""
    chunk, count = chunking(rows, hidden, vocab)
    fixed = rows * hidden * size + (vocab * hidden * size if head_trains else 0) + rows * 4 + rows
    sizes = [min(chunk, rows - i * chunk) for i in range(count)]
    worst = 0
    for i, n in enumerate(sizes):
        prev = sizes[i - 1] if i else 0
        worst = max(worst, (prev + n) * vocab * size)
        worst = max(worst, ((prev if head_trains else 0) + n) * vocab * size + n * hidden * size)
        if head_trains:
            worst = max(worst, n * vocab * size + vocab * hidden * size + (vocab * hidden * 4 if size != 4 else 0))
    return fixed + worst


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_trains", [True, False])
@pytest.mark.parametrize("rows", [128, 100])
def test_forward_allocates_what_liger_allocates(dtype, head_trains, rows):
    hidden, vocab = 128, 512
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, hidden, generator=g).to(dtype).requires_grad_(True)
    w = torch.randn(vocab, hidden, generator=g).to(dtype).requires_grad_(head_trains)
    target = torch.randint(0, vocab, (rows,), generator=g)
    target[:3] = -100
    with LiveBytesTracker() as tracker:
        tracker.track([x, w, target])
        tracker.reset_peak()
        start = tracker.current_bytes
        with torch.no_grad():
            loss, grad_input, grad_weight = fused_linear_cross_entropy_forward(x, w, target)
        peak = tracker.peak_bytes - start
        kept = tracker.current_bytes - start
    size = torch.finfo(dtype).bits // 8
    assert peak == _by_hand(rows, hidden, vocab, size, head_trains)
    # kept for backward: grad_input and grad_weight (and the 0-dim loss)
    assert kept == rows * hidden * size + (vocab * hidden * size if head_trains else 0) + 4
    assert grad_input.dtype == dtype and (grad_weight is None) == (not head_trains)
    assert grad_weight is None or grad_weight.dtype == dtype


def test_backward_hands_over_the_saved_gradients(tiny):
    """Forward saves exactly grad_input and grad_weight; backward gives them to autograd (the head's .grad is the
    tensor made in forward, no copy), and scales them in place when the incoming gradient is not 1."""
    spec = tiny("llama", hidden=128, vocab=512)
    model = build_model(spec, dtype="bfloat16")
    batch = _batch(spec.vocab_size)
    loss = liger_loss(model, batch)
    saved = loss.grad_fn.saved_tensors
    assert [tuple(t.shape) for t in saved] == [(128, 128), (512, 128)] and all(t.dtype == torch.bfloat16 for t in saved)
    pointer = saved[1].data_ptr()
    del saved
    loss.backward()
    assert model.lm_head.weight.grad.data_ptr() == pointer
    model.zero_grad(set_to_none=True)
    unit = liger_loss(model, batch)
    unit.backward()
    once = model.lm_head.weight.grad.clone()
    model.zero_grad(set_to_none=True)
    (3 * liger_loss(model, batch)).backward()
    torch.testing.assert_close(model.lm_head.weight.grad, (3 * once).to(torch.bfloat16))


# -- the cost model ---------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS + ("phi3",))
@pytest.mark.parametrize("case", sorted(CASES))
def test_prediction_is_exact_on_cpu(tiny, arch, case):
    """Truth: the peak of a real second training step of the full-depth model under the lever."""
    spec = tiny(arch, hidden=128, vocab=512)
    cfg = TrainConfig(batch_size=2, seq_len=64, liger_fused_ce=True, **CASES[case])
    predicted = estimate(spec, cfg, device="cpu").peak_bytes
    measured = measure_training_peak(build_model(spec, dtype=cfg.dtype), cfg, make_batch(spec.vocab_size, 2, 64))
    assert predicted == measured


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("case", ["all-float32", "frozen-head-bf16"])
def test_step_against_the_cpu_allocators_events(tiny, arch, case, monkeypatch):
    """A truth that does not go through the tracker: the profiler's memory events of the second step. They also see
    the CPU stand-in's own scratch inside the kernel op (one row at a time here: a few float32 rows of V). Not with a
    16-bit trained head: there CPU's TensorIterator adds float32 temporaries of V x H to ``grad_weight += (...).float()``
    (casts CUDA's kernels make in registers), which no tensor holds."""
    from allocator_events import profiled_step_peak

    from planner.levers import liger_fused_ce

    monkeypatch.setattr(liger_fused_ce, "SCRATCH_ELEMENTS", 1)  # one row per block
    spec = tiny(arch, hidden=128, vocab=512)
    cfg = TrainConfig(batch_size=2, seq_len=64, liger_fused_ce=True, **CASES[case])
    batch = make_batch(spec.vocab_size, 2, 64)
    truth = measure_training_peak(build_model(spec, dtype=cfg.dtype), cfg, batch)
    model = prepare_model(build_model(spec, dtype=cfg.dtype), cfg, cfg.trainable_layers(spec.num_layers))
    peak, state = profiled_step_peak(model, make_optimizer(model, cfg), batch, cfg)
    scratch = 6 * spec.vocab_size * 4
    assert truth - state <= peak <= 1.0001 * (truth - state) + scratch


def test_fake_trace_matches_the_real_one(tiny, monkeypatch):
    """Large models trace under FakeTensorMode, where the label count and the grad_output == 1 test cannot be read."""
    from planner.cost import family

    spec = tiny("qwen2", hidden=128, vocab=512)
    for kw in (CASES["some-layers-bf16"], CASES["lora-frozen-head"]):
        cfg = TrainConfig(batch_size=2, seq_len=64, liger_fused_ce=True, **kw)
        monkeypatch.setattr(family, "_traces", {})
        fake = estimate(spec, cfg, device="cpu", fake=True)
        monkeypatch.setattr(family, "_traces", {})
        real = estimate(spec, cfg, device="cpu", fake=False)
        assert fake.peak_bytes == real.peak_bytes and fake.breakdown == real.breakdown


def test_the_fused_loss_lowers_the_peak_where_the_loss_sets_it(tiny):
    """Long sequences over a large vocabulary with the head frozen: the logits set the plain peak."""
    spec = tiny("llama", hidden=128, vocab=4096)
    shape = dict(
        batch_size=2, seq_len=256, lora_rank=8, layers="all", train_embeddings=False, train_head=False, dtype="bfloat16"
    )
    plain = estimate(spec, TrainConfig(**shape), device="cpu").peak_bytes
    chunks = estimate(spec, TrainConfig(**shape, loss_chunks=8), device="cpu").peak_bytes
    fused = estimate(spec, TrainConfig(**shape, liger_fused_ce=True), device="cpu").peak_bytes
    assert fused < chunks < plain


# -- rules --------------------------------------------------------------------------------------------


def test_the_chunked_loss_is_refused_with_the_rule():
    with pytest.raises(
        PlannerError,
        match=r"`liger_fused_ce` computes the whole loss itself, so `loss_chunks == 1` "
        r"must hold with it, but got liger_fused_ce=True with loss_chunks=8",
    ):
        TrainConfig(layers="all", liger_fused_ce=True, loss_chunks=8)
    assert TrainConfig(layers="all", liger_fused_ce=True, loss_chunks=1).liger_fused_ce


def test_an_architecture_liger_does_not_patch_is_refused(tiny):
    cfg = TrainConfig(batch_size=1, seq_len=16, layers="all", liger_fused_ce=True)
    with pytest.raises(PlannerError, match="needs an architecture Liger-Kernel patches .* but got model_type 'gpt2'"):
        estimate(tiny("gpt2"), cfg, device="cpu")


def test_the_lever_keeps_the_contract():
    lever = LEVERS["liger_fused_ce"]
    cfg = TrainConfig(layers="all", liger_fused_ce=True)
    assert lever.active(cfg) and lever.label(cfg) == "Liger fused linear CE"
    assert lever.flag.name == "--liger-fused-ce" and lever.flag.kind == "bool" and lever.flag.field == "liger_fused_ce"
    assert lever.in_shape and lever.fit_value is None and not lever.changes_result
    assert TrainConfig.model_fields["liger_fused_ce"].description
    assert not lever.active(TrainConfig(layers="all")) and lever.label(TrainConfig(layers="all")) is None
    for target in ("hf", "axolotl", "llamafactory", "lmflow", "swift", "peft"):
        items = lever.export(target, cfg)
        assert items.keys or items.lost
        assert all(line.startswith("memory: ") and "\n" not in line for line in items.lost)


# -- exports ------------------------------------------------------------------------------------------

# axolotl 067b021 src/axolotl/integrations/liger/args.py LigerArgs: the keys LigerPlugin adds to the config schema
AXOLOTL_LIGER_ARGS = {
    "liger_rope",
    "liger_rms_norm",
    "liger_rms_norm_gated",
    "liger_layer_norm",
    "liger_swiglu",
    "liger_glu_activation",
    "liger_cross_entropy",
    "liger_fused_linear_cross_entropy",
    "liger_use_token_scaling",
}


def _plans():
    from plan_factory import make_plan

    on = make_plan(train=TrainConfig(active_layers=2, liger_fused_ce=True))
    off = make_plan(train=TrainConfig(active_layers=2))
    return on, off


def test_exports_write_the_trainers_own_keys(tmp_path):
    import shlex

    import yaml
    from trainer_fields import config_keys
    from transformers import HfArgumentParser, TrainingArguments

    from planner.export import get_exporter

    on, off = _plans()
    out = {
        t: get_exporter(t).render(on) for t in ("axolotl", "llamafactory", "lmflow", "swift", "hf", "peft", "planner")
    }
    base = {t: get_exporter(t).render(off) for t in out}

    axolotl = yaml.safe_load(out["axolotl"].files["axolotl.yaml"])
    assert axolotl["plugins"] == ["axolotl.integrations.liger.LigerPlugin"]
    assert axolotl["liger_fused_linear_cross_entropy"] is True
    assert {k for k in axolotl if k.startswith("liger_")} == {"liger_fused_linear_cross_entropy"}  # FLCE alone
    assert set(axolotl) <= config_keys("axolotl") | AXOLOTL_LIGER_ARGS and "plugins" in config_keys("axolotl")

    factory = yaml.safe_load(out["llamafactory"].files["llamafactory.yaml"])
    assert factory["enable_liger_kernel"] is True and set(factory) <= config_keys("llamafactory")

    for target, script in (("lmflow", "lmflow_finetune.sh"), ("swift", "swift_sft.sh")):
        toks = shlex.split(out[target].files[script], comments=True)
        value = toks[toks.index("--use_liger_kernel") + 1]
        # both parse it as transformers' TrainingArguments field (HfArgumentParser's bool reading)
        (args,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses(
            ["--output_dir", str(tmp_path), "--use_liger_kernel", value, "--use_cpu", "True"]
        )
        assert args.use_liger_kernel is True
    assert "use_liger_kernel" in config_keys("lmflow")

    # hf: the script's TrainingArguments carry no Liger key; the lost line names the FLCE-only form, which constructs
    assert "liger" not in out["hf"].files["training_args.json"]
    from planner.levers.liger_fused_ce import HF_FLCE_ONLY

    TrainingArguments(output_dir=str(tmp_path), use_cpu=True, use_liger_kernel=True, liger_kernel_config=HF_FLCE_ONLY)

    for target, result in out.items():
        extra = [line for line in result.lost if line not in base[target].lost]
        liger = [line for line in extra if "Liger" in line]
        assert extra == liger, target
        if target == "planner":
            assert not liger and "liger_fused_ce: true" in result.files["plan.yaml"]
        elif target == "axolotl":
            assert not liger
        elif target in ("llamafactory", "lmflow", "swift"):
            assert len(liger) == 1 and "RoPE, RMSNorm/LayerNorm and SwiGLU/GeGLU" in liger[0]
        else:
            assert len(liger) == 1 and "makes the whole logits" in liger[0]


@pytest.mark.parametrize("target", ["axolotl", "llamafactory", "lmflow"])
def test_the_trainers_rules_train_the_same_with_the_liger_keys(target, tmp_path):
    """Applied with each trainer's rule (trainer_rules), the export trains exactly what the same export without the
    lever trains (the keys choose the loss kernel only), and axolotl's validation accepts the config."""
    import yaml
    from trainer_rules import RUNNERS, axolotl_refusal

    from planner.export import get_exporter

    on, off = _plans()
    with_keys = get_exporter(target).render(on)
    if target == "axolotl":
        assert axolotl_refusal(yaml.safe_load(with_keys.files["axolotl.yaml"])) is None
    (tmp_path / "on").mkdir()
    (tmp_path / "off").mkdir()
    got = RUNNERS[target](on, with_keys.files, tmp_path / "on")
    want = RUNNERS[target](off, get_exporter(target).render(off).files, tmp_path / "off")
    assert got.error is None and got.trained == want.trained and got.draws == want.draws
