"""Target ``axolotl``: a YAML fragment to merge into an axolotl config.

Keys confirmed against axolotl's public code:
- ``LISAConfig`` (axolotl's config schema): ``lisa_n_layers``, ``lisa_step_interval``,
  ``lisa_layers_attribute`` (default ``model.layers``); the trainer builder passes them on only
  when the first two are set. Its callback (``lisa_callback_factory``) resolves
  the path with ``reduce(getattr, path.split("."), trainer.model)``, i.e. relative to the
  ``*ForCausalLM`` module, exactly as ``plan.layers_attribute`` is; it draws
  ``np.random.choice(range(L), n, replace=False)`` at step 0, step 1 and every K steps, and only
  ever toggles the decoder layers, so embeddings and head keep whatever ``requires_grad`` they had.
- ``unfrozen_parameters`` (``src/axolotl/utils/freeze.py`` ``freeze_layers_except``): regexes
  matched with ``re.match`` against ``model.named_parameters()`` names, applied when the model
  is loaded (before the optimizer exists); a ``.`` is a literal dot unless followed by ``+``.
- ``base_model``, ``learning_rate``, ``optimizer`` (transformers ``optim`` names such as
  ``adamw_torch``), ``micro_batch_size``, ``sequence_len``, ``bf16``, ``fp16``,
  ``gradient_checkpointing``: axolotl's config reference.
"""

from __future__ import annotations

import yaml

from planner.export.base import HF_OPTIM, Export, Exporter, draw_loss, fixed_layers, gamma, model_id, register_exporter, scorer_kind
from planner.export.names import arch_names
from planner.plan import Plan

LISA_KEYS = ("lisa_n_layers", "lisa_step_interval", "lisa_layers_attribute")


def layer_pattern(layers_path: str, layers: list[int] | None = None) -> str:
    """An ``unfrozen_parameters`` pattern for all decoder layers, or for ``layers`` only."""
    if layers is None:
        return f"^{layers_path}."
    return f"^{layers_path}.({'|'.join(str(i) for i in sorted(layers))})."


def outside_pattern(prefix: str) -> str:
    """A pattern for the parameters of one module outside the layers (``model.embed_tokens.``)."""
    return f"^{prefix}"


@register_exporter("axolotl")
class AxolotlExporter(Exporter):
    description = "axolotl YAML fragment: lisa_n_layers / lisa_step_interval / lisa_layers_attribute (+ unfrozen_parameters)"
    allowed_keys = frozenset({
        *LISA_KEYS, "unfrozen_parameters", "base_model", "learning_rate", "optimizer", "micro_batch_size",
        "sequence_len", "bf16", "fp16", "gradient_checkpointing",
    })

    def render(self, plan: Plan) -> Export:
        # axolotl's bf16/fp16 also load the weights in that dtype (its config normalization sets
        # torch_dtype from them): exact for half-precision weights, not for autocast over float32
        bf16 = plan.train.amp == "bf16" or plan.train.dtype == "bfloat16"
        fp16 = plan.train.amp == "fp16" or plan.train.dtype == "float16"
        cfg: dict = {
            "base_model": model_id(plan),
            "learning_rate": plan.learning_rate,
            "optimizer": HF_OPTIM[plan.train.optimizer],
            "micro_batch_size": plan.train.batch_size,
            "sequence_len": plan.train.seq_len,
            "bf16": bf16,
            "fp16": fp16,
            "gradient_checkpointing": plan.train.gradient_checkpointing,
        }
        lost: list[str] = []
        if plan.train.amp != "none":
            lost.append(f"amp={plan.train.amp} over float32 weights: axolotl's {plan.train.amp}: true loads the weights in {plan.train.amp} as well")
        kind = scorer_kind(plan)
        path = plan.layers_attribute
        if kind == "static":
            unfrozen = [layer_pattern(path, fixed_layers(plan))]
        else:
            cfg.update(lisa_n_layers=gamma(plan), lisa_step_interval=plan.period, lisa_layers_attribute=path)
            lost += draw_loss(plan, "axolotl LISA", f"lisa_n_layers={gamma(plan)} drawn uniformly from all {plan.num_layers} layers every {plan.period} steps")
            unfrozen = [layer_pattern(path)]
        if kind == "static" or not (plan.train_embeddings and plan.train_head):
            # without unfrozen_parameters everything outside the layers trains; list what should
            names = arch_names(plan)
            if plan.train_embeddings:
                unfrozen += [outside_pattern(p) for p in names.prefixes(names.embedding_params)]
            if plan.train_head:
                unfrozen += [outside_pattern(p) for p in names.prefixes(names.head_params)]
            if names.tied and plan.train_head and not plan.train_embeddings:
                lost.append("train_head without train_embeddings: the output embedding is tied to the input one, so it stays frozen")
            cfg["unfrozen_parameters"] = unfrozen
        if plan.lora_rank:
            lost.append(f"LoRA r={plan.lora_rank} inside the layers: axolotl's LISA and unfrozen_parameters act on the base model's own weights; exported as full fine-tuning of the chosen layers")
        header = f"# planner export --to axolotl: merge into your axolotl config (plan for {plan.model}, {plan.num_layers} layers)\n"
        return Export(self.name, {"axolotl.yaml": header + yaml.safe_dump(cfg, sort_keys=False)}, lost)

    def keys(self, filename: str, text: str) -> set[str]:
        return set(yaml.safe_load(text))
