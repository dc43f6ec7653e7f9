"""Memory levers: every registered lever's contract, and each lever's prediction exact on CPU against
real training steps with the real library doing the work (torch, peft, bitsandbytes, transformers)."""

import pytest
import torch

from planner.config import TrainConfig
from planner.cost import estimate, measure_training_peak
from planner.cost.measure import lever_batch, make_batch, make_optimizer, prepare_model
from planner.errors import PlannerError
from planner.levers import LEVERS, all_levers
from planner.spec import build_model, find_decoder_layers

ARCHS = ("llama", "qwen2", "gpt2")
ADAPTED = {"llama": ["q_proj", "v_proj"], "qwen2": ["q_proj", "v_proj"], "gpt2": ["c_attn"]}
CASES = {
    "step-in-backward": dict(optimizer_in_backward=True, layers=[1, 2]),
    "step-in-backward-8bit-ckpt-chunks": dict(
        optimizer_in_backward=True,
        optimizer="adamw8bit",
        loss_chunks=2,
        gradient_checkpointing=True,
        layers="all",
        dtype="bfloat16",
    ),
    "loss-chunks": dict(loss_chunks=4, layers=[1, 2], dtype="bfloat16"),
    "lora-targets": dict(lora_rank=8, layers="all", train_embeddings=False, train_head=False),
    "adamw8bit": dict(optimizer="adamw8bit", layers=[0, 3]),
    "paged-adamw8bit": dict(optimizer="paged_adamw8bit", layers=[1, 2], train_embeddings=False),
    # layer 0's input is a leaf the graph holds (frozen embeddings under checkpointing): offloaded, yet kept
    "offload-ckpt": dict(offload_activations=True, gradient_checkpointing=True, layers=[1, 2], train_embeddings=False),
    "offload-ckpt-chunks-bf16": dict(
        offload_activations=True, gradient_checkpointing=True, loss_chunks=4, layers="all", dtype="bfloat16"
    ),
    "padded": dict(padded_batches=True, layers=[1, 2]),
    "padded-ckpt-chunks-bf16": dict(
        padded_batches=True, gradient_checkpointing=True, loss_chunks=4, layers="all", dtype="bfloat16"
    ),
}


@pytest.fixture(autouse=True)
def _no_disk_cache(monkeypatch):
    monkeypatch.setenv("PLANNER_COST_CACHE", "0")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_lever_prediction_is_exact_on_cpu(tiny, arch, case):
    kw = dict(CASES[case])
    if case == "lora-targets":
        kw["lora_targets"] = ADAPTED[arch]
    spec = tiny(arch, hidden=128, vocab=512)
    cfg = TrainConfig(batch_size=2, seq_len=64, **kw)
    predicted = estimate(spec, cfg, device="cpu").peak_bytes
    measured = measure_training_peak(build_model(spec, dtype=cfg.dtype), cfg, make_batch(spec.vocab_size, 2, 64))
    assert predicted == measured


@pytest.mark.parametrize("case", ["step-in-backward", "loss-chunks", "offload-ckpt-chunks-bf16", "padded"])
def test_lever_step_against_the_profilers_allocator_events(tiny, case):
    """A truth that does not go through the tracker: the CPU allocator's memory events of the second step."""
    from allocator_events import profiled_step_peak

    spec = tiny("llama", hidden=128, vocab=512)
    cfg = TrainConfig(batch_size=2, seq_len=64, **CASES[case])
    batch = lever_batch(make_batch(spec.vocab_size, 2, 64), cfg)  # as a trainer hands it (a padded one's mask)
    truth = measure_training_peak(build_model(spec, dtype=cfg.dtype), cfg, batch)
    model = prepare_model(build_model(spec, dtype=cfg.dtype), cfg, cfg.trainable_layers(spec.num_layers))
    peak, state = profiled_step_peak(model, make_optimizer(model, cfg), batch, cfg)
    # checkpointing saves the CPU generator's state (torch.get_rng_state, made outside any op the tracker sees):
    # host memory on a GPU, a tensor of the CPU allocator here
    rng = torch.get_rng_state().numel() if cfg.gradient_checkpointing else 0
    assert truth - state <= peak <= 1.0001 * (truth - state) + rng


