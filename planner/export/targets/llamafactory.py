"""Target ``llamafactory``: LLaMA-Factory YAML, BAdam layer mode (dynamic plans) or freeze tuning (static).

Keys confirmed against LLaMA-Factory's ``src/llamafactory/hparams/finetuning_args.py``:
- ``BAdamArgument``: ``use_badam``, ``badam_mode`` (layer | ratio), ``badam_start_block``,
  ``badam_switch_mode`` (ascending | descending | random | fixed), ``badam_switch_interval`` (50);
  BAdam's layer mode updates one decoder layer (block) at a time with embeddings and head
  frozen, and resets the optimizer state at every switch;
- ``FreezeArguments``: ``freeze_trainable_layers`` (n > 0: the last n layers, n < 0: the first
  n), ``freeze_trainable_modules`` (``all``), ``freeze_extra_modules`` (comma-separated leaf
  names of modules outside the layers; ``model/adapter.py`` ``_setup_freeze_tuning`` checks them
  against ``name.split(".")[-2]`` of every non-layer parameter);
- ``FinetuningArguments``: ``stage``, ``finetuning_type`` (lora | oft | freeze | full),
  ``pure_bf16``; ``ModelArguments``: ``model_name_or_path``, ``disable_gradient_checkpointing``
  (checkpointing is on by default); ``DataArguments``: ``cutoff_len``; plus transformers
  ``TrainingArguments`` (``do_train``, ``output_dir``, ``learning_rate``, ``optim``, ...).
"""

from __future__ import annotations

import yaml

from planner.export.base import (HF_OPTIM, Export, Exporter, cyclic_order, fixed_layers, gamma, model_id, precision,
                                 register_exporter, scorer_kind)
from planner.export.names import arch_names

BADAM_KEYS = ("use_badam", "badam_mode", "badam_start_block", "badam_switch_mode", "badam_switch_interval")
FREEZE_KEYS = ("freeze_trainable_layers", "freeze_trainable_modules", "freeze_extra_modules")
# TrainingArguments fields among the keys (checked against transformers by the tests)
TRAINING_ARGS = frozenset({"do_train", "output_dir", "learning_rate", "optim", "per_device_train_batch_size", "bf16", "fp16"})


def freeze_block(num_layers: int, layers: list[int]) -> tuple[int, list[int]]:
    """The ``freeze_trainable_layers`` value nearest to ``layers`` and the layers it trains.

    Exact when ``layers`` is the top (n > 0) or bottom (n < 0) block; otherwise the block on the
    side where the plan's layers sit (by their mean depth).
    """
    n = len(layers)
    top, bottom = list(range(num_layers - n, num_layers)), list(range(n))
    if sorted(layers) == bottom and sorted(layers) != top:
        return -n, bottom
    if sorted(layers) == top:
        return n, top
    mean = sum(layers) / n
    return (n, top) if mean >= (num_layers - 1) / 2 else (-n, bottom)


