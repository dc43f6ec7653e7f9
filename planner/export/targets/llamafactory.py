"""Target ``llamafactory``: LLaMA-Factory YAML, BAdam layer mode (dynamic plans), freeze tuning (static) or LoRA (static LoRA plans).

Rules read in LLaMA-Factory's code (commit ff6d4d1) and BAdam 1.4:
- ``hparams/finetuning_args.py``: ``BAdamArgument`` (``use_badam``, ``badam_mode``,
  ``badam_start_block``, ``badam_switch_mode``, ``badam_switch_interval``), ``FreezeArguments``
  (``freeze_trainable_layers``: n > 0 the last n layers, n < 0 the first n;
  ``freeze_trainable_modules``; ``freeze_extra_modules``), ``finetuning_type``, ``pure_bf16``.
- ``model/adapter.py`` ``_setup_freeze_tuning``: a parameter trains when one of
  ``".{i}.all"``-style strings (``".{i}."``) or an extra module's leaf name is a *substring* of its
  name; extra names must be leaf names (``name.split(".")[-2]``) of parameters outside numbered
  layers. Trainable weights are upcast to float32 unless ``pure_bf16`` or BAdam.
- ``model/loader.py``: weights load with ``torch_dtype="auto"``, the checkpoint's own dtype.
- ``train/trainer_utils.py`` ``_create_badam_optimizer``: BAdam's ``BlockOptimizer`` with
  ``block_prefix_list=None``; BAdam (``badam/block_optim.py``) then finds blocks with the regex
  ``.*layers.[^.]*\\.`` (embeddings and head never train), switches after the optimizer steps
  where ``(global_step + 1) % K == 0`` (so the first block trains K-1 steps), starts at block
  index ``start_block``, drops the optimizer state at each switch and keeps a float32 copy of
  the active block (``param.clone().float()``).
- the data (``dataset_info.json``, alpaca and sharegpt formats, templates): see
  :mod:`planner.export.targets.llamafactory_data`.

LoRA, read in LLaMA-Factory 0.9.5 (``studies/bench_export_run.py`` runs it):
- ``model/adapter.py`` ``_setup_lora_tuning``: peft's ``LoraConfig(r=lora_rank, lora_alpha, lora_dropout,
  target_modules, modules_to_save=additional_target)``, without ``layers_to_transform`` or ``ensure_weight_tying``;
  ``lora_target`` (split at commas) ``all`` -> ``model_utils/misc.py`` ``find_all_linear_modules`` (leaf names of
  modules whose class is ``*Linear*``, ``lm_head`` excluded), else the names as given, which peft matches as a module
  path or its dotted suffix: full paths (``model.layers.1.self_attn.q_proj``) select layers.
  ``hparams/finetuning_args.py``: ``lora_alpha`` defaults to ``2 * lora_rank``; LoRA with BAdam stops.
- ``model/model_utils/quantization.py``: ``quantization_bit`` 4 or 8 with ``quantization_method: bnb``:
  ``BitsAndBytesConfig(load_in_8bit=True)`` or ``load_in_4bit`` with ``quantization_type`` and
  ``double_quantization`` (default true); ``model/adapter.py`` ``init_adapter`` stops at a quantized model unless
  ``finetuning_type`` is lora or oft.
"""

from __future__ import annotations

import json
import re

import yaml

from planner.export.base import (
    DTYPE_BYTES,
    FP32_BYTES,
    hf_optim,
    Export,
    Exporter,
    lever_items,
    candidates,
    cyclic_order,
    fixed_layers,
    active_layer_count,
    layer_state_bytes,
    lora_as_full_loss,
    min_depth,
    model_id,
    model_loss,
    outside_params,
    precision,
    register_exporter,
    scorer_kind,
)
from planner.export.data import PLACEHOLDER, data_of, output_dir
from planner.export.names import arch_names
from planner.export.targets.peft import PeftExporter
from planner.export.targets.axolotl import whole_layer_quantize_loss
from planner.export.targets.llamafactory_data import DATASET, INFO_FILE, chat_loss, dataset_info

CONFIG_FILE = "llamafactory.yaml"

BADAM_BLOCK = r".*layers.[^.]*\."  # badam/block_optim.py infer_param_groups: layer_pattern


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


def badam_blocks_found(plan) -> bool:
    """Whether BAdam's block regex finds exactly the decoder layers in the model's parameter names."""
    names = arch_names(plan)
    found = {m[0] for n in names.param_names for m in [re.findall(BADAM_BLOCK, n)] if m}
    return found == {f"{names.layers_path}.{i}." for i in range(2)}  # the names come from a 2-layer copy