def test_the_levers_save_what_they_promise(tiny):
    spec = tiny("llama", hidden=128, vocab=512)
    # short sequences: the peak is at the end of backward, where every gradient exists
    short = dict(batch_size=1, seq_len=8, layers="all", dtype="bfloat16")
    plain = estimate(spec, TrainConfig(**short), device="cpu")
    in_bwd = estimate(spec, TrainConfig(**short, optimizer_in_backward=True), device="cpu")
    assert plain.breakdown.gradients > 0 and in_bwd.breakdown.gradients < plain.breakdown.gradients
    assert in_bwd.peak_bytes < plain.peak_bytes
    # long sequences over a large vocabulary: the peak is the loss, which chunks shrink
    long = dict(batch_size=2, seq_len=256, layers="all", dtype="bfloat16")
    assert (
        estimate(spec, TrainConfig(**long, loss_chunks=8), device="cpu").peak_bytes
        < estimate(spec, TrainConfig(**long), device="cpu").peak_bytes
    )
    # checkpointed, the loss chunked: the peak is in the layers' backward, where the layer inputs not yet
    # reached are held unless offloaded
    deep = dict(batch_size=2, seq_len=256, layers="all", dtype="bfloat16", gradient_checkpointing=True, loss_chunks=8)
    kept = estimate(spec, TrainConfig(**deep), device="cpu").breakdown.activations
    moved = estimate(spec, TrainConfig(**deep, offload_activations=True), device="cpu").breakdown.activations
    assert moved < kept


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", ["nf4", "nf4-dq", "int8"])
@pytest.mark.parametrize("method", ["qlora", "static"])
def test_quantized_frozen_weights_exact_against_transformers_bitsandbytes_loading(tiny, tmp_path, arch, kind, method):
    """Truth: the model saved, loaded by transformers with BitsAndBytesConfig, prepared by peft's
    prepare_model_for_kbit_training, then trained (LoRA or the static set) on CPU. qwen2 and gpt2 have
    biases (cast back to the compute dtype by the first 4-bit forward), int8 keeps float32 row scales
    (moved into the module's state by its first forward)."""
    pytest.importorskip("bitsandbytes")
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    spec = tiny(arch, hidden=128, vocab=512)
    kw = (
        dict(lora_rank=8, layers="all", train_embeddings=False, train_head=False)
        if method == "qlora"
        else dict(layers=[2, 3])
    )
    cfg = TrainConfig(batch_size=2, seq_len=64, dtype="bfloat16", quantize=kind, **kw)
    predicted = estimate(spec, cfg, device="cpu").peak_bytes
    model = build_model(spec, dtype="bfloat16")
    path, _ = find_decoder_layers(model)
    model.save_pretrained(tmp_path)
    skip = ["lm_head"] + ([f"{path}.{i}" for i in cfg.layers] if method == "static" else [])
    if kind == "int8":
        qc = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    else:
        qc = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=kind == "nf4-dq",
            bnb_4bit_compute_dtype=torch.bfloat16,
            llm_int8_skip_modules=skip,
        )
    loaded = AutoModelForCausalLM.from_pretrained(
        tmp_path, quantization_config=qc, device_map="cpu", dtype=torch.bfloat16
    )
    loaded = prepare_model_for_kbit_training(loaded, use_gradient_checkpointing=False)
    measured = measure_training_peak(
        loaded, cfg.model_copy(update={"quantize": None}), make_batch(spec.vocab_size, 2, 64)
    )
    assert predicted == measured


