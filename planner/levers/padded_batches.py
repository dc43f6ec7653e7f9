"""Padded batches: rows of different lengths padded to the longest, with the attention mask that says so.

What the trainers' collators give (the HF Trainer's ``DataCollatorForSeq2Seq``, LLaMA-Factory, axolotl and ms-swift
without packing, and the `hf` export's own collator) whenever a batch holds more than one row. transformers drops a
mask of all ones (SDPA then runs its causal path, which the cost model traces by default); a mask with padding
in it takes the masked path instead, and the worst batch of a run is one padded to ``seq_len`` with a shorter row
in it: the activations of a full batch plus what the mask costs. That is the expanded boolean mask
(b, 1, s, s) and, on models with fewer key-value heads than heads, keys and values repeated to every head in
every layer (transformers' ``repeat_kv``: SDPA's grouped-query path needs no mask).

Under this lever the step's batch carries such a mask, as a trainer's does (``attention_mask``, int64 like the
token ids, held with the batch for the whole step): every row attends to every token but the last one of the
first row. No label reads the last position's logits (labels shift by one) and no other position attends to
it under the causal mask, so the loss and every gradient are the unpadded batch's; the memory is the padded
one's. Measured on the CPU: a 4-layer hidden-128 Llama (4 heads, 2 key-value heads) at 2 x 64 training layers
1-2 takes 12,625,116 B with padding against 12,230,876 B without (+394,240 B), as predicted to the byte, and so
does a batch whose second row is 40 tokens long with its own mask.
"""

from __future__ import annotations

from pydantic import Field

from planner.levers.base import ExportItems, Flag, Lever, register_lever

PADDED_TRAINERS = ("hf", "axolotl", "llamafactory", "lmflow", "swift")  # collators that pad to the longest row


@register_lever
class PaddedBatches(Lever):
    name = "padded_batches"
    order = 90
    in_shape = True
    batch_keys = ("attention_mask",)
    fields = {
        "padded_batches": (
            bool,
            Field(
                False,
                description="cost batches padded to their longest row with an attention mask, as trainers' "
                "collators give when a batch holds rows of different lengths (default: rows of one length, no mask)",
            ),
        )
    }
    flag = Flag(
        "--padded-batches",
        "padded_batches",
        "cost batches padded to their longest row with an attention mask, as trainers' collators give "
        "(default: no; transformers then runs attention without a mask)",
        kind="bool",
    )

    def active(self, cfg) -> bool:
        return cfg.padded_batches

    def label(self, cfg):
        return "padded batches" if cfg.padded_batches else None

    def batch(self, batch, cfg):
        if not cfg.padded_batches or batch.get("attention_mask") is not None:
            return batch  # a real padded batch brings its own mask
        mask = batch["input_ids"].new_ones(batch["input_ids"].shape[:2])
        mask[0, -1] = 0
        return {**batch, "attention_mask": mask}

    def export(self, target, cfg, layers_attribute="model.layers"):
        if cfg.padded_batches or cfg.batch_size < 2 or target not in PADDED_TRAINERS:
            return ExportItems()  # the trainer pads as costed, or a batch of one row has nothing to pad
        return ExportItems(
            lost=[
                f"{target} pads each batch to its longest row and passes the attention mask; a batch with padding "
                "takes transformers' masked attention path (the mask, and keys and values repeated to every head "
                "where the model has fewer key-value heads), which the plan was not costed with: cost it with "
                "--padded-batches"
            ]
        )
