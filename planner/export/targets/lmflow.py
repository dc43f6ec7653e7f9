"""Target ``lmflow``: a shell script running LMFlow's ``examples/finetune.py`` with LISA flags.

Keys and rules read in LMFlow's code (commit f3597db), ``src/lmflow/args.py``:
- ``FinetunerArguments(TrainingArguments)``: ``use_lisa``, ``lisa_activated_layers`` (2),
  ``lisa_interval_steps`` (20), ``lisa_layers_attribute`` (``model.model.layers``), plus every
  transformers ``TrainingArguments`` field (``learning_rate``, ``bf16``, ``optim``, ...);
- ``ModelArguments``: ``model_name_or_path``, ``torch_dtype``; ``DatasetArguments``:
  ``dataset_path``, ``block_size``.
LMFlow's ``DynamicLayerActivationCallback`` keeps the ``*ForCausalLM`` module as ``self.model``
and evaluates ``"self." + lisa_layers_attribute``: its path has one more ``model.`` in front of
``plan.layers_attribute`` (llama: ``model.model.layers``, gpt2: ``model.transformer.h``). It draws
``np.random.choice(range(L), n, replace=False)`` every K steps (step 0 included) and toggles
only ``requires_grad`` of the decoder layers (``src/lmflow/pipeline/utils/lisa_trainer.py``):
everything else (embeddings, head) trains throughout, and the Trainer's optimizer keeps the
moments of layers that go frozen. Without ``--use_lisa`` every parameter trains.

Chat data (``src/lmflow/utils/constants.py`` ``CONVERSATION_DATASET_DESCRIPTION``): ``{"type": "conversation",
"instances": [{"system": ..., "messages": [{"role": "user", "content": ...}, ...]}]}``, the system prompt a key of
its own. ``src/lmflow/models/hf_decoder_model.py`` ``tokenize``: without ``conversation_template`` the tokenizer's
chat template (else LMFlow's ``empty`` one); ``src/lmflow/tokenization/hf_decoder_model.py``
``conversation_tokenize_function`` labels the tokens ``apply_chat_template(..., return_assistant_tokens_mask=True)``
marks, which only a template with ``{% generation %}`` blocks marks, and those of every assistant turn.
"""

from __future__ import annotations

import shlex

from planner.export.base import (
    hf_optim,
    Export,
    Exporter,
    draw_loss,
    lever_items,
    fixed_layers,
    active_layer_count,
    lora_as_full_loss,
    model_id,
    model_loss,
    precision,
    register_exporter,
    stale_state_loss,
)
from planner.export.data import data_of, output_dir


def lmflow_layers_attribute(layers_attribute: str) -> str:
    """LMFlow's path: relative to the callback object, whose ``model`` is the ``*ForCausalLM``."""
    return f"model.{layers_attribute}"


@register_exporter("lmflow")
class LMFlowExporter(Exporter):
    description = "LMFlow finetune command (--use_lisa 1 --lisa_activated_layers N --lisa_interval_steps K ...)"

    def render(self, plan) -> Export:
        bf16, fp16 = precision(plan)
        n = active_layer_count(plan)
        every_layer = fixed_layers(plan) == list(range(plan.num_layers))
        lisa: list[tuple[str, object]] = (
            []
            if every_layer
            else [
                ("use_lisa", 1),
                ("lisa_activated_layers", n),
                ("lisa_interval_steps", plan.period),
                ("lisa_layers_attribute", lmflow_layers_attribute(plan.layers_attribute)),
            ]
        )
        data = data_of(plan, "LMFlow", formats=())
        args: list[tuple[str, object]] = lisa + [
            ("max_steps", data.steps),
            ("learning_rate", plan.learning_rate),
            ("optim", hf_optim(plan.train.optimizer)),
            ("per_device_train_batch_size", plan.train.batch_size),
            ("block_size", plan.train.seq_len),
            ("torch_dtype", plan.train.dtype),
            ("gradient_checkpointing", int(plan.train.gradient_checkpointing)),
            ("bf16", int(bf16)),
            ("fp16", int(fp16)),
            ("do_train", 1),
        ]
        lost = model_loss(plan) + [line for line in data.lost if "convert it" not in line]
        # LMFlow reads a directory of its own JSON: {"type": "text2text", "instances": [{"input": ..., "output": ...}]}
        if data.is_chat:
            lost.append(
                f'data: LMFlow reads a directory of its own JSON format, for chat {{"type": "conversation", "instances": '
                f'[{{"system": the leading system turn\'s content, "messages": the other turns}}]}}, not {data.path}; '
                f"convert it and pass the directory as DATASET_DIR"
            )
            lost.append(
                "data: LMFlow's conversation tokenizer puts the loss on the tokens the chat template marks with "
                "{% generation %} (none in most templates) and on every assistant turn; planner's is on the last "
                "assistant turn as the template renders it"
            )
        else:
            lost.append(
                f'data: LMFlow reads a directory of its own JSON format ({{"type": "text_only" or "text2text", "instances": '
                f"[...]}}), not {data.path}; convert it and pass the directory as DATASET_DIR"
            )
        if not every_layer:  # every layer at once is plain full fine-tuning, LMFlow's default
            lost += draw_loss(
                plan,
                "LMFlow LISA",
                f"--lisa_activated_layers {n} drawn uniformly from all {plan.num_layers} layers every {plan.period} steps",
            )
            lost += stale_state_loss(plan, "LMFlow's LISA")
        if not plan.train_embeddings or not plan.train_head:
            frozen = [part for part, on in (("embeddings", plan.train_embeddings), ("head", plan.train_head)) if not on]
            lost.append(f"frozen {' and '.join(frozen)}: LMFlow trains every parameter outside the decoder layers")
        if plan.lora_rank:
            lost.append(
                lora_as_full_loss(
                    plan,
                    "LMFlow's LISA switches whole layers (--use_lora is a separate mode)",
                    "exported as full fine-tuning of the layers",
                )
            )
        levers = lever_items(plan, self.name)
        args += list(levers.keys.items())
        lost += levers.lost
        lines = [
            "#!/usr/bin/env bash",
            f"# planner export --to lmflow: plan for {plan.model} ({plan.num_layers} layers); run from an LMFlow checkout",
            "# usage: bash lmflow_finetune.sh DATASET_DIR [OUTPUT_DIR] [MODEL]",
            f"# data: the study trained on {data.path} ({data.steps} steps): DATASET_DIR holds it in LMFlow's JSON format",
            "set -euo pipefail",
            'DATASET="${1:?usage: lmflow_finetune.sh DATASET_DIR [OUTPUT_DIR] [MODEL]}"',
            f'OUTPUT="${{2:-{output_dir("lmflow")}}}"',
            f'MODEL="${{3:-{model_id(plan)}}}"',
            "ARGS=(",
            '  --model_name_or_path "$MODEL"',
            '  --dataset_path "$DATASET"',
            '  --output_dir "$OUTPUT"',
            *(f"  --{k} {shlex.quote(str(v))}" for k, v in args),
            ")",
            'python examples/finetune.py "${ARGS[@]}"',
        ]
        return Export(self.name, {"lmflow_finetune.sh": "\n".join(lines) + "\n"}, lost)

    def keys(self, filename: str, text: str) -> set[str]:
        return {tok[2:] for tok in shlex.split(text, comments=True) if tok.startswith("--")}
