"""What each target writes for representative plans, and that the trainers' own rules accept it."""

import json
import re
import shlex

import pytest
import yaml

from planner.config import TrainConfig
from planner.export import export_plan, get_exporter
from planner.export.targets.llamafactory import freeze_block
from plan_factory import make_plan
from planner.plan import Plan
from planner.spec import build_model
from planner.spec.tiny import tiny_spec


def gpt2_plan(**kw) -> Plan:
    return make_plan(model="gpt2", model_type="gpt2", num_layers=12, layers_attribute="transformer.h", **kw)


def render(target, plan):
    result = get_exporter(target).render(plan)
    (name, text), *_ = result.files.items()
    return result, name, text


# --- planner -----------------------------------------------------------------------------------

def test_planner_target_round_trips_byte_identical(tmp_path):
    src = make_plan(scorer="ist", scorer_options={"rollouts": 3}, metric=0.5, study_name="s").save(tmp_path / "plan.yaml")
    res = export_plan(src, "planner", tmp_path / "out")
    out = res.written[0]
    assert out.read_bytes() == src.read_bytes()
    assert Plan.load(out) == Plan.load(src)
    assert res.lost == []


# --- axolotl -----------------------------------------------------------------------------------

def axolotl_match(pattern: str, name: str) -> bool:
    """axolotl's freeze_layers_except rule: a '.' not followed by '+' is a literal dot; re.match."""
    return re.match(re.sub(r"\.(?!\+)", "\\\\.", pattern), name) is not None


def test_axolotl_lisa_keys_for_a_uniform_plan():
    result, _, text = render("axolotl", make_plan())
    cfg = yaml.safe_load(text)
    assert (cfg["lisa_n_layers"], cfg["lisa_step_interval"], cfg["lisa_layers_attribute"]) == (2, 5, "model.layers")
    assert cfg["learning_rate"] == 1e-4 and cfg["optimizer"] == "adamw_torch"
    assert "unfrozen_parameters" not in cfg  # LISA leaves everything outside the layers trainable, as the plan wants
    assert result.lost == []


def test_axolotl_path_is_the_detected_one_for_gpt2():
    cfg = yaml.safe_load(render("axolotl", gpt2_plan())[2])
    assert cfg["lisa_layers_attribute"] == "transformer.h"
    assert cfg["base_model"] == "openai-community/gpt2"  # the preset's hub id, not the preset name


@pytest.mark.parametrize("emb,head", [(False, False), (True, False), (False, True)])
def test_axolotl_unfrozen_parameters_select_exactly_the_plan(emb, head):
    plan = make_plan(train_embeddings=emb, train_head=head)
    cfg = yaml.safe_load(render("axolotl", plan)[2])
    model = build_model(tiny_spec("llama", num_layers=4))
    trained = {n for n, _ in model.named_parameters() if any(axolotl_match(p, n) for p in cfg["unfrozen_parameters"])}
    for name, _ in model.named_parameters():
        in_layers = name.startswith("model.layers.")
        expect = in_layers or (emb and "embed_tokens" in name) or (head and ("lm_head" in name or name == "model.norm.weight"))
        assert (name in trained) == expect, name


def test_axolotl_static_plan_unfreezes_only_its_layers():
    plan = make_plan(scorer="fixed", layers=[1, 3], train=TrainConfig(layers=[1, 3]), train_embeddings=False, train_head=False)
    result, _, text = render("axolotl", plan)
    cfg = yaml.safe_load(text)
    assert "lisa_n_layers" not in cfg and result.lost == []
    model = build_model(tiny_spec("llama", num_layers=4))
    trained = {n.split(".")[2] for n, _ in model.named_parameters() if any(axolotl_match(p, n) for p in cfg["unfrozen_parameters"])}
    assert trained == {"1", "3"}