def badam_start(plan) -> int:
    """BAdam's ``start_block`` (a layer index) for the first block of the plan's cyclic schedule
    (``start_block`` there skips that many blocks of the first round)."""
    cand, n = candidates(plan), active_layer_count(plan)
    blocks = [cand[i : i + n] for i in range(0, len(cand), n)]
    skip = int(plan.scorer_options.get("start_block", 0) or 0)
    if cyclic_order(plan) == "descending":
        return blocks[len(blocks) - 1 - skip][-1]
    return blocks[skip][0]


def badam_extra_bytes(plan) -> int:
    """Bytes BAdam adds over the plan for one active layer: its float32 copy, and float32 moments
    and gradients where the plan's are half precision."""
    n = sum(arch_names(plan).layer_numels)
    e = DTYPE_BYTES[plan.train.dtype]
    extra = FP32_BYTES * n
    if e < FP32_BYTES:
        extra += layer_state_bytes(plan, 1, FP32_BYTES) - layer_state_bytes(plan, 1) + (FP32_BYTES - e) * n
    return extra


@register_exporter("llamafactory")
class LlamaFactoryExporter(Exporter):
    description = "LLaMA-Factory YAML: BAdam layer mode (dynamic plans), finetuning_type: freeze (static plans) or lora (static LoRA plans)"

    def render(self, plan) -> Export:
        bf16, fp16 = precision(plan)
        data = data_of(plan, "LLaMA-Factory")
        cfg: dict = {"model_name_or_path": model_id(plan), "stage": "pt" if data.is_text else "sft", "do_train": True}
        lost: list[str] = model_loss(plan) + data.lost
        kind = scorer_kind(plan)
        layers = fixed_layers(plan)
        if kind != "static" and not badam_blocks_found(plan):
            layers = candidates(plan)[-active_layer_count(plan) :]
            lost.append(
                f"BAdam finds its blocks with the regex {BADAM_BLOCK!r}, which matches no parameter of "
                f"{plan.layers_attribute}.N: LLaMA-Factory would stop at start; nearest: freeze tuning of layers {layers}"
            )
        # a sampled LoRA plan keeps BAdam / freeze tuning (lost lines say so)
        lora = bool(plan.lora_rank) and kind == "static"
        if lora:
            self._lora(plan, cfg, lost)
        elif layers is not None:
            self._freeze(plan, layers, cfg, lost)
        else:
            self._badam(plan, cfg, lost)
        # the export directory holds dataset_info.json: an absolute dataset_dir runs from anywhere
        where = str(self.out_dir.resolve()) if self.out_dir is not None else "export/llamafactory"
        cfg.update(
            dataset=DATASET,
            dataset_dir=where,
            template="empty",
            cutoff_len=plan.train.seq_len,
            max_steps=data.steps,
            output_dir=output_dir("llamafactory"),
            learning_rate=plan.learning_rate,
            optim=hf_optim(plan.train.optimizer),
            per_device_train_batch_size=plan.train.batch_size,
            bf16=bf16,
            fp16=fp16,
            report_to="none",
        )
        if data.path == PLACEHOLDER:  # a relative file_name is read from dataset_dir
            lost = [line.replace(f"at {PLACEHOLDER}", f"at {where}/{PLACEHOLDER}") for line in lost]
        if data.is_text:  # one record per example, as planner reads text (pt packs records into blocks by default)
            cfg["packing"] = False
        elif data.is_chat:  # the model's own template (parsed from its tokenizer), the loss on the last turn only
            del cfg["template"]
            cfg["mask_history"] = True
            lost += chat_loss(data)
        else:
            lost.append(
                "data: LLaMA-Factory's 'empty' template joins prompt and answer without the newline planner puts between them "
                "and ends the answer without EOS"
            )
        lost += self._dtype(plan, cfg, badam=layers is None)
        if not plan.train.gradient_checkpointing:
            cfg["disable_gradient_checkpointing"] = True
        levers = lever_items(plan, self.name)
        if lora:  # lora_target is written above, with the plan's layers (the lora_targets lever's names carry none)
            levers.keys.pop("lora_target", None)
        elif plan.lora_rank and plan.train.quantize:
            lost += whole_layer_quantize_loss(plan, self.name, "LLaMA-Factory", levers.keys)
        cfg.update(levers.keys)
        lost += levers.lost
        header = (
            f"# planner export --to llamafactory: plan for {plan.model} ({plan.num_layers} layers), {data.steps} steps on {data.path}\n"
            f"# run: llamafactory-cli train {CONFIG_FILE} (the dataset is described in {where}/{INFO_FILE})\n"
        )
        files = {
            CONFIG_FILE: header + yaml.safe_dump(cfg, sort_keys=False),
            INFO_FILE: json.dumps(dataset_info(data), indent=2) + "\n",
        }
        return Export(self.name, files, lost)

    @staticmethod
    def _freeze(plan, layers: list[int], cfg: dict, lost: list[str]) -> None:
        n, trained = freeze_block(plan.num_layers, layers)
        cfg.update(finetuning_type="freeze", freeze_trainable_layers=n, freeze_trainable_modules="all")
        if trained != layers:
            lost.append(
                f"fixed layers {layers}: freeze_trainable_layers selects only the first or last n layers; nearest: {n} trains {trained}"
            )
        names = arch_names(plan)
        wanted = outside_params(plan)
        every_layer = trained == list(range(plan.num_layers))  # then a name inside any layer trains anyway
        extra = []
        for leaf in dict.fromkeys(p.split(".")[-2] for p in wanted):
            matched = [p for p in names.param_names if leaf in p]  # _setup_freeze_tuning matches by substring
            unwanted = [
                p for p in matched if p not in wanted and not (every_layer and p.startswith(names.layers_path + "."))
            ]
            if unwanted:
                mine = [p for p in matched if p in wanted]
                lost.append(
                    f"{', '.join(mine)} stays frozen: freeze_extra_modules matches {leaf!r} as a substring, "
                    f"which would also train {', '.join(_any_layer(names, unwanted))}"
                )
            else:
                extra.append(leaf)
        if extra:
            cfg["freeze_extra_modules"] = ",".join(extra)
        if plan.lora_rank:
            lost.append(
                lora_as_full_loss(
                    plan,
                    "LLaMA-Factory's LoRA cannot re-draw the layers it adapts",
                    "exported as freeze tuning of the layers",
                    full_layers=len(trained),
                )
            )

    @staticmethod
    def _lora(plan, cfg: dict, lost: list[str]) -> None:
        """LoRA on the plan's layers, as the peft target writes it (rank, alpha = 2r, targets, saved modules), in
        LLaMA-Factory's keys: ``lora_target`` ``all``, leaf names, or full module paths for a subset of the layers."""
        peft = PeftExporter().render(plan)
        config = json.loads(peft.files["adapter_config.json"])
        levers = set(lever_items(plan, "peft").lost)  # the levers' lines are LLaMA-Factory's own (render adds them)
        lost += [line for line in peft.lost if line not in lost and line not in levers]
        names = arch_names(plan)
        modules, layers = list(config["target_modules"]), sorted(config["layers_to_transform"])
        if layers != list(range(plan.num_layers)):
            target = ",".join(
                f"{names.layers_path}.{i}.{m}" for i in layers for m in layer_module_paths(names, modules)
            )
        elif set(modules) == set(names.layer_linear_modules) and not names.conv1d:
            target = "all"  # find_all_linear_modules: every nn.Linear but lm_head, all inside the layers
        else:
            target = ",".join(modules)
        cfg.update(
            finetuning_type="lora",
            lora_rank=config["r"],
            lora_alpha=config["lora_alpha"],
            lora_dropout=config["lora_dropout"],
            lora_target=target,
        )
        if config.get("modules_to_save"):
            cfg["additional_target"] = ",".join(config["modules_to_save"])
        if config.get("ensure_weight_tying"):  # LLaMA-Factory builds its LoraConfig without it
            saved = [m for m in config["modules_to_save"] if m in (names.input_embedding, names.output_embedding)]
            other = names.output_embedding if saved == [names.input_embedding] else names.input_embedding
            lost.append(
                f"tied embeddings: LLaMA-Factory passes no ensure_weight_tying to peft, so the shared weight trains as an "
                f"untied copy under {', '.join(saved)} and {other} keeps the original, frozen"
            )

    @staticmethod
    def _badam(plan, cfg: dict, lost: list[str]) -> None:
        kind, n, K = scorer_kind(plan), active_layer_count(plan), plan.period
        mode = "random"
        if kind == "ordered" and cyclic_order(plan) != "random":
            mode = cyclic_order(plan)
        elif kind == "ordered":
            if plan.scorer_options.get("start_block"):
                lost.append(
                    f"start_block={plan.scorer_options['start_block']} with a random order: BAdam's random mode starts with a fresh permutation"
                )
        elif kind == "uniform":
            lost.append("uniform draws: BAdam's random mode visits every layer once per round in a random order")
        elif kind == "static-deferred":
            lost.append(
                f"scorer {plan.scorer!r} picks a fixed set once training starts: BAdam cannot; nearest: random order"
            )
        else:
            lost.append(
                f"scorer {plan.scorer!r} (weighted draws): BAdam has no weighted switching; nearest: random order"
            )
        cfg.update(
            finetuning_type="full", use_badam=True, badam_mode="layer", badam_switch_mode=mode, badam_switch_interval=K
        )
        if mode != "random":
            cfg["badam_start_block"] = badam_start(plan)
        if n != 1:
            lost.append(
                f"active_layers={n}: BAdam's layer mode trains one layer at a time; nearest: 1 layer per {K} steps"
            )
        if min_depth(plan) > 0:
            below = "layer 0" if min_depth(plan) == 1 else f"layers 0..{min_depth(plan) - 1}"
            lost.append(f"min_depth={min_depth(plan)}: BAdam visits all {plan.num_layers} layers, {below} included")
        if K > 1:
            lost.append(
                f"schedule: BAdam switches after the optimizer steps where (step + 1) % {K} == 0, so its first block trains {K - 1} steps, not {K}"
            )
        if plan.train_embeddings or plan.train_head:
            parts = [p for p, on in (("embeddings", plan.train_embeddings), ("head", plan.train_head)) if on]
            lost.append(
                f"trainable {' and '.join(parts)}: BAdam's layer mode keeps {'them' if len(parts) > 1 else 'it'} frozen"
            )
        if plan.lora_rank:
            lost.append(
                lora_as_full_loss(
                    plan, "BAdam cannot be combined with LoRA", "exported as full-parameter BAdam", full_layers=1
                )
            )
        lost.append(
            f"memory: BAdam keeps a float32 copy of the active layer (and float32 moments and gradients for half "
            f"weights): +{badam_extra_bytes(plan):,} bytes that the plan's peak does not count"
        )

    @staticmethod
    def _dtype(plan, cfg: dict, badam: bool) -> list[str]:
        """LLaMA-Factory's weights are the checkpoint's dtype; trainable ones upcast to float32 unless pure_bf16 or BAdam."""
        dtype, amp = plan.train.dtype, plan.train.amp
        stored = arch_names(plan).checkpoint_dtype
        if dtype == "bfloat16":
            cfg["pure_bf16"] = True
        if dtype == "float16":
            cfg["fp16"] = True
            return [
                "dtype=float16 weights without autocast: LLaMA-Factory has pure_bf16 only; nearest: fp16 autocast, trainable weights in float32"
            ]
        if stored == dtype:
            return []
        said = (
            f"the checkpoint's dtype ({stored})"
            if stored
            else "the checkpoint's dtype, which the model's config does not state"
        )
        kept = "" if dtype == "bfloat16" or badam else ", trainable ones upcast to float32"
        what = f"{dtype} weights" + (f" with {amp} autocast" if amp != "none" else "")
        return [f"dtype: LLaMA-Factory loads the weights in {said}{kept}; the plan is for {what}"]

    def keys(self, filename: str, text: str) -> set[str]:
        if filename == INFO_FILE:
            return set()  # the dataset's description, not config keys
        return set(yaml.safe_load(text))


def layer_module_paths(names, leaves: list[str]) -> list[str]:
    """Module paths inside a decoder layer (``self_attn.q_proj``) whose leaf name is one of ``leaves``, in order."""
    inside = re.compile(re.escape(names.layers_path) + r"\.\d+\.(.*)\.[^.]+")
    paths = [m.group(1) for p in names.param_names if (m := inside.fullmatch(p))]
    return list(dict.fromkeys(m for m in paths if m.rsplit(".", 1)[-1] in leaves))


def _any_layer(names, params: list[str]) -> list[str]:
    """Parameter names with the layer index written as N, once each (the names come from a 2-layer copy)."""
    prefix = re.escape(names.layers_path) + r"\.\d+\."
    return list(dict.fromkeys(re.sub(prefix, f"{names.layers_path}.N.", p) for p in params))