@pytest.mark.parametrize(
    "kw, rule",
    [
        (dict(quantize="nf4", active_layers=2), "a sampled plan trains every layer"),
        (dict(quantize="nf4", layers="all"), "needs frozen linear weights"),
        (dict(quantize="nf4", layers=[1], dtype="float32", amp="bf16"), "computes in the model's dtype"),
        (dict(lora_targets=["q_proj"], layers="all"), "needs `lora_rank`"),
        (dict(loss_chunks=65, seq_len=64, layers="all"), "`loss_chunks <= seq_len`"),
        (dict(optimizer="lion", layers="all"), "`optimizer` must be one of"),
        (dict(offload_activations=True, layers="all"), "`offload_activations` needs `gradient_checkpointing`"),
    ],
)
def test_combinations_that_cannot_run_are_refused_with_the_rule(kw, rule):
    with pytest.raises(PlannerError, match=rule.replace("(", r"\(").replace("`", "`")):
        TrainConfig(**kw)


def test_unknown_lora_target_is_refused(tiny):
    with pytest.raises(PlannerError, match="must name linear modules of a decoder layer"):
        estimate(tiny("llama"), TrainConfig(lora_rank=4, layers="all", lora_targets=["w_qkv"]), device="cpu")


@pytest.mark.parametrize("lever", sorted(LEVERS))
def test_every_registered_lever_keeps_the_contract(lever):
    """Each lever declares its fields in the config, a flag for one of them, and says in every exporter what it does."""
    obj = LEVERS[lever]
    assert obj.fields and set(obj.fields) <= set(TrainConfig.model_fields)
    assert obj.flag is not None and obj.flag.field in obj.fields and obj.flag.name.startswith("--")
    on = {
        "checkpointing": dict(gradient_checkpointing=True),
        "optimizer": dict(optimizer="adamw8bit"),
        "optimizer_in_backward": dict(optimizer_in_backward=True),
        "loss_chunks": dict(loss_chunks=4),
        "lora_targets": dict(lora_rank=8, lora_targets=["q_proj"]),
        "quantize": dict(quantize="nf4", lora_rank=8),
        "offload_activations": dict(offload_activations=True, gradient_checkpointing=True),
        "liger_fused_ce": dict(liger_fused_ce=True),
        "padded_batches": dict(padded_batches=True),
    }
    # what every trainer does by default: nothing to set when on (padded batches: tests/test_lever_padded.py)
    trainers_default = {("checkpointing", "llamafactory")} | {
        ("padded_batches", t) for t in ("hf", "axolotl", "llamafactory", "lmflow", "swift")
    }
    cfg = TrainConfig(layers="all", **on[lever])
    assert obj.active(cfg) and obj.label(cfg)
    for target in ("hf", "axolotl", "llamafactory", "lmflow", "swift"):
        items = obj.export(target, cfg)
        assert bool(items.keys or items.lost) != ((lever, target) in trainers_default), (lever, target)


def test_levers_are_ordered_model_changes_first():
    names = [lever.name for lever in all_levers()]
    assert names.index("checkpointing") < names.index("quantize") < names.index("lora_targets")


@pytest.mark.parametrize("kind", ["nf4", "nf4-dq", "int8"])
def test_quantized_trace_under_fake_tensors_matches_the_real_one(tiny, kind, monkeypatch):
    """Large models trace under FakeTensorMode, where bitsandbytes' parameter classes cannot wrap fake tensors:
    the stand-in layout must give the same bytes as the real quantization (each estimate traces anew: the
    in-process trace cache does not tell fake traces from real ones)."""
    pytest.importorskip("bitsandbytes")
    from planner.cost import family

    spec = tiny("qwen2", hidden=128, vocab=512)

    def traced(cfg, fake):
        monkeypatch.setattr(family, "_traces", {})
        return estimate(spec, cfg, device="cpu", fake=fake)

    for kw in (dict(lora_rank=8, layers="all", train_embeddings=False, train_head=False), dict(layers=[2, 3])):
        cfg = TrainConfig(batch_size=2, seq_len=64, dtype="bfloat16", quantize=kind, **kw)
        fake, real = traced(cfg, True), traced(cfg, False)
        assert fake.peak_bytes == real.peak_bytes and fake.breakdown == real.breakdown