@register_exporter("llamafactory")
class LlamaFactoryExporter(Exporter):
    description = "LLaMA-Factory YAML: BAdam layer mode (dynamic plans) or finetuning_type: freeze (static plans)"
    allowed_keys = frozenset({
        *BADAM_KEYS, *FREEZE_KEYS, "model_name_or_path", "stage", "do_train", "finetuning_type", "output_dir",
        "learning_rate", "optim", "per_device_train_batch_size", "cutoff_len", "bf16", "fp16", "pure_bf16",
        "disable_gradient_checkpointing",
    })

    def render(self, plan) -> Export:
        bf16, fp16 = precision(plan)
        cfg: dict = {"model_name_or_path": model_id(plan), "stage": "sft", "do_train": True}
        lost: list[str] = []
        kind = scorer_kind(plan)
        if kind == "static":
            layers = fixed_layers(plan)
            n, trained = freeze_block(plan.num_layers, layers)
            cfg.update(finetuning_type="freeze", freeze_trainable_layers=n, freeze_trainable_modules="all")
            if trained != layers:
                lost.append(f"fixed layers {layers}: freeze_trainable_layers selects only the first or last n layers; nearest: {n} trains {trained}")
            extra, lost_parts = self._extra_modules(plan)
            lost += lost_parts
            if extra:
                cfg["freeze_extra_modules"] = ",".join(extra)
            if plan.lora_rank:
                lost.append(f"LoRA r={plan.lora_rank} inside the layers: LLaMA-Factory's LoRA has no per-layer selection; exported as freeze tuning of the layers")
        else:
            mode = self._switch_mode(plan, lost)
            cfg.update(finetuning_type="full", use_badam=True, badam_mode="layer", badam_switch_mode=mode,
                       badam_switch_interval=plan.period)
            if mode in ("ascending", "descending") and plan.scorer_options.get("start_block"):
                cfg["badam_start_block"] = int(plan.scorer_options["start_block"])
            if gamma(plan) != 1:
                lost.append(f"active_layers={gamma(plan)}: BAdam's layer mode trains one layer at a time; nearest: 1 layer per {plan.period} steps")
            if plan.train.min_depth > 0:
                below = "layer 0" if plan.train.min_depth == 1 else f"layers 0..{plan.train.min_depth - 1}"
                lost.append(f"min_depth={plan.train.min_depth}: BAdam visits all {plan.num_layers} layers, {below} included")
            if plan.train_embeddings or plan.train_head:
                parts = [p for p, on in (("embeddings", plan.train_embeddings), ("head", plan.train_head)) if on]
                lost.append(f"trainable {' and '.join(parts)}: BAdam's layer mode keeps {'them' if len(parts) > 1 else 'it'} frozen")
            if plan.lora_rank:
                lost.append(f"LoRA r={plan.lora_rank} inside the layers: BAdam cannot be combined with LoRA; exported as full-parameter BAdam")
        cfg.update(output_dir="saves/planner", learning_rate=plan.learning_rate, optim=HF_OPTIM[plan.train.optimizer],
                   per_device_train_batch_size=plan.train.batch_size, cutoff_len=plan.train.seq_len, bf16=bf16, fp16=fp16)
        if plan.train.amp != "none":
            lost.append(f"amp={plan.train.amp} over float32 weights: LLaMA-Factory loads the frozen weights in {plan.train.amp} (trainable ones upcast to float32)")
        if plan.train.dtype == "bfloat16":
            cfg["pure_bf16"] = True
        elif plan.train.dtype == "float16":
            lost.append("dtype=float16 weights without autocast: LLaMA-Factory has pure_bf16 only; nearest: fp16 autocast")
            cfg["fp16"] = True
        if not plan.train.gradient_checkpointing:
            cfg["disable_gradient_checkpointing"] = True
        header = (f"# planner export --to llamafactory: plan for {plan.model} ({plan.num_layers} layers)\n"
                  "# add your `dataset` and `template`, then: llamafactory-cli train llamafactory.yaml\n")
        return Export(self.name, {"llamafactory.yaml": header + yaml.safe_dump(cfg, sort_keys=False)}, lost)

    @staticmethod
    def _switch_mode(plan, lost: list[str]) -> str:
        kind = scorer_kind(plan)
        if kind == "ordered":
            return cyclic_order(plan)
        if kind == "uniform":
            lost.append("uniform draws: BAdam's random mode visits every layer once per round in a random order")
        elif kind == "static-deferred":
            lost.append(f"scorer {plan.scorer!r} picks a fixed set once training starts: BAdam cannot; nearest: random order")
        else:
            lost.append(f"scorer {plan.scorer!r} (weighted draws): BAdam has no weighted switching; nearest: random order")
        return "random"

    @staticmethod
    def _extra_modules(plan) -> tuple[list[str], list[str]]:
        names = arch_names(plan)
        extra, lost = [], []
        if plan.train_embeddings:
            extra += names.embedding_modules
        if plan.train_head:
            extra += names.head_modules
            if names.tied and not plan.train_embeddings:
                lost.append("train_head without train_embeddings: the output embedding is tied to the input one, so it stays frozen")
        return list(dict.fromkeys(extra)), lost

    def keys(self, filename: str, text: str) -> set[str]:
        return set(yaml.safe_load(text))