def test_axolotl_ist_scorer_becomes_uniform_and_says_so():
    result, _, _ = render("axolotl", make_plan(scorer="ist", train=TrainConfig(active_layers=2, min_depth=1)))
    assert any("'ist'" in line and "uniform" in line for line in result.lost)
    assert any("min_depth=1" in line for line in result.lost)


# --- lmflow ------------------------------------------------------------------------------------

def lmflow_args(text: str) -> dict:
    toks = shlex.split(text, comments=True)
    return {t[2:]: toks[i + 1] for i, t in enumerate(toks) if t.startswith("--")}


@pytest.mark.parametrize("plan,path", [(make_plan(), "model.model.layers"), (gpt2_plan(), "model.transformer.h")])
def test_lmflow_path_is_one_level_below_the_wrapper(plan, path):
    args = lmflow_args(render("lmflow", plan)[2])
    assert args["lisa_layers_attribute"] == path
    assert (args["use_lisa"], args["lisa_activated_layers"], args["lisa_interval_steps"]) == ("1", "2", "5")
    assert float(args["learning_rate"]) == 1e-4


def test_lmflow_script_is_valid_bash(tmp_path):
    import shutil
    import subprocess

    if shutil.which("bash") is None:
        pytest.skip("no bash")
    path = tmp_path / "s.sh"
    path.write_text(render("lmflow", make_plan())[2])
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0


def test_lmflow_frozen_embeddings_are_reported_lost():
    result, _, _ = render("lmflow", make_plan(train_embeddings=False))
    assert any("embeddings" in line and "LMFlow" in line for line in result.lost)


# --- llamafactory ------------------------------------------------------------------------------

@pytest.mark.parametrize("layers,expect", [([2, 3], (2, [2, 3])), ([0, 1], (-2, [0, 1])), ([3], (1, [3])),
                                           ([1, 3], (2, [2, 3])), ([0, 2], (-2, [0, 1]))])
def test_freeze_block(layers, expect):
    assert freeze_block(4, layers) == expect


def llamafactory_non_hidden(model) -> set[str]:
    """LLaMA-Factory's _setup_freeze_tuning: leaf names of parameters outside numbered layers."""
    return {n.split(".")[-2] for n, _ in model.named_parameters() if re.search(r"\.\d+\.", n) is None}


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_llamafactory_freeze_extra_modules_exist_in_the_model(arch, tmp_path):
    spec = tiny_spec(arch, num_layers=4)  # qwen2's tiny config ties embeddings: no separate lm_head parameter
    spec.config.to_json_file(tmp_path / "config.json")
    plan = make_plan(model=str(tmp_path / "config.json"), model_type=arch, layers_attribute="transformer.h" if arch == "gpt2" else "model.layers",
                     scorer="fixed", layers=[2, 3], train=TrainConfig(layers=[2, 3]))
    result, _, text = render("llamafactory", plan)
    cfg = yaml.safe_load(text)
    assert cfg["finetuning_type"] == "freeze" and cfg["freeze_trainable_layers"] == 2
    extra = cfg["freeze_extra_modules"].split(",")
    assert set(extra) <= llamafactory_non_hidden(build_model(spec))
    assert result.lost == []


def test_llamafactory_badam_for_a_cyclic_plan_is_exact():
    plan = gpt2_plan(active_layers=1, scorer="cyclic", scorer_options={"order": "descending", "start_block": 3},
                     train=TrainConfig(active_layers=1), train_embeddings=False, train_head=False)
    result, _, text = render("llamafactory", plan)
    cfg = yaml.safe_load(text)
    assert cfg["finetuning_type"] == "full" and cfg["use_badam"] is True and cfg["badam_mode"] == "layer"
    assert (cfg["badam_switch_mode"], cfg["badam_switch_interval"], cfg["badam_start_block"]) == ("descending", 5, 3)
    assert result.lost == []


