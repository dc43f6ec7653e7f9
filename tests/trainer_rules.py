"""Exports applied the way each trainer applies them, next to the plan run by planner's own sampler.

Every runner builds the same tiny model from the plan's config, applies one export with the
trainer's rule, and takes a few optimizer steps on a fixed batch, recording per step which
parameters of the base model changed (peft adapters merged back), when layers were drawn, and
the optimizer state and extra weight copies the trainer holds. peft and BAdam run as installed;
the rules of trainers that are not installable here are reproduced from their code, each with
the file and commit it comes from.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
import re
import shlex
import warnings
from dataclasses import dataclass, field
from functools import lru_cache, reduce
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import yaml

from planner.sampling import LayerSampler
from planner.spec import build_model, load_spec

STEPS = 6
LR = 1e-2
SEED = 0


@dataclass
class Run:
    trained: list[frozenset[str]] = field(default_factory=list)  # per step: base parameter names whose value changed
    draws: list[int] = field(default_factory=list)  # steps at which the layers were (re)drawn
    rule: tuple = ()  # how random draws are made: (kind, candidates, layers per draw); () when not random
    state_bytes: int = 0  # the most optimizer state held after any step
    copy_bytes: int = 0  # weight copies the trainer keeps beside the model's own weights
    error: str | None = None  # the trainer would stop (what it raises)


# -- the shared loop ---------------------------------------------------------------------------


def tiny_model(plan):
    """The plan's model, built from its config file with random weights (seeded)."""
    return build_model(load_spec(plan.model), seed=SEED)


def batch_for(model) -> dict:
    g = torch.Generator().manual_seed(SEED)
    ids = torch.randint(0, model.config.vocab_size, (2, 8), generator=g)
    return {"input_ids": ids, "labels": ids}


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def effective_weights(model) -> dict[str, torch.Tensor]:
    """The base model's parameters as its forward uses them: adapters merged, saved-module copies in place."""
    if _is_peft(model):
        model = copy.deepcopy(model).merge_and_unload()
    return {n: p.detach().clone() for n, p in model.named_parameters(remove_duplicate=False)}


def state_bytes(optimizer) -> int:
    return sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t))


def optimizer_for(name: str, params):
    """transformers ``OptimizerNames`` as torch optimizers (the trainers' optim names)."""
    return {"adamw_torch": torch.optim.AdamW, "sgd": torch.optim.SGD}[name](params, lr=LR)


def train(
    model, optimizer, run: Run, *, begin=None, before_step=None, end=None, held=None, steps: int | None = None
) -> Run:
    """``steps`` (default STEPS) optimizer steps as the HF Trainer takes them: callbacks at step begin, zero_grad after."""
    steps = STEPS if steps is None else steps
    batch = batch_for(model)
    model.train()
    after = effective_weights(model)
    for step in range(steps):
        if begin is not None:
            begin(step)  # callbacks toggle requires_grad only: the weights are still `after` of the last step
        before = after
        model(**batch).loss.backward()
        if before_step is not None:
            before_step(step)
        optimizer.step()
        model.zero_grad(set_to_none=True)
        if end is not None:
            end(step)
        after = effective_weights(model)
        run.trained.append(frozenset(n for n in before if not torch.equal(before[n], after[n])))
        run.state_bytes = max(run.state_bytes, held() if held else state_bytes(optimizer))
    return run


# -- planner: the plan itself, run by planner's sampler -------------------------------------------


def plan_rule(plan) -> tuple:
    """How the plan draws at random, by its scorer (the sampler's own definitions)."""
    depth = getattr(plan, "min_depth", 0) or plan.train.min_depth
    cand = tuple(range(depth, plan.num_layers))
    if plan.layers is not None or plan.scorer == "fixed" or plan.active_layers == len(cand):
        return ()
    if plan.scorer == "uniform":
        return ("uniform", cand, plan.active_layers)
    if plan.scorer == "cyclic":
        order = plan.scorer_options.get("order", "ascending")
        return ("permutation", cand, plan.active_layers) if order == "random" else ()
    return (f"weighted:{plan.scorer}", cand, plan.active_layers)


def run_sampler(model, sampler, optimizer, rule: tuple) -> Run:
    run = train(
        model,
        optimizer,
        Run(rule=rule),
        begin=sampler.begin_step,
        before_step=sampler.after_backward,
        end=lambda step: sampler.end_step(step, float("nan"), None),
    )
    run.draws = [h["step"] for h in sampler.history]
    return run


