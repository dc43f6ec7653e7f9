"""Contract over every registered exporter: each export, applied the way its trainer applies it,
trains exactly what the plan trains, or the export says what it loses.

For every target and every plan kind (uniform, weighted, cyclic in both directions, static
top/bottom/arbitrary, LoRA static and dynamic, tied and untied embeddings, llama-style and
gpt2-style layer paths) the export runs on a tiny model with the trainer's own rule (see
``trainer_rules``) next to the plan run by planner's sampler. Differences are measured in two kinds, training (the
parameters trained at each step, how and when layers are drawn) and memory (optimizer state
beyond the plan's, weight copies), and the export's loss lines must name exactly those kinds:
no line, no difference.
"""

import dataclasses
import json
import shlex
from functools import lru_cache

import pytest
import yaml

from planner.config import TrainConfig
from planner.export import EXPORTERS, Export, get_exporter
from planner.plan import TrainingData
from planner.optimizers import OPTIMIZERS, get_optimizer
from plan_factory import make_plan
from trainer_fields import config_keys
from trainer_fields import load as load_trainer_fields
from trainer_rules import RUNNERS, differences, run_plan


def _static(layers, **kw):
    return dict(scorer="fixed", layers=layers, active_layers=len(layers), train=TrainConfig(layers=layers), **kw)


def _dynamic(active_layers, scorer="uniform", options=None, period=2, min_depth=0, **kw):
    return dict(
        scorer=scorer,
        scorer_options=options or {},
        active_layers=active_layers,
        period=period,
        train=TrainConfig(active_layers=active_layers, min_depth=min_depth, **kw.pop("train", {})),
        **kw,
    )


KINDS = {
    "uniform": _dynamic(2),
    "uniform-k1": _dynamic(2, period=1),
    "uniform-sgd-k1": _dynamic(2, period=1, train={"optimizer": "sgd"}),
    "uniform-min-depth": _dynamic(2, min_depth=1),
    "weighted": _dynamic(2, scorer="gradnorm"),
    "cyclic-ascending": _dynamic(1, "cyclic", {"order": "ascending"}, train_embeddings=False, train_head=False),
    "cyclic-descending-start": _dynamic(
        1, "cyclic", {"order": "descending", "start_block": 1}, period=1, train_embeddings=False, train_head=False
    ),
    "cyclic-random": _dynamic(1, "cyclic", {"order": "random"}, period=1, train_embeddings=False, train_head=False),
    "all-layers": _dynamic(4),
    "static-top": _static([2, 3]),
    "static-bottom-frozen": _static([0, 1], train_embeddings=False, train_head=False),
    "static-arbitrary": _static([0, 2], train_head=False),
    "static-head-only": _static([3], train_embeddings=False),
    "lora-static": _static([1, 3], lora_rank=4, train_embeddings=False),
    "lora-dynamic": _dynamic(2, lora_rank=4, train_head=False),
    # the tuner's LoRA baseline
    "lora-all-frozen": _static([0, 1, 2, 3], lora_rank=4, train_embeddings=False, train_head=False),
}
# llama: untied, model.layers; gpt2: tied, transformer.h; qwen2: tied, model.layers
ARCHS = {
    "llama": sorted(KINDS),
    "gpt2": [
        "uniform",
        "cyclic-descending-start",
        "static-top",
        "static-arbitrary",
        "static-head-only",
        "lora-static",
        "lora-dynamic",
        "lora-all-frozen",
    ],
    "qwen2": ["static-top", "static-head-only", "lora-static"],
}
PLANS = {f"{arch}-{kind}": (arch, kind) for arch, kinds in ARCHS.items() for kind in kinds}


DATA = TrainingData(path="/data/train.jsonl", format="jsonl", fields={"prompt": "instruction", "answer": "response"})


@lru_cache(maxsize=None)
def plan_of(name: str):
    """The plan, with the data and step count `planner tune` records."""
    arch, kind = PLANS[name]
    return make_plan(arch, data=DATA, steps=6, **KINDS[kind])


@lru_cache(maxsize=None)
def truth(name: str):
    return run_plan(plan_of(name))


def test_every_exporter_has_a_trainer_rule():
    assert {"planner", "hf", "axolotl", "lmflow", "llamafactory", "peft", "swift"} <= set(EXPORTERS) == set(RUNNERS)


