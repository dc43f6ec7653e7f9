"""Target ``axolotl``: a complete axolotl config (``axolotl train axolotl.yaml``).

Rules read in axolotl's code (commit 067b021):
- ``src/axolotl/utils/callbacks/lisa.py``: the LISA callback resolves ``lisa_layers_attribute``
  with ``reduce(getattr, path.split("."), trainer.model)``, i.e. relative to the
  ``*ForCausalLM`` module, exactly as ``plan.layers_attribute`` is; at ``on_step_begin`` of step 0,
  step 1 and every K-th step it freezes all layers and unfreezes
  ``np.random.choice(range(L), n, replace=False)``. It only toggles ``requires_grad``: the
  Trainer's optimizer keeps the moments of layers that go frozen. Embeddings and head keep
  whatever ``requires_grad`` they had.
- ``src/axolotl/utils/freeze.py`` ``freeze_layers_except``: ``unfrozen_parameters`` are regexes
  matched with ``re.match`` against ``model.named_parameters()`` names (a shared weight appears
  once, under its input-embedding name); a ``.`` is a literal dot unless followed by ``+``.
- ``src/axolotl/utils/config/__init__.py`` ``normalize_config``: ``bf16``/``bfloat16`` load the
  weights in bfloat16, ``fp16``/``float16`` in float16, else float32; ``bf16``/``fp16`` also
  autocast (``bfloat16``/``float16`` do not).
- ``src/axolotl/utils/schemas/datasets.py`` ``SFTDataset``: ``path``, ``ds_type`` (else from the
  extension, ``json`` by default: ``utils/data/shared.py``), ``type`` a strategy name or a
  user-defined prompt (``field_instruction``/``field_input``/``field_output``, ``format`` with
  ``{instruction}``/``{input}``, ``no_input_format``), loss on the output unless
  ``train_on_inputs``; ``type: completion`` with ``field`` trains on all of a text field.
- ``src/axolotl/prompt_strategies/chat_template.py`` (``type: chat_template``): ``StrategyLoader.__call__`` reads
  ``field_messages`` (default ``messages``), ``message_property_mappings`` (default ``{role: role, content: content}``),
  ``roles`` ({target role: [source roles]}; default user/human, assistant/gpt, system, tool) and renders with
  ``chat_template`` (``SFTDataset.check_chat_template_config``: ``tokenizer_default`` when unset, the tokenizer's own
  template); ``_get_strategy_params``: ``roles_to_train`` (default ``[assistant]``), ``train_on_eos`` (default
  ``turn``); ``ChatTemplateStrategy._tokenize_single_prompt`` then trains every turn whose role is in
  ``roles_to_train`` (or whose message has a true ``message_field_training`` field), with its EOS token: every
  assistant turn, not the last one only. ``_get_messages`` raises on a record without the messages field.

LoRA (a static LoRA plan), read in axolotl 0.21.0 (``studies/bench_export_run.py`` runs it):
- ``loaders/adapter.py`` ``_build_peft_lora_config``: peft's ``LoraConfig(r=lora_r, lora_alpha, target_modules,
  layers_to_transform=peft_layers_to_transform, layers_pattern=peft_layers_pattern, lora_dropout,
  fan_in_fan_out=lora_fan_in_fan_out, modules_to_save=lora_modules_to_save, ensure_weight_tying=peft_ensure_weight_tying)``;
  ``lora_target_linear`` adds ``find_all_linear_names`` (leaf names of every ``nn.Linear``, bitsandbytes'
  ``Linear4bit``/``Linear8bitLt`` or class named ``*Linear*``, less ``lm_head``; GPT-2's ``Conv1D`` is none) to
  ``lora_target_modules``.
- ``loaders/model.py``: 4-bit weights only with ``adapter: qlora`` and ``load_in_4bit`` (NF4, double quantization
  unless ``bnb_config_kwargs`` says otherwise, computing in the weights' dtype), 8-bit with ``adapter: lora`` and
  ``load_in_8bit``; ``utils/schemas/peft.py`` stops at ``load_in_*`` without an adapter and at ``qlora`` without
  ``load_in_4bit``; ``utils/schemas/validation.py`` at ``unfrozen_parameters`` with ``peft_layers_to_transform``.
- ``utils/schemas/config.py`` ``check_auto_enable_lora_kernels``: an ``adapter: lora|qlora`` config (not lora with
  ``load_in_8bit``) that leaves ``lora_{mlp,qkv,o,embedding}_kernel`` unset gets them on; they run Triton and
  bitsandbytes' CUDA dequantization and fail without a GPU (``Found no NVIDIA driver``, ``invalid argument to
  getCurrentStream``). The export leaves them to axolotl (they compute the same update, on the GPU the plan is for)
  and its header says how to turn them off.
"""

