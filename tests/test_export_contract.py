"""Contract over every registered exporter: outputs parse, keys are the target's documented names."""

import ast
import dataclasses
import json
import shlex

import pytest
import yaml

from planner.config import TrainConfig
from planner.export import EXPORTERS, Export, get_exporter
from plan_factory import make_plan

# the names METHODS.md ("Trainer config keys") documents for each target
DOCUMENTED = {
    "lmflow": {"use_lisa", "lisa_activated_layers", "lisa_interval_steps", "lisa_layers_attribute"},
    "axolotl": {"lisa_n_layers", "lisa_step_interval", "lisa_layers_attribute"},
    "llamafactory": {"use_badam", "badam_mode", "badam_start_block", "badam_switch_mode", "badam_switch_interval",
                     "finetuning_type", "freeze_trainable_layers", "freeze_trainable_modules"},
    "peft": {"layers_to_transform", "layers_pattern"},
}


PLANS = {
    "lisa": make_plan(),
    "ist-frozen-eh": make_plan(scorer="ist", train=TrainConfig(active_layers=2, min_depth=1), train_embeddings=False, train_head=False),
    "static-top": make_plan(scorer="fixed", layers=[2, 3], train=TrainConfig(layers=[2, 3])),
    "static-scattered-lora": make_plan(scorer="semantic", layers=[0, 2], train=TrainConfig(layers=[0, 2]), lora_rank=4, train_head=False),
    "badam-gpt2": make_plan(model="gpt2", model_type="gpt2", num_layers=12, layers_attribute="transformer.h", active_layers=1,
                            scorer="cyclic", scorer_options={"order": "descending"}, train=TrainConfig(active_layers=1),
                            train_embeddings=False, train_head=False),
    "bf16-amp": make_plan(train=TrainConfig(active_layers=2, amp="bf16", gradient_checkpointing=True, optimizer="sgd")),
}


def test_registry_has_every_target():
    assert {"planner", "hf", "axolotl", "lmflow", "llamafactory", "peft"} <= set(EXPORTERS)
    for name, cls in EXPORTERS.items():
        assert cls.name == name and cls.description


def test_unknown_target_lists_the_known_ones():
    from planner.errors import PlannerError

    with pytest.raises(PlannerError) as err:
        get_exporter("deepspeed")
    for name in EXPORTERS:
        assert name in str(err.value)


def _parse(filename: str, text: str):
    """Parse by file kind, independently of the exporter's own keys()."""
    if filename.endswith((".yaml", ".yml")):
        return yaml.safe_load(text)
    if filename.endswith(".json"):
        return json.loads(text)
    if filename.endswith(".py"):
        return ast.parse(text)
    if filename.endswith(".sh"):
        return shlex.split(text, comments=True)
    raise AssertionError(f"no parser for {filename}")


@pytest.mark.parametrize("target", sorted(EXPORTERS))
@pytest.mark.parametrize("plan_name", sorted(PLANS))
def test_every_output_parses_and_uses_only_allowed_keys(target, plan_name):
    exporter = get_exporter(target)
    result = exporter.render(PLANS[plan_name])
    assert isinstance(result, Export) and result.files
    assert all(isinstance(line, str) and line and "\n" not in line for line in result.lost)
    used = set()
    for filename, text in result.files.items():
        _parse(filename, text)
        used |= exporter.keys(filename, text)
    assert used, f"{target} wrote no config keys"
    assert used <= exporter.allowed_keys, f"{target} wrote undocumented keys {sorted(used - exporter.allowed_keys)}"


@pytest.mark.parametrize("target", sorted(DOCUMENTED))
def test_allowed_keys_hold_the_documented_names(target):
    assert DOCUMENTED[target] <= get_exporter(target).allowed_keys


def test_hf_training_args_are_real_training_arguments_fields():
    from transformers import TrainingArguments

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    for plan in PLANS.values():
        files = get_exporter("hf").render(plan).files
        args = json.loads(files["training_args.json"])
        assert set(args) <= fields
        TrainingArguments(**{**args, "output_dir": "unused", "use_cpu": True})  # constructs: values are valid too


def test_peft_keys_are_lora_config_fields():
    from peft import LoraConfig

    fields = {f.name for f in dataclasses.fields(LoraConfig)}
    for plan in PLANS.values():
        data = json.loads(get_exporter("peft").render(plan).files["adapter_config.json"])
        assert set(data) <= fields
        LoraConfig(**{k: v for k, v in data.items() if k not in ("peft_type", "peft_version", "auto_mapping")})


def test_training_arguments_subsets_of_lmflow_and_llamafactory_are_real_fields():
    from transformers import TrainingArguments

    from planner.export.targets import llamafactory, lmflow

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    assert lmflow.TRAINING_ARGS <= fields and lmflow.TRAINING_ARGS <= lmflow.LMFLOW_ARGS
    assert llamafactory.TRAINING_ARGS <= fields and llamafactory.TRAINING_ARGS <= get_exporter("llamafactory").allowed_keys
