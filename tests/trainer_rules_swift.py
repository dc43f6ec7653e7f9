"""ms-swift 4.6.0's rules for a ``swift sft`` export, reproduced from its code (see planner/export/targets/swift.py):
``swift/utils/transformers_utils.py`` freeze_parameters/activate_parameters, ``swift/callbacks/lisa.py``
LISACallback, and LoRA through peft with ``target_regex`` as ``target_modules``."""

from __future__ import annotations

import shlex
import warnings
from bisect import bisect_right
from pathlib import Path

import numpy as np
import torch
from trainer_rules import SEED, Run, lisa_draw, optimizer_for, tiny_model, train


def swift_args(text: str) -> dict[str, list[str]]:
    """``--key value...`` of the script's ARGS, every value of a key (shell variables left as written)."""
    out: dict[str, list[str]] = {}
    key = None
    for tok in shlex.split(text, comments=True):
        if tok.startswith("--"):
            key = tok[2:]
            out[key] = []
        elif key is not None and tok not in (")", "swift", "sft", "${ARGS[@]}"):
            out[key].append(tok)
    return out


def swift_freeze(model, args: dict[str, list[str]]) -> None:
    """swift/pipelines/train/tuner.py (full): all trainable, then freeze_parameters(...), then activate_parameters(...)."""
    model.requires_grad_(True)
    ratio = float(args.get("freeze_parameters_ratio", ["0"])[0])
    if ratio > 0:
        sizes = np.array([p.numel() for p in model.parameters()], dtype=np.int64)
        idx = bisect_right(np.cumsum(sizes), int(np.sum(sizes) * ratio))
        for _, p in zip(range(idx), model.parameters()):
            p.requires_grad = False
    for name, p in model.named_parameters():
        if any(name.startswith(f) for f in args.get("freeze_parameters", [])):
            p.requires_grad = False
    for name, p in model.named_parameters():
        if any(name.startswith(t) for t in args.get("trainable_parameters", [])):
            p.requires_grad = True


def run_swift(plan, files: dict[str, str], tmp: Path) -> Run:
    args = swift_args(files["swift_sft.sh"])

    def one(key, default=None):
        return args.get(key, [default])[0]

    model = tiny_model(plan)
    if one("tuner_type") == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=int(one("lora_rank")),
            lora_alpha=int(one("lora_alpha")),
            lora_dropout=float(one("lora_dropout")),
            target_modules=one("target_regex"),
            modules_to_save=args.get("modules_to_save") or None,
            task_type="CAUSAL_LM",
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = get_peft_model(model, config)
        optimizer = optimizer_for(one("optim"), [p for p in model.parameters() if p.requires_grad])
        run = train(model, optimizer, Run(draws=[0]), steps=2)
        run.copy_bytes = sum(
            p.numel() * p.element_size() for n, p in model.named_parameters() if ".modules_to_save." in n
        )
        return run
    swift_freeze(model, args)
    # the Trainer builds its optimizer from the trainable parameters before LISA's first draw (on_train_begin)
    optimizer = optimizer_for(one("optim"), [p for p in model.parameters() if p.requires_grad])
    n = int(one("lisa_activated_layers", "0"))
    if n <= 0:
        return train(model, optimizer, Run(draws=[0]))
    K = int(one("lisa_step_interval", "20"))
    layers = next(m for _, m in model.named_modules() if isinstance(m, torch.nn.ModuleList))
    np.random.seed(SEED)
    run = Run(rule=("uniform", tuple(range(len(layers))), n))
    lisa_draw(layers, n, Run(), 0)  # on_train_begin: replaced by step 0's draw before anything trains

    def begin(step):  # LISACallback.on_step_begin
        if step % K == 0 or step == 1:
            lisa_draw(layers, n, run, step)

    return train(model, optimizer, run, begin=begin)
