"""`planner estimate`: JSON contract, candidate-plan table, budget fitting, profiles, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from planner.cli.main import main
from planner.config import TrainConfig
from planner.cost import estimate
from planner.cost.device import DeviceProfile, default_profile
from planner.cost.plans import candidate_plans, largest_fitting_active_layers, smallest_fitting
from planner.plan import BREAKDOWN_KEYS
from planner.spec import load_spec
from planner.units import GiB, MiB

PLANNER = str(Path(sys.executable).with_name("planner"))


@pytest.fixture(scope="module")
def model_json(tmp_path_factory):
    """A 4-layer llama config.json (the CLI resolves it like any user file)."""
    from planner.spec.tiny import tiny_spec

    path = tmp_path_factory.mktemp("model") / "config.json"
    path.write_text(json.dumps(tiny_spec("llama", num_layers=4, vocab=512).config.to_dict()))
    return str(path)


@pytest.fixture(autouse=True)
def _empty_profile_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PLANNER_PROFILE_DIR", str(tmp_path / "profiles"))


def run_json(capsys, *argv):
    code = main(["estimate", *argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def check_contract(obj):
    assert isinstance(obj["peak_bytes"], int) and obj["peak_bytes"] > 0
    assert set(obj["breakdown"]) == set(BREAKDOWN_KEYS)
    assert all(isinstance(v, int) and v >= 0 for v in obj["breakdown"].values())
    assert sum(obj["breakdown"].values()) == obj["peak_bytes"]


# ----------------------------------------------------------------------------------- one configuration


def test_single_config_json_contract_matches_library(capsys, model_json):
    code, out = run_json(capsys, "--model", model_json, "--layers", "0,2", "--seq-len", "64", "--device", "cpu")
    assert code == 0
    check_contract(out)
    cfg = TrainConfig(layers=[0, 2], seq_len=64)
    expected = estimate(load_spec(model_json), cfg, device="cpu")
    assert out["peak_bytes"] == expected.peak_bytes
    assert out["breakdown"] == expected.breakdown.model_dump()
    assert out["config"]["layers"] == [0, 2] and "fits" not in out


def test_fits_and_does_not_fit_exit_codes(capsys, model_json):
    args = ["--model", model_json, "--layers", "all", "--seq-len", "64", "--device", "cpu"]
    _, out = run_json(capsys, *args)
    peak = out["peak_bytes"]
    code, out = run_json(capsys, *args, "--vram", f"{peak}B")
    assert (code, out["fits"], out["vram_bytes"]) == (0, True, peak)
    code, out = run_json(capsys, *args, "--vram", f"{peak - 1}B")
    assert (code, out["fits"]) == (1, False)
    code = main(["estimate", *args, "--vram", f"{peak - 1}B"])
    text = capsys.readouterr().out
    assert code == 1 and "does not fit" in text and f"{peak:,} bytes" in text


@pytest.mark.parametrize(
    "size,expected", [("24GB", 24 * 10**9), ("24GiB", 24 * GiB), ("24000MiB", 24000 * MiB), ("24G", 24 * GiB)]
)
def test_vram_units(capsys, model_json, size, expected):
    code, out = run_json(
        capsys, "--model", model_json, "--layers", "0", "--seq-len", "32", "--device", "cpu", "--vram", size
    )
    assert out["vram_bytes"] == expected and out["fits"] is True and code == 0


def test_human_output_prints_breakdown_and_budget(capsys, model_json):
    code = main(
        [
            "estimate",
            "--model",
            model_json,
            "--active-layers",
            "2",
            "--seq-len",
            "32",
            "--device",
            "cpu",
            "--vram",
            "24GB",
        ]
    )
    text = capsys.readouterr().out
    assert code == 0
    for word in (*BREAKDOWN_KEYS, "peak", "24,000,000,000 bytes", "fits", "worst case"):
        assert word in text


def test_trainable_set_flags_change_the_estimate(capsys, model_json):
    base = ["--model", model_json, "--layers", "1", "--seq-len", "32", "--device", "cpu"]
    _, on = run_json(capsys, *base)
    _, off = run_json(capsys, *base, "--no-train-embeddings", "--no-train-head")
    assert off["breakdown"]["gradients"] < on["breakdown"]["gradients"]
    assert off["breakdown"]["optimizer"] < on["breakdown"]["optimizer"]
    _, lora = run_json(capsys, *base, "--lora-rank", "4", "--no-train-embeddings", "--no-train-head")
    assert lora["config"]["lora_rank"] == 4
    # the adapters add weights; their optimizer state is far below the full layer's
    assert lora["breakdown"]["weights"] > off["breakdown"]["weights"]
    assert lora["breakdown"]["optimizer"] < off["breakdown"]["optimizer"] / 4
    expected = estimate(
        load_spec(model_json),
        TrainConfig(layers=[1], seq_len=32, lora_rank=4, train_embeddings=False, train_head=False),
        device="cpu",
    )
    assert lora["peak_bytes"] == expected.peak_bytes


def test_padded_batches_from_the_command_line_are_what_a_padded_training_step_measures(capsys, model_json, monkeypatch):
    """`--padded-batches` on a grouped-query model: the masked step's peak, measured by training it with a real
    padded batch (a shorter second row, its own attention mask), not with the lever's mask."""
    import torch

    from planner.cost import measure_training_peak
    from planner.cost import measure as measure_mod
    from planner.cost.measure import make_batch
    from planner.spec import build_model

    base = ["--model", model_json, "--layers", "1,2", "--batch-size", "2", "--seq-len", "64", "--device", "cpu"]
    _, plain = run_json(capsys, *base)
    _, padded = run_json(capsys, *base, "--padded-batches")
    assert padded["config"]["padded_batches"] is True
    spec = load_spec(model_json)
    batch = make_batch(spec.vocab_size, 2, 64)
    batch["attention_mask"] = torch.ones(2, 64, dtype=torch.long)
    batch["attention_mask"][1, 40:] = 0  # the second row is 40 tokens long
    batch["labels"] = batch["labels"].masked_fill(batch["attention_mask"] == 0, -100)

    def loss_with_mask(model, b, cfg=None):
        return model(
            input_ids=b["input_ids"], labels=b["labels"], attention_mask=b["attention_mask"], use_cache=False
        ).loss

    monkeypatch.setattr(measure_mod, "compute_loss", loss_with_mask)  # the step as a trainer runs a padded batch
    truth = measure_training_peak(build_model(spec), TrainConfig(layers=[1, 2], batch_size=2, seq_len=64), batch)
    assert padded["peak_bytes"] == truth > plain["peak_bytes"]