from __future__ import annotations

import json

import yaml

from planner.export.base import (
    hf_optim,
    Export,
    Exporter,
    lever_items,
    draw_loss,
    fixed_layers,
    active_layer_count,
    lora_as_full_loss,
    model_id,
    model_loss,
    outside_params,
    register_exporter,
    scorer_kind,
    stale_state_loss,
)
from planner.export.data import DataRef, data_of, output_dir
from planner.export.names import arch_names
from planner.export.targets.peft import PeftExporter
from planner.levers import LEVERS
from planner.plan import Plan

DS_TYPES = {"jsonl": "json", "json": "json", "csv": "csv", "text": "text"}  # planner's file formats -> axolotl ds_type


def layer_pattern(layers_path: str, layers: list[int] | None = None) -> str:
    """An ``unfrozen_parameters`` pattern for all decoder layers, or for ``layers`` only."""
    if layers is None:
        return f"^{layers_path}."
    return f"^{layers_path}.({'|'.join(str(i) for i in sorted(layers))})."


def name_pattern(name: str) -> str:
    """A pattern for exactly one parameter name."""
    return f"^{name}$"


def dataset_entry(data: DataRef) -> dict:
    """One ``datasets`` entry reading ``data`` as planner reads it: chat turns by the model's chat template (the loss on
    the assistant's turns), prompt + newline, then the answer (the loss on the answer), or all of a text field."""
    entry: dict = {"path": data.path}
    if data.format in DS_TYPES:
        entry["ds_type"] = DS_TYPES[data.format]
    if data.is_chat:  # planner's roles and keys, spelled out rather than left to axolotl's defaults
        entry.update(
            type="chat_template",
            chat_template="tokenizer_default",
            field_messages=data.fields["messages"],
            message_property_mappings={"role": "role", "content": "content"},
            roles={role: [role] for role in ("system", "user", "assistant")},
            roles_to_train=["assistant"],
            train_on_eos="turn",
        )
        return entry
    if data.is_text:
        entry.update(type="completion", field=data.fields["text"])
        return entry
    prompt: dict = {"field_instruction": data.fields["prompt"], "field_output": data.fields["answer"]}
    if "input" in data.fields:  # planner appends a non-empty input to the prompt on its own line
        prompt.update(field_input=data.fields["input"], format="{instruction}\n{input}\n")
    else:
        prompt["format"] = "{instruction}\n"
    prompt["no_input_format"] = "{instruction}\n"
    entry["type"] = prompt
    return entry


def chat_loss(data: DataRef) -> list[str]:
    """What axolotl's chat_template reads otherwise than planner in ``data``'s messages records."""
    if data.is_chat and "history" in data.chat:
        return [
            "data: axolotl's chat_template trains every assistant turn (roles_to_train: [assistant]); planner trains the "
            "last one only, and some records have earlier assistant turns (a false per-turn field named by "
            "message_field_training on those turns would leave them out)"
        ]
    return []


KERNELS_NOTE = (
    "# LoRA: axolotl turns on its fused LoRA kernels (lora_mlp_kernel, lora_qkv_kernel, lora_o_kernel, lora_embedding_kernel)\n"
    "# where a config leaves them unset; they need CUDA: on a machine without a GPU set all four to false\n"
)


def whole_layer_quantize_loss(plan: Plan, target: str, name: str, keys: dict) -> list[str]:
    """For a quantized LoRA plan that an export trains as whole layers (a sampled plan): the quantize lever's keys
    leave ``keys`` (the trainer quantizes only under its own LoRA and refuses them otherwise), and a line says so."""
    for key in LEVERS["quantize"].export(target, plan.train, plan.layers_attribute).keys:
        keys.pop(key, None)
    return [
        f"quantized frozen weights ({plan.train.quantize}): {name} quantizes only under its own LoRA, and this sampled "
        f"plan is exported as whole-layer training: exported unquantized ({plan.train.dtype} weights)"
    ]


