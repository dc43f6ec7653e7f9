"""Exports run as written in the real trainers, each installed in its own virtual environment.

    python studies/bench_export_run.py [--root DIR] [--only swift,llamafactory,axolotl] [--plans qlora,qlora-int8] | tee -a reports/bench_export.txt

A tiny llama (2 layers, hidden 64, built from a config with SmolLM2's tokenizer, saved with
``save_pretrained``) and a 40-record instruction/response JSONL file (and the same sums as text
records) stand in for a study's target and ``--data``. Each plan (LISA, a static layer set,
LoRA, the static set on text, QLoRA: LoRA r=8 on both layers over NF4 base weights with double
quantization, and the same over int8 base weights) is written by
``planner export`` into its own directory and run there with the trainer's own command
(``bash swift_sft.sh``, ``llamafactory-cli train llamafactory.yaml``, ``axolotl train
axolotl.yaml``), unchanged but for one thing (axolotl's fused LoRA kernels, which axolotl turns on for a LoRA
config and which need CUDA, are set to false: :func:`cpu_overrides`), on CPU with the trainer's venv first on PATH.
Reported: the command,
its exit code and time, the steps and last loss it logged, and which parameter groups of the
saved model differ from the initial weights (a trainer that trained nothing it should not have,
and everything it should, changes exactly the groups its export's loss lines allow); for the
quantized plans also the linear modules the trainer's model held as bitsandbytes' quantized
layers, as its own log says (transformers' quantization_config, the model printout; LLaMA-Factory and axolotl print
no model, so their own loaders build it again from the export's config and print it: :func:`printout`).

The venvs (each trainer pulls its own torch, 2.14.1 with its CUDA libraries, run on CPU here):
``python3.11 -m venv /tmp/venv-swift && /tmp/venv-swift/bin/pip install ms-swift==4.6.0``,
``python3.11 -m venv /tmp/venv-llamafactory && /tmp/venv-llamafactory/bin/pip install llamafactory==0.9.5 badam``,
``python3.12 -m venv /tmp/venv-axolotl && /tmp/venv-axolotl/bin/pip install axolotl==0.21.0`` (axolotl needs
Python >= 3.12); bitsandbytes (0.50.2, whose CPU backend runs NF4 and int8) comes with axolotl and is added to the
other two: ``pip install bitsandbytes==0.50.2``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

VENVS = {"swift": "/tmp/venv-swift", "llamafactory": "/tmp/venv-llamafactory", "axolotl": "/tmp/venv-axolotl"}
COMMANDS = {
    "swift": ["bash", "swift_sft.sh"],
    "llamafactory": ["llamafactory-cli", "train", "llamafactory.yaml"],
    "axolotl": ["axolotl", "train", "axolotl.yaml"],
}
QUANTIZED = {"qlora": "nf4-dq", "qlora-int8": "int8"}  # plan kind -> --quantize
PLANS = {
    "swift": ["lisa", "static", "lora", "text", *QUANTIZED],
    "llamafactory": ["lisa", "static", "lora", "text", *QUANTIZED],
    "axolotl": ["lisa", "static", "lora", "text", *QUANTIZED],
}
STEPS = 6
TOKENIZER = Path.home() / ".cache/planner/gguf-SmolLM2-135M-Instruct.Q4_1-dc8497fee868857d"


def build_model(root: Path) -> Path:
    """A 2-layer llama with random weights (seed 0), saved with the SmolLM2 tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = root / "tiny-llama"
    if (out / "model.safetensors").is_file():
        return out
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_data(root: Path) -> tuple[Path, Path]:
    """40 instruction/response records (sums of small numbers), and the same sums as 40 text records."""
    pairs, text = root / "sums.jsonl", root / "sums-text.jsonl"
    sums = [(a, b) for a in range(1, 9) for b in range(1, 6)]
    pairs.write_text(
        "".join(json.dumps({"instruction": f"What is {a} plus {b}?", "response": str(a + b)}) + "\n" for a, b in sums)
    )
    text.write_text("".join(json.dumps({"text": f"{a} plus {b} makes {a + b}"}) + "\n" for a, b in sums))
    return pairs, text