# ----------------------------------------------------------------------------------- the table


@pytest.fixture(scope="module")
def table(model_json):
    spec = load_spec(model_json)
    cfg = TrainConfig(seq_len=64)
    return spec, cfg, candidate_plans(spec, cfg, "cpu", default_profile("cpu"))


def test_table_rows_and_monotone_active_layers(table):
    spec, cfg, cands = table
    names = [c.name for c in cands]
    assert names[:4] == ["full", "lora r=8", "lora r=16", "lora r=64"]
    for trained in (True, False):
        rows = [c for c in cands if c.method == "layerwise" and c.config.train_embeddings == trained]
        assert all(c.config.train_head == trained for c in rows)
        assert [c.active_layers for c in rows] == list(range(1, spec.num_layers + 1))
        peaks = [c.peak_bytes for c in rows]
        assert peaks == sorted(peaks) and peaks[0] < peaks[-1]
    # each row is exactly the estimate of its own configuration
    for c in cands[::3]:
        assert c.peak_bytes == estimate(spec, c.config, device="cpu").peak_bytes
        assert sum(c.estimate.breakdown.model_dump().values()) == c.peak_bytes
    full = cands[0]
    assert full.peak_bytes >= max(c.peak_bytes for c in cands if c.method == "layerwise")
    lora = [c.peak_bytes for c in cands[1:4]]
    assert lora == sorted(lora) and lora[0] < full.peak_bytes  # r=64 on a 64-wide model may exceed full


def test_table_adds_the_recipes_users_run_each_named_with_its_levers(table):
    spec, cfg, cands = table
    recipes = {c.name: c for c in cands[4:] if c.method != "layerwise"}
    assert list(recipes) == [
        "lora r=8 (checkpointing)",
        "lora r=16 (checkpointing)",
        "lora r=64 (checkpointing)",
        "qlora r=16 (checkpointing, NF4 + double quant)",
        "full, torchtune (paged_adamw8bit, checkpointing, step in backward, loss in 8 chunks)",
    ]
    qlora = recipes["qlora r=16 (checkpointing, NF4 + double quant)"].config
    assert qlora.quantize == "nf4-dq" and qlora.lora_rank == 16 and qlora.gradient_checkpointing
    tt = recipes["full, torchtune (paged_adamw8bit, checkpointing, step in backward, loss in 8 chunks)"]
    assert tt.config.layers == "all" and tt.config.optimizer_in_backward and tt.config.loss_chunks == 8
    # each recipe saves against its plain form (the saving itself is measured in reports/bench_levers.txt)
    assert tt.peak_bytes < cands[0].peak_bytes
    assert recipes["lora r=16 (checkpointing)"].peak_bytes <= cands[2].peak_bytes


