"""Every export names the training data, format, template, sequence length and step count the plan records, so
the trainer's own command runs it; a built-in task's export names a placeholder file and says so."""

import json
import shlex
from pathlib import Path

import pytest
import yaml
from plan_factory import make_plan
from trainer_rules_swift import swift_args

from planner.config import TrainConfig
from planner.export import EXPORTERS, export_plan, get_exporter
from planner.export.data import PLACEHOLDER, training_data
from planner.plan import TrainingData

TARGETS = sorted(set(EXPORTERS) - {"planner"})
RUNS = sorted(set(TARGETS) - {"peft", "hf"})  # targets whose file runs a training; hf's script takes --data itself


def data_plan(tmp_path, records, name="train.jsonl", **kw):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return make_plan(
        data=training_data(str(path)), steps=42, train=TrainConfig(active_layers=2, seq_len=96), **kw
    ), path


def test_training_data_is_what_the_loader_reads(tmp_path):
    # the loader takes the first field pair present (instruction/response before question/answer), input appended
    _, path = data_plan(tmp_path, [{"instruction": "a", "input": "b", "response": "c", "question": "q", "answer": "x"}])
    data = training_data(str(path))
    assert data == TrainingData(
        path=str(path.resolve()),
        format="jsonl",
        fields={"prompt": "instruction", "answer": "response", "input": "input"},
    )
    (tmp_path / "t.txt").write_text("one\ntwo\n")
    assert training_data(str(tmp_path / "t.txt")).fields == {"text": "text"}
    assert training_data("default:add") == TrainingData(task="add", format="builtin")


def test_tune_records_the_data_and_steps_and_the_exports_name_them(tmp_path, capsys, monkeypatch):
    """A real `planner tune` on a user's JSONL file: the plan it writes names the file, its fields and the steps."""
    from tune_helpers import write_user_workload

    from planner.cli.main import main
    from planner.plan import Plan

    model_dir, data = write_user_workload(tmp_path)
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "tune",
            "--vram",
            "1GB",
            "--model",
            model_dir,
            "--seq-len",
            "32",
            "--batch-size",
            "2",
            "--device",
            "cpu",
            "--proxy",
            "target",
            "--proxy-device",
            "cpu",
            "--data",
            data,
            "--n-trials",
            "4",
            "--steps",
            "3",
            "--eval-every",
            "3",
            "--study",
            "d",
            "--storage",
            f"sqlite:///{tmp_path / 's.db'}",
            "--scorers",
            "uniform",
            "--quiet",
            "--out",
            str(tmp_path / "plan.yaml"),
            "--no-baselines",
            "--confirm-seeds",
            "0",
        ]
    )  # four searched trials: what records the data and steps
    assert code == 0, capsys.readouterr().err
    plan = Plan.load(tmp_path / "plan.yaml")
    assert plan.steps == 3 and plan.data == TrainingData(
        path=str(Path(data).resolve()), format="jsonl", fields={"prompt": "instruction", "answer": "response"}
    )
    args = swift_args(get_exporter("swift").render(plan).files["swift_sft.sh"])
    assert (
        args["dataset"] == [str(Path(data).resolve())] and args["max_steps"] == ["3"] and args["max_length"] == ["32"]
    )


def files_of(target, plan):
    return get_exporter(target).render(plan)


@pytest.mark.parametrize("target", TARGETS)
def test_every_export_names_the_data_steps_and_length(target, tmp_path):
    plan, path = data_plan(tmp_path, [{"question": "q", "answer": "a"}])
    result = files_of(target, plan)
    text = "\n".join(result.files.values())
    if target != "peft":  # a LoRA config: no training run of its own
        assert str(path.resolve()) in text and "42" in text and "96" in text
    assert not any("records no" in line or PLACEHOLDER in line for line in result.lost)


def test_axolotl_dataset_reads_the_fields_as_planner(tmp_path):
    plan, path = data_plan(tmp_path, [{"prompt": "p", "completion": "c", "input": "i"}])
    cfg = yaml.safe_load(files_of("axolotl", plan).files["axolotl.yaml"])
    (entry,) = cfg["datasets"]
    assert entry["path"] == str(path.resolve()) and entry["ds_type"] == "json"
    assert entry["type"] == {
        "field_instruction": "prompt",
        "field_output": "completion",
        "field_input": "input",
        "format": "{instruction}\n{input}\n",
        "no_input_format": "{instruction}\n",
    }
    assert cfg["max_steps"] == 42 and cfg["sequence_len"] == 96 and cfg["val_set_size"] == 0 and cfg["output_dir"]
    text_plan, _ = data_plan(tmp_path, [{"text": "t"}], name="t.jsonl")
    (entry,) = yaml.safe_load(files_of("axolotl", text_plan).files["axolotl.yaml"])["datasets"]
    assert entry["type"] == "completion" and entry["field"] == "text"


