"""Chunked cross-entropy (torchtune's ``CEWithChunkedOutputLoss``, ``torchtune/modules/loss``).

The decoder's final hidden states are split into N chunks along the sequence; the output
projection makes one logits tensor per chunk (the model's dtype), and the loss upcasts and
scores one chunk at a time: ``loss = Σ_c CE(float(logits_c), labels_c, reduction=sum) / Σ(labels != ignore)``.
The float32 copy of the logits is never made for the whole sequence at once; log-softmax still
saves each chunk's float32 output for backward (the trace counts exactly that).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from planner.levers.base import ExportItems, Flag, Lever, causal_lm, register_lever

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100  # the label that takes no loss (transformers and torchtune)
TORCHTUNE_CHUNKS = 8  # CEWithChunkedOutputLoss(num_output_chunks=8), torchtune's default


def chunked_loss(model, batch: dict, chunks: int):
    """Mean next-token cross-entropy over ``chunks`` sequence chunks, as torchtune computes it."""
    import torch.nn.functional as F  # deferred: the config imports every lever, and torch is heavy

    lm = causal_lm(model)
    hidden = lm.base_model(
        input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), use_cache=False
    ).last_hidden_state
    head = lm.get_output_embeddings()
    logits = [head(h) for h in hidden.chunk(chunks, dim=1)]  # torchtune's decoder returns this list
    labels = F.pad(batch["labels"], (0, 1), value=IGNORE_INDEX)[..., 1:]  # the next token's id
    total = (labels != IGNORE_INDEX).sum()
    loss: torch.Tensor | float = 0.0
    for lg, y in zip(logits, labels.chunk(chunks, dim=1)):
        loss = loss + F.cross_entropy(
            lg.reshape(-1, lg.size(-1)).float(), y.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        )
    return loss / total


@register_lever
class LossChunks(Lever):
    name = "loss_chunks"
    order = 90
    in_shape = True
    fit_value = TORCHTUNE_CHUNKS  # pulled after the step in backward, where --loss-chunks was not given
    fields = {
        "loss_chunks": (
            int,
            Field(
                1,
                ge=1,
                description="cross-entropy over this many sequence chunks "
                "(torchtune's CEWithChunkedOutputLoss); 1: the model's own loss",
            ),
        )
    }
    flag = Flag(
        "--loss-chunks",
        "loss_chunks",
        "compute the cross-entropy over N chunks of the sequence, as torchtune's "
        "CEWithChunkedOutputLoss does (default 1: the model's own loss)",
        metavar="N",
    )

    def active(self, cfg) -> bool:
        return cfg.loss_chunks > 1

    def problems(self, cfg) -> list[str]:
        if cfg.loss_chunks > cfg.seq_len:
            return [
                f"`loss_chunks <= seq_len` must hold, but got loss_chunks={cfg.loss_chunks} with seq_len={cfg.seq_len}"
            ]
        return []

    def label(self, cfg):
        return f"loss in {cfg.loss_chunks} chunks" if cfg.loss_chunks > 1 else None

    def compute_loss(self, model, batch, cfg):
        return chunked_loss(model, batch, cfg.loss_chunks)

    def export(self, target, cfg, layers_attribute="model.layers"):
        if cfg.loss_chunks <= 1 or target == "planner":
            return ExportItems()
        return ExportItems(
            lost=[
                f"the chunked cross-entropy ({cfg.loss_chunks} chunks, torchtune's CEWithChunkedOutputLoss): "
                f"{target} computes the float32 logits of the whole sequence at once"
            ]
        )