def test_largest_fitting_active_layers_and_smallest(table):
    spec, cfg, cands = table
    eh = {c.active_layers: c for c in cands if c.method == "layerwise" and c.config.train_embeddings}
    for active_layers in (1, 2, 3):
        budget = (eh[active_layers].peak_bytes + eh[active_layers + 1].peak_bytes) // 2  # between γ and γ+1
        best = largest_fitting_active_layers(cands, budget, train_embeddings=True, train_head=True)
        assert best.active_layers == active_layers  # the peaks grow with γ (test above)
        assert best.config.train_embeddings and best.peak_bytes <= budget
    assert largest_fitting_active_layers(cands, eh[1].peak_bytes - 1, train_embeddings=True, train_head=True) is None
    assert largest_fitting_active_layers(cands, 10**15).active_layers == spec.num_layers
    cheapest = smallest_fitting(cands)
    assert cheapest.peak_bytes == min(c.peak_bytes for c in cands)


def test_table_cli_json(capsys, model_json, table):
    spec, cfg, cands = table
    eh = {c.active_layers: c for c in cands if c.method == "layerwise" and c.config.train_embeddings}
    budget = eh[3].peak_bytes  # exactly the γ=3 peak: γ=3 fits, γ=4 does not (the peaks grow with γ)
    code, out = run_json(capsys, "--model", model_json, "--seq-len", "64", "--device", "cpu", "--vram", f"{budget}B")
    assert code == 0 and out["vram_bytes"] == budget
    assert len(out["plans"]) == len(cands)
    for plan, cand in zip(out["plans"], cands):
        check_contract(plan)
        assert plan["name"] == cand.name and plan["peak_bytes"] == cand.peak_bytes
        assert plan["fits"] == (cand.peak_bytes <= budget)
    assert out["largest_fitting_active_layers"]["E+H"] == 3
    frozen = {c.active_layers: c.peak_bytes for c in cands if c.method == "layerwise" and not c.config.train_embeddings}
    best_frozen = out["largest_fitting_active_layers"]["frozen E+H"]
    assert frozen[best_frozen] <= budget and (best_frozen == spec.num_layers or frozen[best_frozen + 1] > budget)
    assert best_frozen >= 3  # frozen embeddings and head never cost more than trained ones at the same γ


def test_table_cli_human(capsys, model_json):
    code = main(["estimate", "--model", model_json, "--seq-len", "64", "--device", "cpu", "--vram", "24GB"])
    text = capsys.readouterr().out
    assert code == 0
    for row in (
        "full",
        "lora r=8",
        "lora r=16",
        "lora r=64",
        "layer-wise γ=1 E+H",
        "layer-wise γ=4 frozen E+H",
        "largest γ that fits (E+H): 4",
        "largest γ that fits (frozen E+H): 4",
    ):
        assert row in text


def test_table_one_variant_when_flagged(capsys, model_json):
    _, out = run_json(
        capsys, "--model", model_json, "--seq-len", "32", "--device", "cpu", "--no-train-embeddings", "--no-train-head"
    )
    layerwise = [p for p in out["plans"] if p["method"] == "layerwise"]
    assert len(layerwise) == 4 and not any(p["train_embeddings"] or p["train_head"] for p in layerwise)


def test_no_plan_fits_names_smallest_budget(capsys, model_json, table):
    _, _, cands = table
    cheapest = smallest_fitting(cands)
    code = main(["estimate", "--model", model_json, "--seq-len", "64", "--device", "cpu", "--vram", "1KB"])
    text = capsys.readouterr().out
    assert code == 1
    assert f"smallest budget that fits is {cheapest.peak_bytes:,} bytes" in text and cheapest.name in text
    code, out = run_json(capsys, "--model", model_json, "--seq-len", "64", "--device", "cpu", "--vram", "1KB")
    assert code == 1 and out["smallest"] == {"name": cheapest.name, "peak_bytes": cheapest.peak_bytes}
    assert not any(p["fits"] for p in out["plans"])


# ----------------------------------------------------------------------------------- device profiles


def test_profile_json_changes_overhead(capsys, model_json, tmp_path):
    args = ["--model", model_json, "--layers", "0", "--seq-len", "32", "--device", "cuda"]
    code, default = run_json(capsys, *args)
    assert code == 0 and default["profile"].startswith("documented defaults")
    prof = DeviceProfile(
        device="cuda",
        device_name="Test GPU",
        torch_version="2.13.0",
        context_bytes=3 * GiB,
        workspace_bytes=64 * MiB,
        fragmentation=0.05,
    )
    path = prof.save(tmp_path / "gpu.json")
    code, custom = run_json(capsys, *args, "--profile", str(path))
    assert code == 0 and custom["profile"].startswith(str(path))
    check_contract(default)
    check_contract(custom)
    grown = custom["breakdown"]["overhead"] - default["breakdown"]["overhead"]
    assert grown == 3 * GiB - default_profile("cuda").context_bytes
    for key in ("weights", "gradients", "optimizer", "activations", "transient"):
        assert custom["breakdown"][key] == default["breakdown"][key]
    # cpu estimates have no device overhead
    _, cpu = run_json(capsys, "--model", model_json, "--layers", "0", "--seq-len", "32", "--device", "cpu")
    assert cpu["breakdown"]["overhead"] == 0