def run_plan(plan) -> Run:
    """The truth: the plan's fields on planner's LayerSampler (LoRA as the cost model adds it)."""
    return _run_plan(plan.to_yaml())


@lru_cache(maxsize=None)
def _run_plan(text: str) -> Run:
    from planner.cost.trainable import add_lora
    from planner.plan import Plan

    plan = Plan.model_validate(yaml.safe_load(text))
    model = tiny_model(plan)
    if plan.lora_rank:
        model = add_lora(model, plan.lora_rank)
    static = plan.layers is not None
    sampler = LayerSampler(
        model,
        active_layers=len(plan.layers) if static else plan.active_layers,
        period=plan.period,
        scorer="fixed" if static else plan.scorer,
        scorer_options={"layers": plan.layers} if static else plan.scorer_options,
        train_embeddings=plan.train_embeddings,
        train_head=plan.train_head,
        min_depth=0 if static else (getattr(plan, "min_depth", 0) or plan.train.min_depth),
        seed=SEED,
    )
    optimizer = sampler.make_optimizer(torch.optim.AdamW if plan.train.optimizer == "adamw" else torch.optim.SGD, lr=LR)
    return run_sampler(model, sampler, optimizer, plan_rule(plan))


# -- hf: the exported script's own prepare(), driven as its LayerwiseCallback drives it ------------


