"""Target ``swift``: a shell script running ms-swift's ``swift sft`` (LISA, a static layer set, or LoRA).

Keys and rules read in ms-swift's code (4.6.0 as installed from PyPI):
- ``swift/trainers/arguments.py``: ``lisa_activated_layers`` (0: off), ``lisa_step_interval`` (20);
  ``swift/callbacks/lisa.py`` ``LISACallback`` asserts ``tuner_type == 'full'`` and, at
  ``on_train_begin`` (the optimizer already holds every trainable parameter), takes the model
  architecture's layer list (else the first ``nn.ModuleList``) and draws
  ``np.random.choice(range(L), n, replace=False)``; it draws again at ``on_step_begin`` of step 0,
  step 1 and every K-th step, and only toggles ``requires_grad`` of the layers: the Trainer's
  optimizer keeps the moments of layers that go frozen; everything outside the layers trains
  unless frozen by name.
- ``swift/arguments/tuner_args.py`` and ``swift/utils/transformers_utils.py``: in full tuning
  every parameter trains, then ``freeze_parameters_ratio`` (1: all) and ``freeze_parameters``
  (name prefixes, ``str.startswith``) freeze, then ``trainable_parameters`` (prefixes) unfreeze;
  ``target_regex`` replaces ``target_modules`` for LoRA (peft: a string is a full-match regex of
  module paths); ``modules_to_save`` as in peft.
- ``swift/arguments/base_args/{model,data,template}_args.py``: ``model``, ``model_type``,
  ``torch_dtype``, ``dataset`` (a local file or hub name), ``columns`` (record field -> swift
  column), ``template``, ``use_chat_template`` (false: the generation template, prompt then answer),
  ``max_length``; the rest are ``transformers.TrainingArguments`` fields.
- chat data: ``swift/dataset/preprocessor/core.py`` ``MessagesPreprocessor`` reads a ``messages`` column of
  ``role``/``content`` turns (system, user, assistant) as it is; ``swift/arguments/base_args/template_args.py``:
  ``template`` defaults to the model type's registered template (``swift/template``: ms-swift's own rendering of
  each model's chat format; ``template_backend: jinja``, the tokenizer's template, is for inference only),
  ``use_chat_template`` to true, ``loss_scale`` ``default`` (every assistant turn) or ``last_round``
  (``swift/loss_scale/base.py`` ``LossScale``: only the last round's assistant turn).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from planner.export.base import (
    hf_optim,
    Export,
    lever_items,
    Exporter,
    draw_loss,
    fixed_layers,
    active_layer_count,
    model_id,
    model_loss,
    outside_params,
    precision,
    register_exporter,
    stale_state_loss,
)
from planner.export.data import data_of, output_dir
from planner.export.names import arch_names
from planner.export.targets.peft import PeftExporter

SCRIPT_FILE = "swift_sft.sh"
SWIFT_MODEL_TYPES = {
    "llama": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "mistral": "mistral",
    "gemma": "gemma",
    "gemma2": "gemma2",
    "phi3": "phi3",
}  # swift/model/constant.py LLMModelType names of HF model types
SWIFT_COLUMNS = {
    "prompt": "query",
    "input": "input",
    "answer": "response",
    "text": "response",
    "messages": "messages",
}  # swift's standard columns


def layer_prefix(layers_path: str, i: int) -> str:
    """A name prefix of exactly layer ``i`` (the trailing dot keeps layer 1 from matching 10..19)."""
    return f"{layers_path}.{i}."


def lora_regex(layers_path: str, layers: list[int], modules: tuple[str, ...]) -> str:
    """A ``target_regex`` matching the linear maps ``modules`` of ``layers`` (peft full-matches module paths)."""
    return rf"^{re.escape(layers_path)}\.({'|'.join(str(i) for i in sorted(layers))})\..*\.({'|'.join(modules)})$"


@register_exporter("swift")
class SwiftExporter(Exporter):
    description = (
        "ms-swift `swift sft` script: LISA (--lisa_activated_layers/--lisa_step_interval), a static set, or LoRA"
    )

    def render(self, plan) -> Export:
        bf16, fp16 = precision(plan)
        data = data_of(plan, "ms-swift")
        lost = model_loss(plan) + data.lost
        args: list[tuple[str, object]] = []
        if plan.lora_rank:
            args += self._lora(plan, lost)
        else:
            args += self._full(plan, lost)
        args += [
            ("torch_dtype", plan.train.dtype),
            ("learning_rate", plan.learning_rate),
            ("optim", hf_optim(plan.train.optimizer)),
            ("per_device_train_batch_size", plan.train.batch_size),
            ("max_length", plan.train.seq_len),
            ("max_steps", data.steps),
            ("gradient_checkpointing", str(plan.train.gradient_checkpointing).lower()),
            ("bf16", str(bf16).lower()),
            ("fp16", str(fp16).lower()),
            ("report_to", "none"),
        ]
        if data.is_chat:  # the model's chat format, the loss on the last assistant turn only, as planner trains
            args.append(("loss_scale", "last_round"))
            lost.append(
                "data: ms-swift renders the turns with its own registered template for the model type, not the "
                "tokenizer's chat template that planner applies (swift's jinja backend is for inference only): the "
                "same text where ms-swift's template reproduces the model's"
            )
        elif not data.is_text:
            lost.append(
                "data: ms-swift's generation template (--use_chat_template false) joins prompt and answer without "
                "the newline planner puts between them"
            )
        # swift finds a hub model's type itself; a local directory needs it named
        model_type = SWIFT_MODEL_TYPES.get(plan.model_type) if Path(model_id(plan)).is_dir() else None
        columns = {f: SWIFT_COLUMNS[role] for role, f in data.fields.items() if SWIFT_COLUMNS[role] != f}
        levers = lever_items(plan, self.name)
        args += list(levers.keys.items())
        lost += levers.lost
        lines = [
            "#!/usr/bin/env bash",
            f"# planner export --to swift: plan for {plan.model} ({plan.num_layers} layers), {data.steps} steps on {data.path}",
            "# usage: bash swift_sft.sh [OUTPUT_DIR] [MODEL]",
            "set -euo pipefail",
            f'OUTPUT="${{1:-{output_dir("swift")}}}"',
            f'MODEL="${{2:-{model_id(plan)}}}"',
            "ARGS=(",
            '  --model "$MODEL"',
            *([f"  --model_type {model_type}"] if model_type else []),
            f"  --dataset {shlex.quote(data.path)}",
            *(["  --use_hf true"] if data.format == "datasets" else []),
            *([f"  --columns {shlex.quote(json.dumps(columns))}"] if columns else []),
            *([] if data.is_chat else ["  --template default", "  --use_chat_template false"]),
            '  --output_dir "$OUTPUT"',
            *(f"  --{k} {' '.join(shlex.quote(str(x)) for x in (v if isinstance(v, list) else [v]))}" for k, v in args),
            ")",
            'swift sft "${ARGS[@]}"',
        ]
        return Export(self.name, {SCRIPT_FILE: "\n".join(lines) + "\n"}, lost)

    @staticmethod
    def _full(plan, lost: list[str]) -> list[tuple[str, object]]:
        """Full tuning: a static set by name prefixes, else LISA with the outside parameters frozen by name."""
        names = arch_names(plan)
        wanted = outside_params(plan)
        args: list[tuple[str, object]] = [("tuner_type", "full")]
        fixed = fixed_layers(plan)
        if fixed is not None:  # a static plan (scorer_kind)
            if fixed == list(range(plan.num_layers)) and set(wanted) == set(_outside(names)):
                return args  # every parameter: plain full fine-tuning
            args += [
                ("freeze_parameters_ratio", 1),
                ("trainable_parameters", [layer_prefix(names.layers_path, i) for i in fixed] + wanted),
            ]
            return args
        n = active_layer_count(plan)
        args += [("lisa_activated_layers", n), ("lisa_step_interval", plan.period)]
        frozen = [p for p in _outside(names) if p not in wanted]
        if frozen:
            args.append(("freeze_parameters", frozen))
        lost += draw_loss(
            plan,
            "ms-swift's LISA",
            f"--lisa_activated_layers {n} drawn uniformly from all {plan.num_layers} layers every {plan.period} steps",
        )
        if plan.period > 1:
            lost.append(
                f"schedule: ms-swift's LISA also re-draws at step 1, so its first draw trains 1 step and the second {plan.period - 1}"
            )
        lost += stale_state_loss(plan, "ms-swift's LISA")
        return args

    @staticmethod
    def _lora(plan, lost: list[str]) -> list[tuple[str, object]]:
        """LoRA on the plan's layers, the way the peft target writes it (same layers, rank, saved modules)."""
        peft = PeftExporter().render(plan)
        config = json.loads(peft.files["adapter_config.json"])
        # the model line is already there; the levers' lines are ms-swift's own (render adds them), not peft's
        # (peft's says "4-bit: peft loads them in float32" where --quant_bits loads them quantized)
        levers = set(lever_items(plan, "peft").lost)
        lost += [line for line in peft.lost if line not in lost and line not in levers]
        names = arch_names(plan)
        args: list[tuple[str, object]] = [
            ("tuner_type", "lora"),
            ("lora_rank", config["r"]),
            ("lora_alpha", config["lora_alpha"]),
            ("lora_dropout", config["lora_dropout"]),
            (
                "target_regex",
                lora_regex(names.layers_path, config["layers_to_transform"], tuple(config["target_modules"])),
            ),
        ]
        if config.get("modules_to_save"):
            args.append(("modules_to_save", list(config["modules_to_save"])))
        if config.get("ensure_weight_tying"):  # swift builds its LoraConfig without it
            lost.append(
                f"tied embeddings: ms-swift passes no ensure_weight_tying to peft, so {names.output_embedding} trains as an "
                f"untied copy and the input embedding {names.input_embedding} stays frozen"
            )
        return args

    def keys(self, filename: str, text: str) -> set[str]:
        return {tok[2:] for tok in shlex.split(text, comments=True) if tok.startswith("--")}


def _outside(names) -> list[str]:
    """Parameter names outside the decoder layers."""
    return [p for p in names.param_names if not p.startswith(names.layers_path + ".")]