def test_matching_profile_is_found_in_profile_dir(capsys, model_json, tmp_path, monkeypatch):
    import planner.cost.profile as profile_mod

    monkeypatch.setattr(profile_mod, "local_device_name", lambda device: "Test GPU")
    d = tmp_path / "profiles"
    DeviceProfile(device="cuda", device_name="Other GPU", torch_version="2", context_bytes=1 * GiB).save(
        d / "other.json"
    )
    mine = DeviceProfile(device="cuda", device_name="Test GPU", torch_version="2", context_bytes=2 * GiB).save(
        d / "test-gpu.json"
    )
    (d / "junk.json").write_text("{not json")
    code, out = run_json(capsys, "--model", model_json, "--layers", "0", "--seq-len", "32")
    assert code == 0 and out["profile"] == f"{mine} (Test GPU)"


# ----------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--vram", "0"], "--vram must be > 0 bytes, but got '0'"),
        (["--vram=-24GB"], "--vram must be > 0 bytes"),
        (["--vram", "lots"], "--vram must be a number with a unit"),
        (["--layers", "0,9"], "layer indices must satisfy 0 <= i < 4, but got [9]"),
        (["--layers", "zero"], "--layers must be `all` or comma-separated"),
        (["--layers", "0", "--active-layers", "2"], "`layers` and `active_layers` are exclusive"),
        (["--amp", "bf16", "--dtype", "bfloat16"], "dtype='bfloat16' with amp='bf16'"),
        (["--min-depth", "2"], "--min-depth bounds a sampler's draws and needs --active-layers"),
        (["--active-layers", "3", "--min-depth", "2"], "`active_layers <= num_layers - min_depth`"),
        (["--lora-rank", "0"], "--lora-rank input should be greater than or equal to 1, but got '0'"),
        (["--batch-size", "0"], "--batch-size input should be greater than or equal to 1"),
        (["--dtype", "int8"], "--dtype input should be 'float32', 'bfloat16' or 'float16'"),
        (["--optimizer", "lion"], "`optimizer` must be one of adamw, sgd, adamw8bit, paged_adamw8bit, but got 'lion'"),
        (["--quantize", "nf4", "--active-layers", "2"], "but got quantize='nf4' with active_layers=2"),
        (["--quantize", "nf4", "--layers", "all"], "`quantize` needs frozen linear weights"),
        (["--quantize", "fp8", "--layers", "1"], "--quantize input should be 'nf4', 'nf4-dq' or 'int8'"),
        (["--lora-targets", "q_proj", "--layers", "1"], "needs `lora_rank`"),
        (
            ["--loss-chunks", "9999", "--layers", "1", "--seq-len", "64"],
            "`loss_chunks <= seq_len` must hold, but got loss_chunks=9999 with seq_len=64",
        ),
        (["--device", "tpu"], "--device must be cuda or cpu, but got 'tpu'"),
        (["--profile", "/nonexistent/p.json"], "--profile must be an existing device profile JSON"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, model_json, extra, needle):
    code = main(
        ["estimate", "--model", model_json, "--device", "cpu", *extra]
        if "--device" not in extra
        else ["estimate", "--model", model_json, *extra]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("planner estimate: error: ")
    assert needle in err


def test_unknown_model_and_bad_profile_file(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"device": "cuda"}')
    code = main(["estimate", "--model", "no-such-model", "--profile", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and "--model must be a preset" in err and "'no-such-model'" in err
    assert "--profile must be a device profile JSON" in err
    cpu = DeviceProfile(device="cpu", device_name="cpu", torch_version="2").save(tmp_path / "cpu.json")
    code = main(["estimate", "--model", "gpt2", "--layers", "0", "--profile", str(cpu)])
    assert code == 2 and "--profile must be measured on --device cuda" in capsys.readouterr().err


def test_several_problems_reported_at_once_by_the_installed_command(model_json):
    proc = subprocess.run(
        [
            PLANNER,
            "estimate",
            "--model",
            model_json,
            "--vram",
            "0",
            "--lora-rank",
            "0",
            "--layers",
            "0,7",
            "--min-depth",
            "1",
        ],
        # a hang guard
        capture_output=True,
        text=True,
        env={**os.environ, "PLANNER_PROFILE_DIR": "/nonexistent"},
        timeout=1200,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    for needle in ("--vram must be > 0 bytes", "--lora-rank", "but got [7]", "--min-depth"):
        assert needle in proc.stderr
    assert proc.stdout == ""