@register_exporter("axolotl")
class AxolotlExporter(Exporter):
    description = (
        "axolotl config: datasets, max_steps, lisa_n_layers / lisa_step_interval / lisa_layers_attribute "
        "(+ unfrozen_parameters), or adapter: lora|qlora for a LoRA plan"
    )

    def render(self, plan: Plan) -> Export:
        dtype, amp = plan.train.dtype, plan.train.amp
        data = data_of(plan, "axolotl", formats=tuple(DS_TYPES))
        cfg: dict = {
            "base_model": model_id(plan),
            "datasets": [dataset_entry(data)],
            "val_set_size": 0,
            "dataset_prepared_path": f"{output_dir('axolotl')}/prepared",
            "output_dir": output_dir("axolotl"),
            "max_steps": data.steps,
            "learning_rate": plan.learning_rate,
            "optimizer": hf_optim(plan.train.optimizer),
            "micro_batch_size": plan.train.batch_size,
            "sequence_len": plan.train.seq_len,
            # bf16/fp16 autocast and load half weights; bfloat16/float16 load half weights only
            "bf16": amp == "bf16",
            "fp16": amp == "fp16",
            "bfloat16": dtype == "bfloat16",
            "float16": dtype == "float16",
            "gradient_checkpointing": plan.train.gradient_checkpointing,
        }
        lost = model_loss(plan) + data.lost + chat_loss(data)
        if amp != "none":
            lost.append(f"amp={amp} over float32 weights: axolotl's {amp}: true loads the weights in {amp} as well")
        kind = scorer_kind(plan)
        path = plan.layers_attribute
        lora = bool(plan.lora_rank) and kind == "static"  # a sampled LoRA plan keeps LISA (its lost lines say so)
        if lora:
            lost += self._lora(plan, cfg, lost)
        elif kind == "static":
            unfrozen = [layer_pattern(path, fixed_layers(plan))]
        else:
            n = active_layer_count(plan)
            cfg.update(lisa_n_layers=n, lisa_step_interval=plan.period, lisa_layers_attribute=path)
            lost += draw_loss(
                plan,
                "axolotl LISA",
                f"lisa_n_layers={n} drawn uniformly from all {plan.num_layers} layers every {plan.period} steps",
            )
            if plan.period > 1:
                lost.append(
                    f"schedule: axolotl's LISA also re-draws at step 1, so its first draw trains 1 step and the second {plan.period - 1}"
                )
            lost += stale_state_loss(plan, "axolotl's LISA")
            unfrozen = [layer_pattern(path)]
        if not lora and (kind == "static" or not (plan.train_embeddings and plan.train_head)):
            # without unfrozen_parameters everything outside the layers trains; list what should
            cfg["unfrozen_parameters"] = unfrozen + [name_pattern(p) for p in outside_params(plan)]
        if plan.lora_rank and not lora:
            lost.append(
                lora_as_full_loss(
                    plan,
                    "axolotl's LISA unfreezes every parameter of the drawn layers, base weights included",
                    "exported as LISA full fine-tuning of the drawn layers",
                )
            )
        header = (
            f"# planner export --to axolotl: plan for {plan.model} ({plan.num_layers} layers), {data.steps} steps on {data.path}\n"
            "# run: axolotl train axolotl.yaml\n"
        )
        levers = lever_items(plan, self.name)
        if lora:
            levers.keys.pop("lora_target_modules", None)  # written above with the module names peft gets
        elif plan.lora_rank and plan.train.quantize:
            lost += whole_layer_quantize_loss(plan, self.name, "axolotl", levers.keys)
        cfg.update(levers.keys)
        # validation.py lora_kernels_auto_enable
        if cfg.get("adapter") in ("lora", "qlora") and not cfg.get("load_in_8bit"):
            header += KERNELS_NOTE
        lost += levers.lost
        return Export(self.name, {"axolotl.yaml": header + yaml.safe_dump(cfg, sort_keys=False)}, lost)

    @staticmethod
    def _lora(plan: Plan, cfg: dict, lost: list[str]) -> list[str]:
        """LoRA on the plan's layers, as the peft target writes it (rank, alpha = 2r, targets, layers, saved modules), in
        axolotl's keys; the lines of the peft export that hold here too."""
        peft = PeftExporter().render(plan)
        config = json.loads(peft.files["adapter_config.json"])
        levers = set(lever_items(plan, "peft").lost)  # the levers' lines are axolotl's own (render adds them)
        names = arch_names(plan)
        modules, layers = list(config["target_modules"]), sorted(config["layers_to_transform"])
        cfg.update(
            adapter="lora", lora_r=config["r"], lora_alpha=config["lora_alpha"], lora_dropout=config["lora_dropout"]
        )
        if set(modules) == set(names.layer_linear_modules) and not names.conv1d:
            cfg["lora_target_linear"] = True  # find_all_linear_names: every Linear but the output embedding
        else:
            cfg["lora_target_modules"] = [m for m in names.layer_linear_modules if m in modules]
        if names.conv1d:
            cfg["lora_fan_in_fan_out"] = True
        if layers != list(range(plan.num_layers)):
            cfg.update(peft_layers_to_transform=layers, peft_layers_pattern=[config["layers_pattern"]])
        if config.get("modules_to_save"):
            cfg["lora_modules_to_save"] = list(config["modules_to_save"])
        if config.get("ensure_weight_tying"):
            cfg["peft_ensure_weight_tying"] = True
        return [line for line in peft.lost if line not in lost and line not in levers]

    def keys(self, filename: str, text: str) -> set[str]:
        return set(yaml.safe_load(text))