def run_hf(plan, files: dict[str, str], tmp: Path) -> Run:
    script = tmp / "train_layerwise.py"
    script.write_text(files["train_layerwise.py"])
    spec = importlib.util.spec_from_file_location("exported_train_layerwise", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = json.loads(files["training_args.json"])
    model, sampler = module.prepare(tiny_model(plan), seed=SEED)
    # the Trainer builds its optimizer from the trainable parameters; the callback adds the rest
    optimizer = optimizer_for(args["optim"], [p for p in model.parameters() if p.requires_grad])
    sampler.attach_optimizer(optimizer)
    return run_sampler(model, sampler, optimizer, plan_rule(plan))


def run_planner(plan, files: dict[str, str], tmp: Path) -> Run:
    from planner.plan import Plan

    return run_plan(Plan.model_validate(yaml.safe_load(files["plan.yaml"])))


# -- axolotl (commit 067b021; the LoRA rules from 0.21.0, installed by studies/bench_export_run.py) --------------


def axolotl_match(pattern: str, name: str) -> bool:
    """src/axolotl/utils/freeze.py LayerNamePattern: '.' not followed by '+' is a literal dot; re.match."""
    return re.match(re.sub(r"\.(?!\+)", "\\\\.", pattern), name) is not None


def lisa_draw(layers, n: int, run: Run, step: int) -> None:
    """The switch both trainers' LISA callbacks make (axolotl's LISACallback, LMFlow's
    DynamicLayerActivationCallback): freeze every layer, then unfreeze n drawn by np.random.choice."""
    for layer in layers:
        for p in layer.parameters():
            p.requires_grad = False
    for idx in np.random.choice(range(len(layers)), n, replace=False):
        for p in layers[idx].parameters():
            p.requires_grad = True
    run.draws.append(step)


def axolotl_refusal(cfg: dict) -> str | None:
    """What axolotl's config validation stops at, of the rules an export could meet:
    src/axolotl/utils/schemas/peft.py LoraConfig.validate_adapter (load_in_8bit/4bit need an adapter) and
    validate_qlora (adapter qlora needs load_in_4bit, never load_in_8bit); utils/schemas/validation.py
    check_frozen (unfrozen_parameters with peft_layers_to_transform)."""
    if not cfg.get("adapter") and (cfg.get("load_in_8bit") or cfg.get("load_in_4bit")):
        return "load_in_8bit and load_in_4bit are not supported without setting an adapter for training."
    if cfg.get("adapter") == "qlora" and (cfg.get("load_in_8bit") or not cfg.get("load_in_4bit")):
        return (
            "Can't load qlora in 8bit" if cfg.get("load_in_8bit") else "Require cfg.load_in_4bit to be True for qlora"
        )
    if cfg.get("adapter") and cfg.get("peft_layers_to_transform") and cfg.get("unfrozen_parameters"):
        return "`unfrozen_parameters` used with `peft_layers_to_transform` can have unexpected behavior."
    return None


def axolotl_linear_names(model) -> list[str]:
    """src/axolotl/loaders/adapter.py find_all_linear_names: leaf names of every nn.Linear (bitsandbytes' Linear4bit /
    Linear8bitLt, any class named *Linear*), less the output embedding's name (loaders/utils.py
    get_linear_embedding_layers: lm_head for every model type). GPT-2's Conv1D is none of these."""
    names = set()
    for name, module in model.named_modules():
        cls = type(module).__name__
        if isinstance(module, torch.nn.Linear) or ("Linear" in cls and cls != "LlamaLinearScalingRotaryEmbedding"):
            names.add(name.split(".")[-1])
    names.discard("lm_head")
    return list(names)


def axolotl_lora_model(plan, cfg: dict):
    """src/axolotl/loaders/adapter.py _build_peft_lora_config and load_lora: peft's LoraConfig from the lora_* and peft_*
    keys (lora_target_linear adds every linear name to lora_target_modules), get_peft_model. The base weights load
    quantized under load_in_4bit / load_in_8bit (loaders/model.py), which changes no parameter's trainability: not
    reproduced here."""
    from peft import LoraConfig, get_peft_model

    model = tiny_model(plan)
    targets = cfg.get("lora_target_modules") or []
    if cfg.get("lora_target_linear"):
        targets = list(set(([targets] if isinstance(targets, str) else targets) + axolotl_linear_names(model)))
    tying = (
        {"ensure_weight_tying": cfg["peft_ensure_weight_tying"]}
        if cfg.get("peft_ensure_weight_tying") is not None
        else {}
    )
    config = LoraConfig(
        r=cfg.get("lora_r"),
        lora_alpha=cfg.get("lora_alpha"),
        target_modules=targets,
        layers_to_transform=cfg.get("peft_layers_to_transform"),
        layers_pattern=cfg.get("peft_layers_pattern"),
        lora_dropout=cfg.get("lora_dropout", 0.0),
        fan_in_fan_out=cfg.get("lora_fan_in_fan_out"),
        modules_to_save=cfg.get("lora_modules_to_save") or None,
        bias="none",
        task_type="CAUSAL_LM",
        **tying,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(model, config)


def run_axolotl_lora(plan, cfg: dict) -> Run:
    model = axolotl_lora_model(plan, cfg)
    optimizer = optimizer_for(cfg["optimizer"], [p for p in model.parameters() if p.requires_grad])
    run = train(model, optimizer, Run(draws=[0]), steps=2)  # nothing switches: two steps show all (merging is slow)
    run.copy_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if ".modules_to_save." in n)
    return run


def run_axolotl(plan, files: dict[str, str], tmp: Path) -> Run:
    cfg = yaml.safe_load(files["axolotl.yaml"])
    refused = axolotl_refusal(cfg)
    if refused:
        return Run(error=f"axolotl stops: {refused}")
    if cfg.get("adapter") in ("lora", "qlora"):
        return run_axolotl_lora(plan, cfg)
    model = tiny_model(plan)
    if cfg.get("unfrozen_parameters"):  # src/axolotl/train.py -> freeze_layers_except, at load
        for name, p in model.named_parameters():
            p.requires_grad = any(axolotl_match(pat, name) for pat in cfg["unfrozen_parameters"])
    optimizer = optimizer_for(cfg["optimizer"], [p for p in model.parameters() if p.requires_grad])
    run = Run(draws=[0])
    begin = None
    if cfg.get("lisa_step_interval") and cfg.get("lisa_n_layers"):  # src/axolotl/core/builders/causal.py
        n, K, path = cfg["lisa_n_layers"], cfg["lisa_step_interval"], cfg.get("lisa_layers_attribute", "model.layers")
        layers = reduce(getattr, path.split("."), model)
        np.random.seed(SEED)
        run = Run(rule=("uniform", tuple(range(len(layers))), n))

        def begin(step):  # src/axolotl/utils/callbacks/lisa.py LISACallback.on_step_begin
            if step % K == 0 or step == 1:
                lisa_draw(layers, n, run, step)

    return train(model, optimizer, run, begin=begin)


# -- LMFlow (commit f3597db) -----------------------------------------------------------------------

LMFLOW_CLASS_LAYERS = {  # src/lmflow/pipeline/utils/lisa_trainer.py class_to_layers_map
    "LlamaForCausalLM": "model.model.layers",
    "Qwen2ForCausalLM": "model.model.layers",
    "MistralForCausalLM": "model.model.layers",
    "MixtralForCausalLM": "model.model.layers",
    "GemmaForCausalLM": "model.model.layers",
    "GPT2LMHeadModel": "model.transformer.h",
    "HymbaForCausalLM": "model.model.layers",
}


def lmflow_args(text: str) -> dict[str, str]:
    toks = shlex.split(text, comments=True)
    return {t[2:]: toks[i + 1] for i, t in enumerate(toks) if t.startswith("--")}


def run_lmflow(plan, files: dict[str, str], tmp: Path) -> Run:
    args = lmflow_args(files["lmflow_finetune.sh"])
    model = tiny_model(plan)  # full fine-tuning: every parameter trainable
    optimizer = optimizer_for(args["optim"], [p for p in model.parameters() if p.requires_grad])
    run = Run(draws=[0])
    begin = None
    if args.get("use_lisa", "0") not in ("0", "False", "false"):
        n, K = int(args.get("lisa_activated_layers", 2)), int(args.get("lisa_interval_steps", 20))
        path = LMFLOW_CLASS_LAYERS.get(type(model).__name__) or args.get("lisa_layers_attribute", "model.model.layers")

        class Callback:  # DynamicLayerActivationCallback evaluates "self." + path with self.model the causal LM
            def __init__(self, model):
                self.model = model

        layers = eval("self." + path, {}, {"self": Callback(model)})  # noqa: S307 - LMFlow's own lookup
        np.random.seed(SEED)
        run = Run(rule=("uniform", tuple(range(len(layers))), n))

        def begin(step):  # on_step_begin: switch when global_step % interval_steps == 0
            if step % K == 0:
                lisa_draw(layers, n, run, step)

    return train(model, optimizer, run, begin=begin)


# -- LLaMA-Factory (commit ff6d4d1; the LoRA rules from 0.9.5, as installed there) with BAdam (installed) --


def llamafactory_freeze(model, cfg: dict) -> None:
    """src/llamafactory/model/adapter.py _setup_freeze_tuning (freeze_trainable_modules: all, no LLaMA-Pro)."""
    config = model.config
    num_layers = (
        getattr(config, "num_hidden_layers", None)
        or getattr(config, "num_layers", None)
        or getattr(config, "n_layer", None)
    )
    n = int(cfg["freeze_trainable_layers"])
    ids = range(max(0, num_layers - n), num_layers) if n > 0 else range(min(-n, num_layers))
    non_hidden = {name.split(".")[-2] for name, _ in model.named_parameters() if re.search(r"\.\d+\.", name) is None}
    trainable = [".{:d}.{}".format(i, "") for i in ids]
    extra = cfg.get("freeze_extra_modules")
    for module_name in extra.split(",") if extra else []:
        if module_name not in non_hidden:
            raise ValueError(f"Module {module_name} is not found, please choose from {', '.join(non_hidden)}")
        trainable.append(module_name)
    for name, p in model.named_parameters():
        p.requires_grad_(any(t in name for t in trainable))


def llamafactory_linear_modules(model) -> list[str]:
    """src/llamafactory/model/model_utils/misc.py find_all_linear_modules (a text model): leaf names of modules whose
    class name holds "Linear" (not "Embedding"), skipping names containing "lm_head"."""
    names = set()
    for name, module in model.named_modules():
        if "lm_head" in name:
            continue
        if "Linear" in type(module).__name__ and "Embedding" not in type(module).__name__:
            names.add(name.split(".")[-1])
    return list(names)


def llamafactory_lora_model(plan, cfg: dict):
    """src/llamafactory/model/adapter.py _setup_lora_tuning (a new adapter): ``lora_target`` split at commas, ``all``
    -> find_all_linear_modules; peft's LoraConfig(r=lora_rank, lora_alpha (default 2 * lora_rank), lora_dropout,
    modules_to_save=additional_target split at commas), no layers_to_transform and no ensure_weight_tying;
    hparams/finetuning_args.py FinetuningArguments.__post_init__. Trainable parameters are upcast to float32 (the
    tiny model already is); quantization_bit loads the base weights quantized (model_utils/quantization.py), which
    changes no parameter's trainability: not reproduced here."""
    from peft import LoraConfig, get_peft_model

    def split(value):
        return [item.strip() for item in value.split(",")] if isinstance(value, str) else value

    model = tiny_model(plan)
    rank = int(cfg.get("lora_rank", 8))
    target = split(cfg.get("lora_target", "all"))
    if target == ["all"]:
        target = llamafactory_linear_modules(model)
    config = LoraConfig(
        task_type="CAUSAL_LM",
        inference_mode=False,
        r=rank,
        target_modules=target,
        lora_alpha=cfg.get("lora_alpha") or rank * 2,
        lora_dropout=cfg.get("lora_dropout", 0.0),
        use_rslora=False,
        use_dora=False,
        modules_to_save=split(cfg.get("additional_target")),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(model, config)


def run_llamafactory_lora(plan, cfg: dict) -> Run:
    model = llamafactory_lora_model(plan, cfg)
    optimizer = optimizer_for(cfg["optim"], [p for p in model.parameters() if p.requires_grad])
    run = train(model, optimizer, Run(draws=[0]), steps=2)  # nothing switches: two steps show all (merging is slow)
    run.copy_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if ".modules_to_save." in n)
    return run


def run_llamafactory(plan, files: dict[str, str], tmp: Path) -> Run:
    with contextlib.ExitStack() as quiet:
        return _run_llamafactory(plan, files, quiet)


def _run_llamafactory(plan, files: dict[str, str], quiet: contextlib.ExitStack) -> Run:
    cfg = yaml.safe_load(files["llamafactory.yaml"])
    if cfg.get("quantization_bit") is not None and cfg["finetuning_type"] not in ("lora", "oft"):
        # src/llamafactory/model/adapter.py init_adapter, for a model loaded quantized
        return Run(
            error="LLaMA-Factory stops: ValueError: Quantized models can only be used for the LoRA or OFT tuning."
        )
    if cfg["finetuning_type"] == "lora":
        return run_llamafactory_lora(plan, cfg)
    model = tiny_model(plan)
    try:
        if cfg["finetuning_type"] == "freeze":
            llamafactory_freeze(model, cfg)
            optimizer = optimizer_for(cfg["optim"], [p for p in model.parameters() if p.requires_grad])
            return train(model, optimizer, Run(draws=[0]))
        assert cfg["finetuning_type"] == "full" and cfg.get("use_badam") and cfg.get("badam_mode") == "layer", cfg
        from badam import BlockOptimizer

        quiet.enter_context(contextlib.redirect_stdout(io.StringIO()))  # BAdam prints every switch
        # a full collection per switch: slow, no effect here
        quiet.enter_context(mock.patch("badam.block_optim.gc.collect"))
        # src/llamafactory/train/trainer_utils.py _create_badam_optimizer (every parameter trainable: _setup_full_tuning)
        base = optimizer_for(cfg["optim"], [p for p in model.parameters() if p.requires_grad])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BAdam warns about float32 weights
            optimizer = BlockOptimizer(
                base_optimizer=base,
                named_parameters_list=list(model.named_parameters()),
                block_prefix_list=None,
                switch_block_every=cfg["badam_switch_interval"],
                start_block=cfg.get("badam_start_block"),
                switch_mode=cfg["badam_switch_mode"],
                verbose=0,
            )
    except (ValueError, IndexError) as exc:
        return Run(error=f"LLaMA-Factory stops: {type(exc).__name__}: {exc}")
    L = plan.num_layers
    run = Run(draws=[0], rule=("permutation", tuple(range(L)), 1) if cfg["badam_switch_mode"] == "random" else ())
    steps = []
    switch = optimizer.switch_trainable_params

    def recorded(*args, **kwargs):
        run.draws.append(steps[-1] + 1)  # called inside step(): the next step trains the new block
        return switch(*args, **kwargs)

    optimizer.switch_trainable_params = recorded
    train(model, optimizer, run, begin=steps.append, held=lambda: state_bytes(optimizer.base_optimizer))
    # float32 copies of the block
    run.copy_bytes = sum(p.numel() * p.element_size() for p in optimizer.param_idx2hp.values())
    run.draws = [d for d in run.draws if d < len(run.trained)]
    return run


# -- peft (installed) ------------------------------------------------------------------------------


def run_peft(plan, files: dict[str, str], tmp: Path) -> Run:
    from peft import LoraConfig, get_peft_model

    (tmp / "adapter_config.json").write_text(files["adapter_config.json"])
    config = LoraConfig.from_pretrained(str(tmp))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(tiny_model(plan), config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    if plan.train.optimizer == "sgd":
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    run = train(model, optimizer, Run(draws=[0]), steps=2)  # nothing switches: two steps show all (merging is slow)
    run.copy_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if ".modules_to_save." in n)
    return run


def run_swift(plan, files: dict[str, str], tmp: Path) -> Run:
    """ms-swift 4.6.0 (installed in its own venv, not here): its rules, in trainer_rules_swift."""
    from trainer_rules_swift import run_swift as run

    return run(plan, files, tmp)


RUNNERS = {
    "planner": run_planner,
    "hf": run_hf,
    "axolotl": run_axolotl,
    "lmflow": run_lmflow,
    "llamafactory": run_llamafactory,
    "peft": run_peft,
    "swift": run_swift,
}


# -- comparison ------------------------------------------------------------------------------------


def split(plan, names: frozenset[str]) -> tuple[frozenset[str], dict[int, frozenset[str]]]:
    """(names outside the decoder layers, {layer index: names inside it without the layer prefix})."""
    prefix = re.compile(re.escape(plan.layers_attribute) + r"\.(\d+)\.(.*)")
    outside, inside = set(), {}
    for n in names:
        m = prefix.fullmatch(n)
        if m:
            inside.setdefault(int(m.group(1)), set()).add(m.group(2))
        else:
            outside.add(n)
    return frozenset(outside), {i: frozenset(v) for i, v in inside.items()}


def differences(plan, truth: Run, got: Run) -> dict[str, list[str]]:
    """How ``got`` (a trainer applying an export) differs from ``truth`` (the plan), by kind:
    ``training`` (what trains, when) and ``memory`` (optimizer state, weight copies); empty when it does not."""
    if got.error:
        return {"training": [got.error]}
    out, memory = [], []
    random_draws = bool(truth.rule) or bool(got.rule)
    content = set().union(*(set(v) for s in truth.trained for v in split(plan, s)[1].values()))
    for step, (t, g) in enumerate(zip(truth.trained, got.trained)):
        t_out, t_in = split(plan, t)
        g_out, g_in = split(plan, g)
        if t_out != g_out:
            out.append(f"step {step}: outside the layers {sorted(g_out ^ t_out)} differ")
        if any(v != content for v in g_in.values()):
            out.append(f"step {step}: inside a layer {sorted(set().union(*g_in.values()) ^ content)} differ")
        if random_draws and len(g_in) != len(t_in):
            out.append(f"step {step}: {len(g_in)} layers train, the plan trains {len(t_in)}")
        if not random_draws and set(g_in) != set(t_in):
            out.append(f"step {step}: layers {sorted(g_in)} train, the plan trains {sorted(t_in)}")
    if random_draws:
        if got.rule != truth.rule:
            out.append(f"draws {got.rule}, the plan draws {truth.rule}")
        if got.draws != truth.draws:
            out.append(f"draws at steps {got.draws}, the plan at {truth.draws}")
    if got.state_bytes > truth.state_bytes:
        memory.append(f"optimizer state {got.state_bytes:,} bytes, the plan's {truth.state_bytes:,}")
    if got.copy_bytes:
        memory.append(f"{got.copy_bytes:,} bytes of weight copies")
    return {kind: v for kind, v in (("training", out), ("memory", memory)) if v}


# -- chat data: which turns of a messages record each trainer reads and trains on ---------------------------------
# Each rule takes what the export wrote and one record, and returns (system prompt, the turns after it, the indices of
# the turns with a loss), or None where the trainer skips or refuses the record. planner's own reading is
# planner.data.files.to_pairs: every turn before the last is the prompt, the last (the assistant's) has the loss.

AXOLOTL_ROLES = {
    "human": "user",
    "user": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "system": "system",
    "tool": "tool",
}  # src/axolotl/prompt_strategies/chat_template.py ChatTemplatePrompter.__init__ default


def planner_chat(record: dict) -> tuple[str, list[dict], list[int]]:
    """planner.data.files._chat: the record's turns as they are (a system turn stays a turn); the last one trains."""
    turns = record["messages"]
    return "", turns, [len(turns) - 1]


def axolotl_chat(entry: dict, record: dict) -> tuple[str, list[dict], list[int]] | None:
    """axolotl 067b021, src/axolotl/prompt_strategies/chat_template.py: ``StrategyLoader.__call__`` (``field_messages``
    default ``messages``, ``message_property_mappings`` default role/content, ``roles`` {target: [sources]});
    ``_get_strategy_params`` (``roles_to_train`` default [assistant]); ``ChatTemplateStrategy._get_messages`` raises on a
    record without the field, ``transform_message`` maps each turn's role; ``_tokenize_single_prompt``: a turn trains
    when its (mapped) role is in ``roles_to_train``. The system turn stays a turn the template renders."""
    assert entry["type"] == "chat_template"
    messages = record.get(entry.get("field_messages") or "messages")
    if messages is None:
        return None  # ValueError("Messages is null. Please check `field_messages`.")
    roles = {s: t for t, sources in entry["roles"].items() for s in sources} if entry.get("roles") else AXOLOTL_ROLES
    keys = entry.get("message_property_mappings") or {"role": "role", "content": "content"}
    turns = [{"role": roles.get(m[keys["role"]], m[keys["role"]]), "content": m[keys["content"]]} for m in messages]
    train = [roles.get(r, r) for r in entry.get("roles_to_train", ["assistant"])]
    return "", turns, [i for i, t in enumerate(turns) if t["role"] in train]


def llamafactory_chat(info: dict, cfg: dict, record: dict) -> tuple[str, list[dict], list[int]] | None:
    """LLaMA-Factory ff6d4d1: ``data/parser.py`` ``DatasetAttr`` (sharegpt defaults: messages ``conversations``, tags
    from/value/human/gpt/system); ``data/converter.py`` ``SharegptDatasetConverter.__call__`` (a first turn with the
    system tag is the system prompt; then user tags at even positions, assistant tags at odd ones, an even count, else
    skipped); ``data/processor/supervised.py`` ``_encode_data_example`` (every assistant turn trains, only the last
    with ``mask_history``)."""
    assert info["formatting"] == "sharegpt"
    columns, tags = info.get("columns", {}), info.get("tags", {})
    role, content = tags.get("role_tag", "from"), tags.get("content_tag", "value")
    user, assistant, system_tag = (
        tags.get("user_tag", "human"),
        tags.get("assistant_tag", "gpt"),
        tags.get("system_tag", "system"),
    )
    messages = record[columns.get("messages", "conversations")]
    system = ""
    if system_tag and messages and messages[0][role] == system_tag:
        system, messages = messages[0][content], messages[1:]
    accept = (
        (user, tags.get("observation_tag", "observation")),
        (assistant, tags.get("function_tag", "function_call")),
    )
    if any(m[role] not in accept[i % 2] for i, m in enumerate(messages)) or len(messages) % 2:
        return None  # "Invalid role tag" / "Invalid message count": "Skipping this abnormal example."
    names = {user: "user", assistant: "assistant"}
    turns = [{"role": names[m[role]], "content": m[content]} for m in messages]
    trained = [i for i in range(1, len(turns), 2)]
    return system, turns, trained[-1:] if cfg.get("mask_history") else trained


def swift_chat(args: dict[str, list[str]], record: dict) -> tuple[str, list[dict], list[int]]:
    """ms-swift 4.6.0: ``swift/dataset/preprocessor/core.py`` ``MessagesPreprocessor`` (a ``messages`` column, or one
    renamed to it by ``--columns``; a first ``system`` turn is the system prompt); ``swift/loss_scale/base.py``
    ``LossScale.__call__``/``_inner_call`` with ``swift/template/utils.py`` ``get_last_user_round``: ``default``
    trains every response, ``last_round`` only the responses after the last user turn."""
    columns = json.loads(args["columns"][0]) if "columns" in args else {}
    field = next((f for f, c in columns.items() if c == "messages"), "messages")
    messages = list(record[field])
    system = ""
    if messages and messages[0]["role"] == "system":
        system, messages = messages[0]["content"], messages[1:]
    strategy = args.get("loss_scale", ["default"])[0].split("+")[0]
    last_user = max((i for i, m in enumerate(messages) if m["role"] in ("user", "tool")), default=-1)
    trained = [
        i for i, m in enumerate(messages) if m["role"] == "assistant" and (strategy != "last_round" or i > last_user)
    ]
    return system, messages, trained


def trained_text(chat: tuple[str, list[dict], list[int]] | None) -> list[str] | None:
    """The contents with a loss, the same for every trainer that reads the record as planner does."""
    return None if chat is None else [chat[1][i]["content"] for i in chat[2]]
