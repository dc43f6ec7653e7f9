"""Target ``hf``: a runnable Hugging Face Trainer script driven by the planner's own layer sampler.

Two files: ``training_args.json`` (keyword arguments of ``transformers.TrainingArguments``, every
key one of its dataclass fields) and ``train_layerwise.py`` (reads ``--model``, default the plan's
model, and ``--data`` in every format ``planner tune`` reads, with planner's own reader and
tokenization; builds the Trainer, adds
:class:`planner.sampling.hf.LayerwiseCallback` around a :class:`planner.sampling.LayerSampler`
configured from the plan, trains). The sampler runs every scorer, ``min_depth``, frozen or
trainable embeddings/head and LoRA inside layers, so nothing of the plan is lost.
"""

from __future__ import annotations

import ast
import dataclasses
import json

from planner.errors import PlannerError
from planner.export.base import (
    hf_optim,
    Export,
    Exporter,
    fixed_layers,
    lever_items,
    active_layer_count,
    min_depth,
    model_id,
    model_loss,
    precision,
    register_exporter,
)
from planner.export.data import output_dir

ARGS_FILE = "training_args.json"
SCRIPT_FILE = "train_layerwise.py"

SCRIPT = """\
#!/usr/bin/env python
\"\"\"Layer-wise fine-tuning of {model} with the Hugging Face Trainer (written by `planner export --to hf`).

Plan: {summary}
Usage: python train_layerwise.py [--data FILE] [--model MODEL_DIR_OR_ID] [--output-dir DIR] [--max-steps N]
(--data defaults to what the study trained on: {data})
--data takes what `planner tune --data` takes: .jsonl/.json/.csv/.tsv records with messages (chat turns, rendered
with the model's chat template or as plain `role: content` lines; the loss is on the last assistant turn),
instruction/response, prompt/completion or question/answer (optional input; the loss is on the answer), or a text
field, or a .txt/.md file (one example per line, or per paragraph).
\"\"\"

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

from planner.data.files import read_records, to_pairs
from planner.data.load import PROMPT_SEPARATOR, _tokenize
from planner.data.workload import collate
from planner.errors import PlannerError
from planner.sampling import LayerSampler
from planner.sampling.hf import LayerwiseCallback

PLAN = {plan}
HERE = Path(__file__).resolve().parent


def read_examples(path, tokenizer, seq_len):
    \"\"\"Token examples of --data, read and tokenized exactly as `planner tune` reads them.\"\"\"
    kind, pairs = to_pairs(read_records(path), path)
    examples = _tokenize(pairs, kind, tokenizer, PROMPT_SEPARATOR, seq_len)
    if not examples:
        raise PlannerError(f"--data must hold at least one example of at most {{seq_len}} tokens, but {{path!r}} has none")
    return examples


def prepare(model, seed=0):
    \"\"\"The plan on ``model``: LoRA adapters where the plan has them, and the layer sampler (first draw applied).\"\"\"
    if PLAN["lora_rank"]:  # the adapters the plan's memory was predicted for: the plan's linear maps of every layer
        from planner.cost.trainable import add_lora

        targets = PLAN.get("target_modules")
        model = add_lora(model, PLAN["lora_rank"], select=(lambda names: [n for n in names if n in targets]) if targets else None)
    sampler = LayerSampler(model, active_layers=PLAN["active_layers"], period=PLAN["period"], scorer=PLAN["scorer"],
                           scorer_options=PLAN["scorer_options"], train_embeddings=PLAN["train_embeddings"],
                           train_head=PLAN["train_head"], min_depth=PLAN["min_depth"], seed=seed)
    return model, sampler


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=PLAN["model_id"], help="model directory or hub id (default: %(default)s)")
    parser.add_argument("--data", default=PLAN["data"], required=PLAN["data"] is None,
                        help="training data, in any format `planner tune --data` reads (default: %(default)s)")
    parser.add_argument("--training-args", default=str(HERE / "{args_file}"), help="TrainingArguments JSON")
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--seq-len", type=int, default=PLAN["seq_len"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    examples = read_examples(args.data, tokenizer, args.seq_len)
    quant = PLAN.get("quantization_config")
    extra = {{}}
    if quant:  # frozen weights stored by bitsandbytes, as the plan's memory was predicted
        from transformers import BitsAndBytesConfig

        quant = dict(quant)
        if "bnb_4bit_compute_dtype" in quant:
            quant["bnb_4bit_compute_dtype"] = getattr(torch, quant["bnb_4bit_compute_dtype"])
        extra["quantization_config"] = BitsAndBytesConfig(**quant)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, PLAN["dtype"]), **extra)
    if quant:  # peft's casts (other 16-bit parameters to float32); checkpointing is TrainingArguments' to set
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model.config.use_cache = False

    kwargs = json.loads(Path(args.training_args).read_text())
    if args.output_dir is not None:
        kwargs["output_dir"] = args.output_dir
    if args.max_steps is not None:
        kwargs["max_steps"] = args.max_steps
    kwargs["seed"] = args.seed
    training_args = TrainingArguments(**kwargs)

    # the sampler freezes all but the first draw now; the callback adds the frozen layers to the
    # Trainer's optimizer once it exists, and re-draws every `period` optimizer steps
    model, sampler = prepare(model, seed=args.seed)
    trainer = Trainer(model=model, args=training_args, train_dataset=examples, processing_class=tokenizer,
                      data_collator=lambda batch: collate(batch, tokenizer.pad_token_id),
                      callbacks=[LayerwiseCallback(sampler)])
    result = trainer.train()
    summary = {{"global_step": trainer.state.global_step, "train_loss": result.training_loss,
               "switches": sampler.switches, "history": [h["active"] for h in sampler.history]}}
    Path(training_args.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(training_args.output_dir) / "layerwise_history.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({{k: summary[k] for k in ("global_step", "train_loss", "switches")}}))
    if PLAN["lora_rank"] and (PLAN["train_embeddings"] or PLAN["train_head"]):
        # embeddings/head trained in place outside the adapters: an adapter-only save would drop them
        trainer.model.merge_and_unload().save_pretrained(training_args.output_dir)
        tokenizer.save_pretrained(training_args.output_dir)
    else:
        trainer.save_model()


if __name__ == "__main__":
    try:
        main()
    except PlannerError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
"""


