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
    return make_plan(data=training_data(str(path)), steps=42, train=TrainConfig(active_layers=2, seq_len=96), **kw), path


def test_training_data_is_what_the_loader_reads(tmp_path):
    # the loader takes the first field pair present (instruction/response before question/answer), input appended
    _, path = data_plan(tmp_path, [{"instruction": "a", "input": "b", "response": "c", "question": "q", "answer": "x"}])
    data = training_data(str(path))
    assert data == TrainingData(path=str(path.resolve()), format="jsonl", fields={"prompt": "instruction", "answer": "response", "input": "input"})
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
    code = main(["tune", "--vram", "1GB", "--model", model_dir, "--seq-len", "32", "--batch-size", "2", "--device", "cpu",
                 "--proxy", "target", "--proxy-device", "cpu", "--data", data, "--n-trials", "4", "--steps", "3",
                 "--eval-every", "3", "--study", "d", "--storage", f"sqlite:///{tmp_path / 's.db'}", "--scorers", "uniform",
                 "--quiet", "--out", str(tmp_path / "plan.yaml"),
                 "--no-baselines", "--confirm-seeds", "0"])  # four searched trials: what records the data and steps
    assert code == 0, capsys.readouterr().err
    plan = Plan.load(tmp_path / "plan.yaml")
    assert plan.steps == 3 and plan.data == TrainingData(path=str(Path(data).resolve()), format="jsonl",
                                                         fields={"prompt": "instruction", "answer": "response"})
    args = swift_args(get_exporter("swift").render(plan).files["swift_sft.sh"])
    assert args["dataset"] == [str(Path(data).resolve())] and args["max_steps"] == ["3"] and args["max_length"] == ["32"]


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
    assert entry["type"] == {"field_instruction": "prompt", "field_output": "completion", "field_input": "input",
                             "format": "{instruction}\n{input}\n", "no_input_format": "{instruction}\n"}
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
    assert entry["file_name"] == str(path.resolve()) and entry["columns"] == {"prompt": "instruction", "response": "response"}
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

    lisa = swift_args(files_of("swift", make_plan(active_layers=2, period=3, train_embeddings=False)).files["swift_sft.sh"])
    assert lisa["tuner_type"] == ["full"] and lisa["lisa_activated_layers"] == ["2"] and lisa["lisa_step_interval"] == ["3"]
    assert lisa["freeze_parameters"] == ["model.embed_tokens.weight"]
    static = make_plan(scorer="fixed", layers=[1, 3], active_layers=2, train=TrainConfig(layers=[1, 3]), train_head=False)
    args = swift_args(files_of("swift", static).files["swift_sft.sh"])
    assert args["freeze_parameters_ratio"] == ["1"] and args["trainable_parameters"] == ["model.layers.1.", "model.layers.3.", "model.embed_tokens.weight"]
    lora = make_plan(scorer="fixed", layers=[1], active_layers=1, train=TrainConfig(layers=[1]), lora_rank=4, train_embeddings=False, train_head=False)
    args = swift_args(files_of("swift", lora).files["swift_sft.sh"])
    assert args["tuner_type"] == ["lora"] and args["lora_rank"] == ["4"]
    import re

    regex = re.compile(args["target_regex"][0])
    assert regex.fullmatch("model.layers.1.self_attn.q_proj") and not regex.fullmatch("model.layers.11.self_attn.q_proj")
    assert not regex.fullmatch("model.layers.0.mlp.up_proj") and not regex.fullmatch("model.layers.1.mlp")
    assert lora_regex("transformer.h", [0, 2], ("c_attn",)) == r"^transformer\.h\.(0|2)\..*\.(c_attn)$"
    assert shlex.split(files_of("swift", lora).files["swift_sft.sh"], comments=True)[-2:] == ["sft", "${ARGS[@]}"]


def test_the_hf_script_defaults_to_the_recorded_data_and_requires_it_otherwise(tmp_path):
    plan, path = data_plan(tmp_path, [{"question": "q", "answer": "a"}])
    script = files_of("hf", plan).files["train_layerwise.py"]
    assert f"'data': {str(path.resolve())!r}" in script
    assert "'data': None" in files_of("hf", make_plan(data=TrainingData(task="add", format="builtin"))).files["train_layerwise.py"]
