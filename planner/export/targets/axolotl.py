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
"""

from __future__ import annotations

import yaml

from planner.export.base import (HF_OPTIM, Export, Exporter, lever_items, draw_loss, fixed_layers, gamma, lora_as_full_loss, model_id,
                                 model_loss, outside_params, register_exporter, scorer_kind, stale_state_loss)
from planner.export.data import DataRef, data_of, output_dir
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
    """One ``datasets`` entry reading ``data`` as planner reads it: prompt + newline, then the answer (the loss on
    the answer), or all of a text field."""
    entry: dict = {"path": data.path}
    if data.format in DS_TYPES:
        entry["ds_type"] = DS_TYPES[data.format]
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


@register_exporter("axolotl")
class AxolotlExporter(Exporter):
    description = "axolotl config: datasets, max_steps, lisa_n_layers / lisa_step_interval / lisa_layers_attribute (+ unfrozen_parameters)"

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
            "optimizer": HF_OPTIM[plan.train.optimizer],
            "micro_batch_size": plan.train.batch_size,
            "sequence_len": plan.train.seq_len,
            # bf16/fp16 autocast and load half weights; bfloat16/float16 load half weights only
            "bf16": amp == "bf16",
            "fp16": amp == "fp16",
            "bfloat16": dtype == "bfloat16",
            "float16": dtype == "float16",
            "gradient_checkpointing": plan.train.gradient_checkpointing,
        }
        lost = model_loss(plan) + data.lost
        if amp != "none":
            lost.append(f"amp={amp} over float32 weights: axolotl's {amp}: true loads the weights in {amp} as well")
        kind = scorer_kind(plan)
        path = plan.layers_attribute
        if kind == "static":
            unfrozen = [layer_pattern(path, fixed_layers(plan))]
        else:
            n = gamma(plan)
            cfg.update(lisa_n_layers=n, lisa_step_interval=plan.period, lisa_layers_attribute=path)
            lost += draw_loss(plan, "axolotl LISA", f"lisa_n_layers={n} drawn uniformly from all {plan.num_layers} layers every {plan.period} steps")
            if plan.period > 1:
                lost.append(f"schedule: axolotl's LISA also re-draws at step 1, so its first draw trains 1 step and the second {plan.period - 1}")
            lost += stale_state_loss(plan, "axolotl's LISA")
            unfrozen = [layer_pattern(path)]
        if kind == "static" or not (plan.train_embeddings and plan.train_head):
            # without unfrozen_parameters everything outside the layers trains; list what should
            cfg["unfrozen_parameters"] = unfrozen + [name_pattern(p) for p in outside_params(plan)]
        if plan.lora_rank:
            lost.append(lora_as_full_loss(plan, "axolotl's LISA and unfrozen_parameters act on the base model's own weights",
                                          "exported as full fine-tuning of the chosen layers"))
        header = (f"# planner export --to axolotl: plan for {plan.model} ({plan.num_layers} layers), {data.steps} steps on {data.path}\n"
                  "# run: axolotl train axolotl.yaml\n")
        levers = lever_items(plan, self.name)
        cfg.update(levers.keys)
        lost += levers.lost
        return Export(self.name, {"axolotl.yaml": header + yaml.safe_dump(cfg, sort_keys=False)}, lost)

    def keys(self, filename: str, text: str) -> set[str]:
        return set(yaml.safe_load(text))