def test_the_proxy_of_a_4bit_baseline_trains_through_the_nf4_round_trip(tiny):
    """The QLoRA baseline's proxy keeps float weights that carry the quantization error: every block of 64 weights of
    a frozen linear takes at most 16 values (the NF4 code book scaled by the block's absmax)."""
    pytest.importorskip("bitsandbytes")
    from planner.levers import LEVERS

    model = build_model(tiny("llama", hidden=128, vocab=512))
    before = model.model.layers[1].mlp.down_proj.weight.detach().clone()
    LEVERS["quantize"].proxy_model(model, {"quantize": "nf4"})
    after = model.model.layers[1].mlp.down_proj.weight.detach()
    blocks = after.reshape(-1, 64)
    assert max(len(torch.unique(b)) for b in blocks) <= 16 < len(torch.unique(before.reshape(-1, 64)[0]))
    assert not torch.equal(before, after) and torch.allclose(before, after, atol=before.abs().max().item() / 4)
    # a static set: only the layers below it (never trained) carry the error
    static = build_model(tiny("llama", hidden=128, vocab=512))
    LEVERS["quantize"].proxy_model(static, {"quantize": "nf4"}, frozen_below=1)
    assert torch.equal(static.model.layers[0].mlp.down_proj.weight, model.model.layers[0].mlp.down_proj.weight)
    assert torch.equal(static.model.layers[1].mlp.down_proj.weight, before)
    untouched = build_model(tiny("llama", hidden=128, vocab=512))
    LEVERS["quantize"].proxy_model(untouched, {})
    assert torch.equal(
        untouched.model.layers[1].mlp.down_proj.weight,
        build_model(tiny("llama", hidden=128, vocab=512)).model.layers[1].mlp.down_proj.weight,
    )


def test_every_exporter_carries_the_levers_or_says_what_is_lost(tmp_path):
    """A QLoRA plan with the step in backward and a chunked loss, exported to every registered trainer: the 4-bit
    keys where the trainer has them (by meaning), a lost line for each lever it cannot express."""
    import yaml
    from plan_factory import make_plan

    from planner.export import EXPORTERS, export_plan

    train = TrainConfig(
        layers="all",
        batch_size=2,
        seq_len=16,
        lora_rank=4,
        quantize="nf4-dq",
        optimizer_in_backward=True,
        loss_chunks=4,
        train_embeddings=False,
        train_head=False,
        dtype="bfloat16",
    )
    plan = make_plan(
        layers=[0, 1, 2, 3],
        active_layers=4,
        scorer="fixed",
        scorer_options={},
        lora_rank=4,
        train=train,
        train_embeddings=False,
        train_head=False,
        period=2,
        learning_rate=1e-3,
    )
    path = plan.save(tmp_path / "plan.yaml")
    for target in sorted(EXPORTERS):
        out = export_plan(path, target, tmp_path / target)
        text = "\n".join(p.read_text() for p in out.written)
        lost = "\n".join(out.lost)
        if target == "planner":
            continue
        for lever in ("step in backward", "chunked cross-entropy"):
            assert lever in lost, (target, lever)
        if target in ("axolotl", "llamafactory"):  # their own LoRA over a 4-bit base (QLoRA), double quantization on
            cfg = yaml.safe_load((tmp_path / target / f"{target}.yaml").read_text())
            if target == "axolotl":
                assert (cfg["adapter"], cfg["load_in_4bit"], cfg["lora_r"]) == (
                    "qlora",
                    True,
                    4,
                ) and "bnb_config_kwargs" not in cfg
            else:
                assert (cfg["finetuning_type"], cfg["quantization_bit"], cfg["double_quantization"]) == (
                    "lora",
                    4,
                    True,
                )
            assert "quantized frozen weights" not in lost, target
        elif target == "swift":
            assert "--quant_bits 4" in text and "--bnb_4bit_use_double_quant True" in text
            assert "quantized frozen weights" not in lost
        elif target == "hf":
            assert "'load_in_4bit': True" in text
        else:  # a trainer without 4-bit loading says so
            assert "quantized frozen weights" in lost, target