def test_llamafactory_dataset_info_and_dir(tmp_path):
    plan, path = data_plan(tmp_path, [{"instruction": "p", "response": "c"}])
    res = export_plan(plan.save(tmp_path / "plan.yaml"), "llamafactory", tmp_path / "out")
    cfg = yaml.safe_load((tmp_path / "out" / "llamafactory.yaml").read_text())
    info = json.loads((tmp_path / "out" / "dataset_info.json").read_text())
    # LLaMA-Factory reads dataset_dir/dataset_info.json and joins file_name to dataset_dir (an absolute path stays itself)
    assert cfg["dataset_dir"] == str((tmp_path / "out").resolve()) and cfg["dataset"] in info
    entry = info[cfg["dataset"]]
    assert entry["file_name"] == str(path.resolve()) and entry["columns"] == {
        "prompt": "instruction",
        "response": "response",
    }
    assert cfg["template"] == "empty" and cfg["cutoff_len"] == 96 and cfg["max_steps"] == 42 and cfg["stage"] == "sft"
    assert any(line.startswith("data:") and "newline" in line for line in res.lost)
    text_plan, _ = data_plan(tmp_path, [{"text": "t"}], name="t.jsonl")
    files = files_of("llamafactory", text_plan).files
    cfg = yaml.safe_load(files["llamafactory.yaml"])
    assert cfg["stage"] == "pt" and cfg["packing"] is False  # one record per example, as planner reads text
    assert json.loads(files["dataset_info.json"])["planner_data"]["columns"] == {"prompt": "text"}


def test_swift_script_names_dataset_columns_and_steps(tmp_path):
    plan, path = data_plan(tmp_path, [{"question": "q", "answer": "a"}])
    args = swift_args(files_of("swift", plan).files["swift_sft.sh"])
    assert args["dataset"] == [str(path.resolve())] and args["max_steps"] == ["42"] and args["max_length"] == ["96"]
    # swift's own columns are query/response: the record fields map onto them
    assert json.loads(args["columns"][0]) == {"question": "query", "answer": "response"}
    assert args["use_chat_template"] == ["false"] and args["output_dir"] == ["$OUTPUT"]


@pytest.mark.parametrize("target", RUNS)
def test_a_builtin_task_names_a_placeholder_and_says_so(target):
    plan = make_plan(data=TrainingData(task="add", format="builtin"), steps=7)
    result = files_of(target, plan)
    (line,) = [line for line in result.lost if "built-in task 'add'" in line]
    assert line.startswith("data:") and PLACEHOLDER in line
    if target != "lmflow":  # LMFlow takes its data directory as an argument
        assert PLACEHOLDER in "\n".join(result.files.values())


@pytest.mark.parametrize("target", RUNS)
def test_an_older_plan_without_data_says_what_to_provide(target):
    result = files_of(target, make_plan())
    assert any(line.startswith("data:") and "records no training data" in line for line in result.lost)
    assert any(line.startswith("data:") and "no step count" in line for line in result.lost)


def test_swift_lisa_static_and_lora_keys():
    from planner.export.targets.swift import lora_regex

    lisa = swift_args(
        files_of("swift", make_plan(active_layers=2, period=3, train_embeddings=False)).files["swift_sft.sh"]
    )
    assert (
        lisa["tuner_type"] == ["full"]
        and lisa["lisa_activated_layers"] == ["2"]
        and lisa["lisa_step_interval"] == ["3"]
    )
    assert lisa["freeze_parameters"] == ["model.embed_tokens.weight"]
    static = make_plan(
        scorer="fixed", layers=[1, 3], active_layers=2, train=TrainConfig(layers=[1, 3]), train_head=False
    )
    args = swift_args(files_of("swift", static).files["swift_sft.sh"])
    assert args["freeze_parameters_ratio"] == ["1"] and args["trainable_parameters"] == [
        "model.layers.1.",
        "model.layers.3.",
        "model.embed_tokens.weight",
    ]
    lora = make_plan(
        scorer="fixed",
        layers=[1],
        active_layers=1,
        train=TrainConfig(layers=[1]),
        lora_rank=4,
        train_embeddings=False,
        train_head=False,
    )
    args = swift_args(files_of("swift", lora).files["swift_sft.sh"])
    assert args["tuner_type"] == ["lora"] and args["lora_rank"] == ["4"]
    import re

    regex = re.compile(args["target_regex"][0])
    assert regex.fullmatch("model.layers.1.self_attn.q_proj") and not regex.fullmatch(
        "model.layers.11.self_attn.q_proj"
    )
    assert not regex.fullmatch("model.layers.0.mlp.up_proj") and not regex.fullmatch("model.layers.1.mlp")
    assert lora_regex("transformer.h", [0, 2], ("c_attn",)) == r"^transformer\.h\.(0|2)\..*\.(c_attn)$"
    assert shlex.split(files_of("swift", lora).files["swift_sft.sh"], comments=True)[-2:] == ["sft", "${ARGS[@]}"]