def training_args(plan) -> dict:
    """``TrainingArguments`` keyword arguments for ``plan``."""
    bf16, fp16 = precision(plan)
    return {
        "output_dir": output_dir("hf"),
        "learning_rate": plan.learning_rate,
        "per_device_train_batch_size": plan.train.batch_size,
        _checkpointing_key(): plan.train.gradient_checkpointing,
        "optim": hf_optim(plan.train.optimizer),
        "bf16": bf16,
        "fp16": fp16,
        "num_train_epochs": 1,
        "max_steps": plan.steps or -1,  # -1: one epoch
        "logging_steps": 10,
        "save_strategy": "no",
        "report_to": "none",
        "remove_unused_columns": False,
    }


def _checkpointing_key() -> str:
    """transformers >= 5 renamed ``gradient_checkpointing`` to ``activation_checkpointing`` (old name deprecated)."""
    from transformers import TrainingArguments  # transformers: deferred, the exporters load with 'planner --help'

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def script_plan(plan) -> dict:
    """What the script needs of the plan (a static plan becomes the ``fixed`` scorer on its layers)."""
    fixed = fixed_layers(plan)
    static = fixed is not None
    return {
        "model": plan.model,
        "model_id": model_id(plan),
        "active_layers": active_layer_count(plan),
        "period": plan.period,
        "scorer": "fixed" if static else plan.scorer,
        "scorer_options": {"layers": fixed} if static else dict(plan.scorer_options),
        "train_embeddings": plan.train_embeddings,
        "train_head": plan.train_head,
        "min_depth": 0 if static else min_depth(plan),
        "lora_rank": plan.lora_rank,
        "dtype": plan.train.dtype,
        "seq_len": plan.train.seq_len,
        "data": plan.data.path if plan.data is not None and plan.data.path else None,
        **lever_items(plan, "hf").keys,  # quantization_config, target_modules
    }


@register_exporter("hf")
class HFExporter(Exporter):
    description = "Hugging Face Trainer script with planner's LayerwiseCallback + training_args.json"

    def render(self, plan) -> Export:
        # planner.sampling (torch): deferred, the exporters load with 'planner --help'
        from planner.sampling.scorers import SCORERS, scorer_options

        if plan.scorer not in SCORERS:  # the script would fail at its first line of training
            raise PlannerError(
                f"plan scorer must be one of {sorted(SCORERS)} for the hf target, but got {plan.scorer!r}"
            )
        unknown = sorted(set(plan.scorer_options) - set(scorer_options(plan.scorer)))
        if unknown and plan.layers is None:
            raise PlannerError(
                f"plan scorer {plan.scorer!r} takes options {scorer_options(plan.scorer)}, but got unknown {unknown}"
            )
        sp = script_plan(plan)
        what = f"{sp['active_layers']} of {plan.num_layers} layers ({plan.layers_attribute})"
        what += (
            f", fixed {sp['scorer_options']['layers']}"
            if sp["scorer"] == "fixed"
            else f", scorer {plan.scorer!r}, re-drawn every {plan.period} steps"
        )
        script = SCRIPT.format(model=plan.model, summary=what, plan=_pyrepr(sp), args_file=ARGS_FILE, data=sp["data"])
        # the script reads --data as planner does (every format); without a recorded file it requires --data
        return Export(
            self.name,
            {SCRIPT_FILE: script, ARGS_FILE: json.dumps(training_args(plan), indent=2) + "\n"},
            model_loss(plan) + lever_items(plan, self.name).lost,
        )

    def keys(self, filename: str, text: str) -> set[str]:
        if filename == ARGS_FILE:
            return set(json.loads(text))
        ast.parse(text)  # the script must be valid Python; its settings live in PLAN, not as config keys
        return set()


def _pyrepr(data: dict) -> str:
    """A Python literal of ``data`` (JSON true/false/null spelled as Python)."""
    lines = ["{"] + [f"    {k!r}: {v!r}," for k, v in data.items()] + ["}"]
    return "\n".join(lines)