@pytest.mark.parametrize("target", sorted(EXPORTERS))
@pytest.mark.parametrize("name", sorted(PLANS))
def test_export_trains_what_it_says(target, name, tmp_path):
    plan = plan_of(name)
    result = get_exporter(target).render(plan)
    assert isinstance(result, Export) and result.files
    assert all(isinstance(line, str) and line and "\n" not in line for line in result.lost)
    got = RUNNERS[target](plan, result.files, tmp_path)
    diffs = differences(plan, truth(name), got)
    said = {kind for line in result.lost for kind in loss_kinds(line)} - {"data"}
    assert set(diffs) == said, (
        f"{target}: its trainer differs in {diffs or 'nothing'}; the export says {result.lost or 'exact'}"
    )


def loss_kinds(line: str) -> set[str]:
    """What a loss line is about: the data when it says so; memory when it names bytes; training unless it is
    only about memory."""
    if line.startswith("data:"):
        return {"data"}
    memory_only = line.startswith(("memory:", "optimizer state:"))
    return ({"memory"} if " bytes" in line else set()) | (set() if memory_only else {"training"})


def test_truth_is_what_the_plan_says():
    """The reference runs train what the plan names (guards the comparison itself)."""
    from trainer_rules import split

    top = plan_of("llama-static-top")
    outside, inside = split(top, truth("llama-static-top").trained[0])
    assert set(inside) == {2, 3} and "model.embed_tokens.weight" in outside and "lm_head.weight" in outside
    head_only = plan_of("gpt2-static-head-only")
    outside, inside = split(head_only, truth("gpt2-static-head-only").trained[0])
    # tied: the head's weight is the input embedding's, so both names change; position embeddings do not
    assert set(inside) == {3} and {"lm_head.weight", "transformer.wte.weight", "transformer.ln_f.weight"} <= outside
    assert "transformer.wpe.weight" not in outside
    asc = truth("llama-cyclic-ascending")
    assert [sorted(split(plan_of("llama-cyclic-ascending"), s)[1]) for s in asc.trained] == [
        [0],
        [0],
        [1],
        [1],
        [2],
        [2],
    ]


# -- keys: every key is a field of its trainer ------------------------------------------------------

# ms-swift 4.6.0 (installed in its own venv, not here): swift/arguments/base_args/{base,model,data,template}_args.py,
# tuner_args.py, trainers/arguments.py. axolotl, LMFlow and LLaMA-Factory: every field of their own configuration
# classes, read from their source (trainer_fields.py, fixtures/trainer-fields.json)
SWIFT_FIELDS = {
    "model",
    "model_type",
    "torch_dtype",
    "dataset",
    "use_hf",
    "columns",
    "template",
    "use_chat_template",
    "max_length",
    "tuner_type",
    "lisa_activated_layers",
    "lisa_step_interval",
    "freeze_parameters",
    "freeze_parameters_ratio",
    "trainable_parameters",
    "target_regex",
    "modules_to_save",
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "loss_scale",
}


def _training_arguments() -> set[str]:
    from transformers import TrainingArguments

    return {f.name for f in dataclasses.fields(TrainingArguments)}


def _fields(target: str) -> set[str]:
    if target == "peft":
        from peft import LoraConfig

        return {f.name for f in dataclasses.fields(LoraConfig)} | {"peft_type", "auto_mapping", "peft_version"}
    if target == "planner":
        from planner.plan import Plan

        return set(Plan.model_fields)
    if target in ("hf", "swift"):
        return _training_arguments() | (SWIFT_FIELDS if target == "swift" else set())
    return config_keys(target)


def _keys(filename: str, text: str) -> set[str]:
    """Config keys by file kind, parsed here, not by the exporter."""
    if filename.endswith((".yaml", ".yml")):
        return set(yaml.safe_load(text))
    if filename == "dataset_info.json":
        return set()  # LLaMA-Factory's dataset description (checked in test_export_data.py), not config keys
    if filename.endswith(".json"):
        return set(json.loads(text))
    if filename.endswith(".sh"):
        return {t[2:] for t in shlex.split(text, comments=True) if t.startswith("--")}
    assert filename.endswith(".py"), filename
    compile(text, filename, "exec")
    return set()