def make(kind: str, model: Path, data: Path):
    """The plan of ``kind`` for the tiny model, with the data and step count `planner tune` records
    (``text``: the static plan on the text records)."""
    from plan_factory import consistent_plan

    from planner.config import TrainConfig
    from planner.export.data import training_data
    from planner.plan import Breakdown

    common = dict(
        model=str(model),
        model_type="llama",
        num_layers=2,
        layers_attribute="model.layers",
        learning_rate=1e-3,
        predicted_peak_bytes=1,
        breakdown=Breakdown(weights=1),
        data=training_data(str(data)),
        steps=STEPS,
    )
    seq = dict(seq_len=64, batch_size=2)
    if kind == "lisa":  # one of two layers every 2 steps, embeddings frozen, head trained
        return consistent_plan(
            **common,
            active_layers=1,
            period=2,
            scorer="uniform",
            train_embeddings=False,
            train=TrainConfig(active_layers=1, **seq),
        )
    if kind in ("static", "text"):  # layer 1 and the head
        return consistent_plan(
            **common,
            active_layers=1,
            period=1,
            scorer="fixed",
            layers=[1],
            train_embeddings=False,
            train=TrainConfig(layers=[1], **seq),
        )
    if kind in QUANTIZED:  # QLoRA as the tuner's baseline runs it: adapters in every layer over quantized base weights
        return consistent_plan(
            **common,
            active_layers=2,
            period=1,
            scorer="fixed",
            layers=[0, 1],
            lora_rank=8,
            train_embeddings=False,
            train_head=False,
            train=TrainConfig(layers=[0, 1], quantize=QUANTIZED[kind], **seq),
        )
    return consistent_plan(
        **common,
        active_layers=1,
        period=1,
        scorer="fixed",
        layers=[1],
        lora_rank=4,
        train_embeddings=False,
        train_head=False,
        train=TrainConfig(layers=[1], **seq),
    )


def groups(names: list[str]) -> list[str]:
    """Parameter names as groups: layer N, embed, head, norm."""
    out = set()
    for n in names:
        m = re.search(r"layers\.(\d+)\.", n)
        out.add(
            f"layer {m.group(1)}"
            if m
            else "embed"
            if "embed_tokens" in n
            else "head"
            if "lm_head" in n
            else "norm"
            if "norm" in n
            else n
        )
    return sorted(out)


def planned(plan) -> str:
    """The groups the plan trains, in the words of :func:`groups`."""
    outside = [
        g for g, on in (("embed", plan.train_embeddings), ("head", plan.train_head), ("norm", plan.train_head)) if on
    ]
    if plan.lora_rank:
        return f"LoRA adapters in layer(s) {plan.layers}" + (f" + {', '.join(outside)}" if outside else "")
    if plan.layers is not None:
        return str(sorted([f"layer {i}" for i in plan.layers] + outside))
    return f"{plan.active_layers} of layers 0..{plan.num_layers - 1} re-drawn every {plan.period} steps + {', '.join(outside) or 'nothing else'}"


