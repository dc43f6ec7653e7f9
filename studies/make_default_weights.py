"""Make the packaged default weights (planner/data/default_weights) with the committed pretraining recipe.

    nice -n 10 python studies/make_default_weights.py

Pretrains :data:`planner.data.pretrain.DEFAULT_RECIPE` (or reuses this machine's cache of it: the same recipe,
torch, transformers and CPU kernel family), copies the model directory into the package, and records the recipe's
identity (without the environment), the environment that produced it, the weights' SHA-256 over every tensor and
the file's SHA-256. ``planner.data.pretrain.shipped_model`` uses the copy only where both still match.
"""

from __future__ import annotations

import json
import shutil

from planner.cachedir import quiet_transformers, weights_sha256
from planner.data.pretrain import (
    DEFAULT_RECIPE,
    SHIPPED,
    ENVIRONMENT,
    ensure_default_model,
    file_sha256,
    recipe_identity,
)


def main() -> None:
    source = ensure_default_model(DEFAULT_RECIPE, shipped=False)
    meta = json.loads((source / "planner_pretrain.json").read_text())
    from transformers import LlamaForCausalLM

    with quiet_transformers():
        model = LlamaForCausalLM.from_pretrained(source)
    if weights_sha256(model) != meta["weights_sha256"]:
        raise SystemExit(f"{source}: the weights do not match their recorded SHA-256; remove it and run again")
    if SHIPPED.exists():
        shutil.rmtree(SHIPPED)
    SHIPPED.mkdir(parents=True)
    for name in (
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ):
        if (source / name).is_file():
            shutil.copy2(source / name, SHIPPED / name)
    shipped = {
        "identity": recipe_identity(DEFAULT_RECIPE),
        "produced_with": {k: meta[k] for k in ENVIRONMENT},
        "weights_sha256": meta["weights_sha256"],
        "file_sha256": file_sha256(SHIPPED / "model.safetensors"),
        **{k: meta[k] for k in ("seconds", "cpu_seconds", "first_loss", "final_loss", "parameters", "threads")},
    }
    (SHIPPED / "planner_pretrain.json").write_text(json.dumps(shipped, indent=2) + "\n")
    print(
        f"{SHIPPED}: {shipped['parameters']:,} parameters, final loss {shipped['final_loss']}, "
        f"weights {shipped['weights_sha256'][:16]}, produced with {shipped['produced_with']}"
    )


if __name__ == "__main__":
    main()