@pytest.mark.parametrize("target", sorted(EXPORTERS))
def test_every_key_is_a_field_of_the_trainer(target):
    fields = _fields(target)
    for name in sorted(PLANS)[::3]:
        result = get_exporter(target).render(plan_of(name))
        used = set().union(*(_keys(f, t) for f, t in result.files.items()))
        assert used, f"{target} wrote no config keys"
        assert used <= fields, f"{target} wrote keys its trainer does not have: {sorted(used - fields)}"
        assert used == set().union(*(get_exporter(target).keys(f, t) for f, t in result.files.items()))
        if target == "axolotl":  # a dataset entry and its prompt format are models of their own
            schema = load_trainer_fields()["axolotl"]
            for entry in yaml.safe_load(result.files["axolotl.yaml"])["datasets"]:
                assert set(entry) <= set(schema["datasets"]), sorted(set(entry) - set(schema["datasets"]))
                if isinstance(entry.get("type"), dict):
                    assert set(entry["type"]) <= set(schema["prompt_type"]), sorted(
                        set(entry["type"]) - set(schema["prompt_type"])
                    )


CHAT = TrainingData(
    path="/data/chat.jsonl", format="jsonl", fields={"messages": "messages"}, chat=["history", "irregular"]
)


@pytest.mark.parametrize("target", sorted(EXPORTERS))
def test_every_key_of_a_chat_data_export_is_a_field_of_the_trainer(target):
    """messages records: the trainers' chat keys (axolotl's chat_template entry, LLaMA-Factory's sharegpt entry and
    mask_history, ms-swift's loss_scale) are fields of theirs too."""
    from trainer_fields import LLAMAFACTORY_COLUMNS, LLAMAFACTORY_FORMATTINGS, LLAMAFACTORY_TAGS

    fields = _fields(target)
    for name in ("llama-uniform", "llama-static-top"):
        arch, kind = PLANS[name]
        result = get_exporter(target).render(make_plan(arch, data=CHAT, steps=6, **KINDS[kind]))
        used = set().union(*(_keys(f, t) for f, t in result.files.items()))
        assert used <= fields, f"{target} wrote keys its trainer does not have: {sorted(used - fields)}"
        if target == "axolotl":
            schema = load_trainer_fields()["axolotl"]
            (entry,) = yaml.safe_load(result.files["axolotl.yaml"])["datasets"]
            assert entry["type"] == "chat_template" and set(entry) <= set(schema["datasets"]), sorted(
                set(entry) - set(schema["datasets"])
            )
        if target == "llamafactory":
            (entry,) = json.loads(result.files["dataset_info.json"]).values()
            assert entry["formatting"] in LLAMAFACTORY_FORMATTINGS and set(entry["columns"]) <= LLAMAFACTORY_COLUMNS
            assert set(entry["tags"]) <= LLAMAFACTORY_TAGS


def test_hf_training_args_construct():
    from transformers import TrainingArguments

    for plan in (
        plan_of("llama-uniform"),
        make_plan(train=TrainConfig(active_layers=2, amp="bf16", gradient_checkpointing=True, optimizer="sgd")),
    ):
        args = json.loads(get_exporter("hf").render(plan).files["training_args.json"])
        TrainingArguments(**{**args, "output_dir": "unused", "use_cpu": True, "bf16": False})  # values are valid too


def test_peft_config_loads_with_lora_config(tmp_path):
    from peft import LoraConfig

    for name in ("gpt2-lora-static", "qwen2-static-head-only"):
        (tmp_path / "adapter_config.json").write_text(
            get_exporter("peft").render(plan_of(name)).files["adapter_config.json"]
        )
        assert LoraConfig.from_pretrained(str(tmp_path)).r == (4 if "lora" in name else 8)


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_every_registered_optimizer_exports_to_every_trainer_under_transformers_name(optimizer):
    from transformers.training_args import OptimizerNames

    assert get_optimizer(optimizer).hf_name in {o.value for o in OptimizerNames}
    plan = make_plan(train=TrainConfig(active_layers=2, optimizer=optimizer))
    for target in sorted(EXPORTERS):
        files = get_exporter(target).render(plan).files
        assert files, target
        if target == "hf":
            assert json.loads(files["training_args.json"])["optim"] == get_optimizer(optimizer).hf_name