def test_the_hf_script_defaults_to_the_recorded_data_and_requires_it_otherwise(tmp_path):
    plan, path = data_plan(tmp_path, [{"question": "q", "answer": "a"}])
    script = files_of("hf", plan).files["train_layerwise.py"]
    assert f"'data': {str(path.resolve())!r}" in script
    assert (
        "'data': None"
        in files_of("hf", make_plan(data=TrainingData(task="add", format="builtin"))).files["train_layerwise.py"]
    )


# -- chat data: messages records -------------------------------------------------------------------------------------

SYSTEM = {"role": "system", "content": "be brief"}
ONE_TURN = {"messages": [SYSTEM, {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
HISTORY = {
    "messages": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "and 3+3?"},
        {"role": "assistant", "content": "6"},
    ]
}
IRREGULAR = {
    "messages": [
        {"role": "user", "content": "2+2?"},
        {"role": "user", "content": "quick"},
        {"role": "assistant", "content": "4"},
    ]
}


def test_training_data_records_messages_and_what_other_trainers_read_otherwise(tmp_path):
    plan, path = data_plan(tmp_path, [ONE_TURN])
    assert plan.data == TrainingData(path=str(path.resolve()), format="jsonl", fields={"messages": "messages"})
    assert plan.data.is_chat and "chat" not in plan.model_dump(mode="json")["data"]  # nothing to say: not written
    mixed, _ = data_plan(tmp_path, [HISTORY, IRREGULAR, {"prompt": "p", "completion": "c"}], name="m.jsonl")
    assert mixed.data.chat == ["history", "irregular", "pairs"] and mixed.data.fields == {"messages": "messages"}
    assert type(mixed).load(mixed.save(tmp_path / "plan.yaml")).data == mixed.data


@pytest.mark.parametrize("target", TARGETS)
def test_a_messages_plan_names_its_file_and_no_prompt_template(target, tmp_path):
    plan, path = data_plan(tmp_path, [ONE_TURN])
    result = files_of(target, plan)
    text = "\n".join(result.files.values())
    if target != "peft":
        assert str(path.resolve()) in text and "42" in text and "96" in text
    # the prompt/answer templates (and their newline lines) are not what a chat file is read with
    assert not any("newline" in line for line in result.lost)
    assert "use_chat_template false" not in text and "template: empty" not in text and "field_instruction" not in text


def _chat_plan(tmp_path, records, name="c.jsonl"):
    plan, _ = data_plan(tmp_path, records, name=name)
    return plan


def test_axolotl_reads_messages_with_the_chat_template_strategy(tmp_path):
    from trainer_rules import axolotl_chat, planner_chat, trained_text

    result = files_of("axolotl", _chat_plan(tmp_path, [ONE_TURN]))
    (entry,) = yaml.safe_load(result.files["axolotl.yaml"])["datasets"]
    assert entry["type"] == "chat_template" and entry["field_messages"] == "messages" and entry["ds_type"] == "json"
    assert entry["chat_template"] == "tokenizer_default"  # the model's own template, as planner renders it
    assert entry["roles"] == {"system": ["system"], "user": ["user"], "assistant": ["assistant"]}
    assert trained_text(axolotl_chat(entry, ONE_TURN)) == trained_text(planner_chat(ONE_TURN)) == ["4"]
    assert not [line for line in result.lost if line.startswith("data:")]
    # earlier assistant turns: axolotl trains them too (no dataset key trains the last one only), and says so
    result = files_of("axolotl", _chat_plan(tmp_path, [HISTORY], name="h.jsonl"))
    (entry,) = yaml.safe_load(result.files["axolotl.yaml"])["datasets"]
    assert trained_text(axolotl_chat(entry, HISTORY)) == ["4", "6"] != trained_text(planner_chat(HISTORY))
    assert any(line.startswith("data:") and "every assistant turn" in line for line in result.lost)
    # a record without messages fails in axolotl: the export says to convert it
    result = files_of("axolotl", _chat_plan(tmp_path, [ONE_TURN, {"question": "q", "answer": "a"}], name="p.jsonl"))
    assert axolotl_chat(entry, {"question": "q", "answer": "a"}) is None
    assert any(line.startswith("data:") and "convert them to messages records" in line for line in result.lost)


def test_llamafactory_reads_messages_as_sharegpt_with_the_last_turn_trained(tmp_path):
    from trainer_fields import LLAMAFACTORY_COLUMNS, LLAMAFACTORY_FORMATTINGS, LLAMAFACTORY_TAGS
    from trainer_rules import llamafactory_chat, planner_chat, trained_text

    result = files_of("llamafactory", _chat_plan(tmp_path, [ONE_TURN, HISTORY]))
    cfg = yaml.safe_load(result.files["llamafactory.yaml"])
    entry = json.loads(result.files["dataset_info.json"])[cfg["dataset"]]
    assert entry["formatting"] == "sharegpt" and entry["formatting"] in LLAMAFACTORY_FORMATTINGS
    assert entry["columns"] == {"messages": "messages"} and set(entry["columns"]) <= LLAMAFACTORY_COLUMNS
    assert (
        entry["tags"]
        == {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
            "system_tag": "system",
        }
        and set(entry["tags"]) <= LLAMAFACTORY_TAGS
    )
    # the tokenizer's template, the last turn
    assert cfg["stage"] == "sft" and "template" not in cfg and cfg["mask_history"] is True
    for record in (ONE_TURN, HISTORY):
        got = llamafactory_chat(entry, cfg, record)
        assert trained_text(got) == trained_text(planner_chat(record))
    assert llamafactory_chat(entry, cfg, ONE_TURN)[0] == "be brief"  # the leading system turn is the system prompt
    assert not any("skips records" in line for line in result.lost)
    assert any(line.startswith("data:") and "parse_template" in line for line in result.lost)
    # turns out of alternation: the sharegpt reader skips the record, and the export says so
    result = files_of("llamafactory", _chat_plan(tmp_path, [IRREGULAR], name="i.jsonl"))
    assert llamafactory_chat(entry, cfg, IRREGULAR) is None
    assert any(line.startswith("data:") and "skips records" in line for line in result.lost)


def test_swift_reads_messages_natively_with_the_last_round_trained(tmp_path):
    from trainer_rules import planner_chat, swift_chat, trained_text

    result = files_of("swift", _chat_plan(tmp_path, [HISTORY]))
    args = swift_args(result.files["swift_sft.sh"])
    assert "columns" not in args and "template" not in args and "use_chat_template" not in args
    assert args["loss_scale"] == ["last_round"]
    for record in (ONE_TURN, HISTORY):
        assert trained_text(swift_chat(args, record)) == trained_text(planner_chat(record))
    # swift's default: every turn
    assert trained_text(swift_chat({**args, "loss_scale": ["default"]}, HISTORY)) == ["4", "6"]
    assert any(line.startswith("data:") and "registered template" in line for line in result.lost)


def test_lmflow_says_what_its_conversation_format_needs(tmp_path):
    result = files_of("lmflow", _chat_plan(tmp_path, [ONE_TURN]))
    (line,) = [line for line in result.lost if "DATASET_DIR" in line]
    assert '"type": "conversation"' in line and '"system"' in line and '"messages"' in line
    assert any("{% generation %}" in line for line in result.lost)


def test_the_hf_script_reads_messages_with_planners_loader(tmp_path):
    from planner.data.tokenizer import EOS, SPECIALS, CharTokenizer

    records = [
        {"messages": [{"role": "user", "content": f"double {i}"}, {"role": "assistant", "content": str(2 * i)}]}
        for i in range(3)
    ]
    plan, path = data_plan(tmp_path, records)
    namespace: dict = {"__name__": "train_layerwise", "__file__": str(tmp_path / "train_layerwise.py")}
    exec(compile(files_of("hf", plan).files["train_layerwise.py"], "train_layerwise.py", "exec"), namespace)
    examples = namespace["read_examples"](str(path), CharTokenizer().to_hf(), 96)  # no chat template: the plain turns
    tok = CharTokenizer()
    assert [tok.decode(e.prompt) for e in examples] == [f"user: double {i}\nassistant: " for i in range(3)]
    assert [tok.decode(e.answer, skip_special_tokens=False) for e in examples] == [
        f"{2 * i}{SPECIALS[EOS]}" for i in range(3)
    ]
