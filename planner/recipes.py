"""Memory recipes people run instead of a layer-wise plan: lever settings by name, one definition for the
estimate table (planner.cost.plans) and the tuner's baselines (planner.tune.study.baselines).

- ``CHECKPOINTING``: transformers' gradient checkpointing, what a 24 GB user turns on first;
- ``QLORA``: NF4 base weights with double quantization and checkpointing (Dettmers et al. 2023, "QLoRA";
  peft's ``prepare_model_for_kbit_training`` turns checkpointing on by default);
- ``TORCHTUNE_FULL``: torchtune's single-device full fine-tuning (``llama3_1/8B_full_single_device.yaml``,
  torchtune 0.3): bitsandbytes ``PagedAdamW8bit``, ``optimizer_in_bwd: True``, activation checkpointing,
  ``CEWithChunkedOutputLoss`` with 8 chunks.
"""

from __future__ import annotations

from planner.levers.loss_chunks import TORCHTUNE_CHUNKS

CHECKPOINTING = {"gradient_checkpointing": True}
QLORA = {"quantize": "nf4-dq", **CHECKPOINTING}
TORCHTUNE_FULL = {
    **CHECKPOINTING,
    "optimizer": "paged_adamw8bit",
    "optimizer_in_backward": True,
    "loss_chunks": TORCHTUNE_CHUNKS,
}