def first_example(target: str, log: str, run_dir: Path, model: Path) -> str:
    """The first training example as the trainer tokenized it (its own log, or axolotl's prepared dataset), and the
    part the loss is on."""
    if target == "llamafactory":  # data/processor logs "inputs:\n...\nlabel_ids:" and "labels:\n...\n"
        m = re.search(r"^inputs:\n(.*?)\nlabel_ids:.*?^labels:\n(.*?)\n\[", log, re.DOTALL | re.MULTILINE)
        if m:
            return f"{m.group(1)!r}, loss on {m.group(2)!r}"
        # pt: no labels logged, the loss is on all of it
        m = re.search(r"^inputs:\n(.*?)\n\[", log, re.DOTALL | re.MULTILINE)
        return f"{m.group(1)!r}, loss on all of it" if m else "?"
    if target == "swift":  # swift logs [INPUT] and [LABELS] of the first row
        full, labels = re.search(r"\[INPUT\] (.*)", log), re.search(r"\[LABELS\] (?:\[-100 \* \d+\])?(.*)", log)
        return f"{full.group(1)!r}, loss on {labels.group(1)!r}" if full and labels else "?"
    prepared = next((p.parent for p in sorted(run_dir.rglob("dataset_info.json"))), None)
    if prepared is None:
        return "?"
    code = (
        "import sys; from datasets import load_from_disk; from transformers import AutoTokenizer; "
        "tok = AutoTokenizer.from_pretrained(sys.argv[2]); row = load_from_disk(sys.argv[1])[0]; "
        "ans = [t for t, lab in zip(row['input_ids'], row['labels']) if lab != -100]; "
        "print(repr(tok.decode(row['input_ids'])) + ', loss on ' + repr(tok.decode(ans)))"
    )
    # axolotl's own datasets
    return (
        subprocess.run(
            [f"{VENVS[target]}/bin/python", "-c", code, str(prepared), str(model)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        or "?"
    )


def changed(initial: Path, run_dir: Path) -> list[str] | str:
    """Groups whose saved weights differ from the initial model's, from the newest model.safetensors under ``run_dir``."""
    from safetensors.torch import load_file

    saved = sorted(run_dir.rglob("model.safetensors"), key=lambda p: p.stat().st_mtime)
    if not saved:
        adapters = sorted(run_dir.rglob("adapter_model.safetensors"), key=lambda p: p.stat().st_mtime)
        if adapters:
            names = list(load_file(str(adapters[-1])))
            return f"LoRA adapters only ({len(names)} tensors) in " + ", ".join(groups(names))
        return "no saved model"
    before, after = load_file(str(initial / "model.safetensors")), load_file(str(saved[-1]))
    diff = [n for n in before if n in after and not before[n].equal(after[n].to(before[n].dtype))]
    return groups(diff)


QUANT_KEY = re.compile(
    r"^\s*-*(quant\w*|load_in_\dbit|double_quantization|bnb_4bit_\w+|adapter)[\s:]+(\S+)", re.MULTILINE
)


def quantized(log: str, files: list[Path]) -> str:
    """The quantization the export asks for (its keys) and what the trainer loaded: the load_in_4bit/8bit it logged
    (a BitsAndBytesConfig, or the trainer's own config), and the linear modules of its printed model that are bitsandbytes' Linear4bit / Linear8bitLt (a
    repeated decoder layer is printed once, as ``(0-1): 2 x LlamaDecoderLayer``), and the head's class."""
    keys = [f"{k}={v}" for f in files for k, v in QUANT_KEY.findall(f.read_text())]
    out = [f"export: {' '.join(keys) or 'no quantization key'}"]
    said = re.search(r"Quantizing model to \d+ bit with bitsandbytes\.", log)  # LLaMA-Factory's own line
    if said:
        out.append(f"the trainer logged {said.group(0)!r}")
    config = [k for k in ("load_in_4bit", "load_in_8bit") if re.search(rf'"{k}": true', log)]
    if config:
        extra = (
            re.findall(r'"(bnb_4bit_quant_type|bnb_4bit_use_double_quant)": "?(\w+)', log)
            if config == ["load_in_4bit"]
            else []
        )
        out.append("the trainer logged " + " ".join(config + [f"{k}={v}" for k, v in dict(extra).items()]))
    modules = dict.fromkeys(
        f"{name} {kind}"
        for name, kind in re.findall(r"\((\w+)\): (?:lora\.)?(Linear4bit|Linear8bitLt)\(", log)
        if name != "base_layer"
    )
    layers = re.search(r"\((\d+-\d+)\): (\d+) x (\w+DecoderLayer)", log)
    head = re.search(r"\(lm_head\): (?:\w+\.)?(\w+)\(", log)
    if modules:
        out.append(
            f"printed model: {', '.join(modules)}"
            + (f" in each of {layers.group(2)} layers ({layers.group(1)})" if layers else "")
            + (f"; lm_head {head.group(1)}" if head else "")
        )
    else:
        out.append("no quantized module in the trainer's log" + (" (its model printout has none)" if head else ""))
    return "; ".join(out)


QUANT_CONFIG = """
config = getattr(model.config, "quantization_config", None)
print(json.dumps(config.to_dict() if hasattr(config, "to_dict") else config, default=str, indent=2))
"""
PRINTOUT = {  # the trainer's own model loading, from the export's config, as its train command calls it
    "llamafactory": """
import json, sys, tempfile, yaml
from llamafactory.hparams import get_train_args
from llamafactory.model import load_model, load_tokenizer
args = yaml.safe_load(open(sys.argv[1]))
args["output_dir"] = tempfile.mkdtemp()  # the run's own output directory is not empty any more
model_args, data_args, training_args, finetuning_args, _ = get_train_args(args)
model = load_model(load_tokenizer(model_args)["tokenizer"], model_args, finetuning_args, is_trainable=True)
print(model)
"""
    + QUANT_CONFIG,
    "axolotl": """
import json, sys
from axolotl.cli.config import load_cfg
from axolotl.train import setup_model_and_tokenizer
model = setup_model_and_tokenizer(load_cfg(sys.argv[1]))[0]
print(model)
"""
    + QUANT_CONFIG,
}
CONFIG_FILES = {"llamafactory": "llamafactory.yaml", "axolotl": "axolotl.yaml"}


def printout(target: str, out_dir: Path, env: dict) -> str:
    """LLaMA-Factory and axolotl print no model: the model their own loaders (LLaMA-Factory's ``load_model``, axolotl's
    ``setup_model_and_tokenizer``, as their train commands call them) build from the export's config, printed, with
    its quantization_config."""
    if target not in PRINTOUT:
        return ""
    proc = subprocess.run(
        ["nice", "-n", "10", f"{VENVS[target]}/bin/python", "-c", PRINTOUT[target], CONFIG_FILES[target]],
        cwd=out_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    return proc.stdout


def failure(text: str) -> str:
    """The error that stopped a run: the last exception or validation message that is not the launcher's own."""
    lines = [ln.strip() for ln in text.splitlines()]
    errors = [
        ln
        for ln in lines
        if re.match(r"(\w+\.)*\w*(Error|Exception)\b.*:|Value error,", ln) and "CalledProcessError" not in ln
    ]
    return errors[-1] if errors else " | ".join(lines[-3:])


def logged(text: str) -> str:
    """Steps (the progress bar of the run's STEPS) and the last loss the trainer printed."""
    losses = re.findall(r"['\"]?loss['\"]?\s*[:=]\s*['\"]?([0-9]+\.[0-9]+)", text)
    bars = [done for done, total in re.findall(r"(\d+)/(\d+) \[", text) if int(total) == STEPS]
    return f"steps {bars[-1] if bars else '?'}/{STEPS}, last loss {losses[-1] if losses else '?'}"


KERNELS = ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel", "lora_embedding_kernel")


def cpu_overrides(target: str, out_dir: Path) -> list[str]:
    """What this CPU run changes in an export: axolotl turns its fused LoRA kernels on where a LoRA config leaves them
    unset (``utils/schemas/validation.py`` lora_kernels_auto_enable: adapter lora or qlora, not lora with
    load_in_8bit), and they run on CUDA only (Triton SwiGLU, bitsandbytes' CUDA dequantization); the export leaves them
    to axolotl, for the GPU it runs on. Here they are set to false, appended to the config."""
    import yaml

    if target != "axolotl":
        return []
    path = out_dir / "axolotl.yaml"
    cfg = yaml.safe_load(path.read_text())
    if cfg.get("adapter") not in ("lora", "qlora") or cfg.get("load_in_8bit") or any(k in cfg for k in KERNELS):
        return []
    path.write_text(
        path.read_text()
        + "# bench_export_run on CPU: axolotl's LoRA kernels need CUDA\n"
        + "".join(f"{k}: false\n" for k in KERNELS)
    )
    return [f"{k}: false" for k in KERNELS]


def run(target: str, kind: str, root: Path, model: Path, data: Path) -> None:
    from planner.export import export_plan

    plan = make(kind, model, data)
    where = root / f"{target}-{kind}"
    shutil.rmtree(where, ignore_errors=True)  # a trainer resumes from checkpoints it finds in its output directory
    plan_path = plan.save(where / "plan.yaml")
    result = export_plan(plan_path, target, where / "export")
    overrides = cpu_overrides(target, result.out_dir)
    venv = Path(VENVS[target])
    env = {
        **os.environ,
        "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
        "VIRTUAL_ENV": str(venv),
        "CUDA_VISIBLE_DEVICES": "",
        "AXOLOTL_DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": "",
    }
    env.pop("PYTHONHOME", None)
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["nice", "-n", "10", *COMMANDS[target]],
        cwd=result.out_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    wall = time.perf_counter() - t0
    (where / "log.txt").write_text(proc.stdout + proc.stderr)
    print(f"\n{target} / {kind}: cd {result.out_dir.relative_to(root)} && {' '.join(COMMANDS[target])}")
    print(f"  files: {', '.join(p.name for p in result.written)}")
    for line in result.lost:
        print(f"  loss line: {line}")
    if overrides:
        print(
            f"  changed for this CPU run:   {', '.join(overrides)} appended (axolotl's LoRA kernels run on CUDA only)"
        )
    print(f"  exit {proc.returncode} in {wall:.0f} s; {logged(proc.stdout + proc.stderr)}")
    print(f"  the plan trains:            {planned(plan)}")
    if plan.train.quantize:
        log = proc.stdout + proc.stderr
        log += printout(target, result.out_dir, env)
        print(f"  quantized ({plan.train.quantize}):      {quantized(log, result.written)}")
    if proc.returncode == 0:
        print(f"  changed vs initial weights: {changed(model, result.out_dir / 'output')}")
        print(
            f"  first example as trained:   {first_example(target, proc.stdout + proc.stderr, result.out_dir / 'output', model)}"
        )
    else:
        print(f"  stopped by: {failure(proc.stdout + proc.stderr)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/tmp/bench_export_run")
    parser.add_argument("--only", default=",".join(PLANS))
    parser.add_argument(
        "--plans", default=None, help="plan kinds to run (comma-separated), default: each target's PLANS"
    )
    args = parser.parse_args()
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    model, (data, text) = build_model(root), build_data(root)
    print(
        f"tiny llama: {model} (2 layers, hidden 64); data: {data} (40 instruction/response records; the text plan: "
        f"{text.name}, the same sums as 40 text records); {STEPS} steps, CPU"
    )
    print(
        "planner reads the first record as prompt + newline + answer + EOS, the loss on the answer: "
        f"{'What is 1 plus 1?' + chr(10) + '2<|im_end|>'!r}, loss on '2<|im_end|>'"
    )
    for target in args.only.split(","):
        if not (Path(VENVS[target]) / "bin").is_dir():
            print(f"\n{target}: not installed in {VENVS[target]}; skipped")
            continue
        code = "import importlib.metadata as m, sys; print(*(f'{p} {m.version(p)}' for p in sys.argv[1:]))"
        version = subprocess.run(
            [f"{VENVS[target]}/bin/python", "-c", code, *PACKAGES[target]], capture_output=True, text=True, check=False
        ).stdout.strip()
        print(f"\n== {target} ({version})")
        for kind in PLANS[target]:
            if args.plans and kind not in args.plans.split(","):
                continue
            run(target, kind, root, model, text if kind == "text" else data)


PACKAGES = {
    "swift": ["ms-swift", "torch", "transformers", "peft"],
    "llamafactory": ["llamafactory", "badam", "torch", "transformers"],
    "axolotl": ["axolotl", "torch", "transformers"],
}

if __name__ == "__main__":
    main()