def test_llamafactory_lisa_plan_lists_every_loss():
    result, _, text = render("llamafactory", make_plan(lora_rank=8))
    assert yaml.safe_load(text)["badam_switch_mode"] == "random"
    joined = "\n".join(result.lost)
    for needle in ("uniform", "active_layers=2", "embeddings and head", "LoRA"):
        assert needle in joined


# --- peft --------------------------------------------------------------------------------------

def test_peft_config_loads_and_transforms_only_the_plan_layers(tmp_path):
    from peft import LoraConfig, get_peft_model

    plan = make_plan(scorer="fixed", layers=[1, 3], train=TrainConfig(layers=[1, 3]), lora_rank=4, train_embeddings=False, train_head=False)
    res = export_plan(plan.save(tmp_path / "p.yaml"), "peft", tmp_path / "out")
    assert res.lost == []
    config = LoraConfig.from_pretrained(str(tmp_path / "out"))
    assert config.layers_to_transform == [1, 3] and config.r == 4 and config.layers_pattern == "layers"
    model = get_peft_model(build_model(tiny_spec("llama", num_layers=4)), config)
    adapted = {n.split(".")[4] for n, _ in model.named_parameters() if "lora_" in n}
    assert adapted == {"1", "3"}


def test_peft_gpt2_pattern_and_modules():
    data = json.loads(render("peft", gpt2_plan(scorer="fixed", layers=[10, 11], train=TrainConfig(layers=[10, 11])))[2])
    assert data["layers_pattern"] == "h" and set(data["target_modules"]) == {"c_attn", "c_proj", "c_fc"}


def test_peft_dynamic_plan_is_lossy():
    result, _, text = render("peft", make_plan(train=TrainConfig(active_layers=2, min_depth=1)))
    assert json.loads(text)["layers_to_transform"] == [1, 2, 3]
    assert any("dynamic" in line for line in result.lost)


# --- hf ----------------------------------------------------------------------------------------

def test_hf_static_plan_uses_the_fixed_scorer():
    from planner.export.targets.hf import script_plan

    sp = script_plan(make_plan(scorer="semantic", layers=[2, 3], train=TrainConfig(layers=[2, 3])))
    assert (sp["scorer"], sp["scorer_options"], sp["gamma"]) == ("fixed", {"layers": [2, 3]}, 2)


def test_hf_refuses_a_scorer_the_runtime_does_not_know():
    from planner.errors import PlannerError

    with pytest.raises(PlannerError, match="must be one of"):
        get_exporter("hf").render(make_plan(scorer="nonesuch"))
    with pytest.raises(PlannerError, match="unknown"):
        get_exporter("hf").render(make_plan(scorer="cyclic", scorer_options={"orderr": "ascending"}))


@pytest.mark.parametrize("options,layers", [({}, [2, 3]), ({"top": 3}, [1, 2, 3]), ({"layers": [0, 3]}, [0, 3])])
def test_fixed_scorer_without_plan_layers_is_static(options, layers):
    """`planner tune` writes layers=None; the fixed scorer's options (default: top γ) still fix the set."""
    plan = make_plan(scorer="fixed", scorer_options=options)
    cfg = yaml.safe_load(render("axolotl", plan)[2])
    assert "lisa_n_layers" not in cfg
    assert cfg["unfrozen_parameters"][0] == f"^model.layers.({'|'.join(map(str, layers))})."
    from planner.export.targets.hf import script_plan

    assert script_plan(plan)["scorer_options"] == {"layers": layers}
    assert json.loads(render("peft", plan)[2])["layers_to_transform"] == layers


def test_unknown_model_type_is_a_one_line_error():
    from planner.errors import PlannerError

    with pytest.raises(PlannerError, match="model_type must be a causal LM"):
        get_exporter("peft").render(make_plan(model_type="nonesuch"))


def test_layers_attribute_must_match_the_model():
    from planner.errors import PlannerError

    with pytest.raises(PlannerError, match="'transformer.h'"):
        get_exporter("peft").render(make_plan(layers_attribute="transformer.h"))
