"""`planner tune`: search layer-wise plans under a memory budget (Optuna), write the best as YAML."""

from __future__ import annotations


def add_parser(sub) -> None:
    from planner.cli.levers import add_lever_flags
    from planner.tune.confirm import DEFAULT_CONFIRM_SEEDS, DEFAULT_CONFIRM_TOP
    from planner.tune.storage import DEFAULT_STORAGE
    from planner.tune.study import DEFAULT_N_TRIALS, DEFAULT_STEPS, DEFAULT_THREADS  # light: optuna loads inside run_tune
    from planner.tune.target import DEFAULT_BATCH_SIZE, DEFAULT_DTYPE, DEFAULT_SEQ_LEN, DEFAULT_TARGET

    p = sub.add_parser(
        "tune", help="search the best layer-wise plan that fits --vram (Optuna)",
        description="Plan layer-wise fine-tuning of a target model (--model) on a card of --vram: active-layer count, "
                    "lowest drawn layer, gradient checkpointing, switching period, scorer, embeddings/head and learning "
                    "rate. Every trial's peak is predicted for the target in its training shape before anything trains; "
                    "trials over the budget are never trained; the rest train briefly on a proxy (--proxy). "
                    "Writes the best plan for the target as YAML.",
    )
    p.add_argument("--vram", required=True, help="memory budget, e.g. 24GB (decimal) or 24GiB/24G (binary)")
    p.add_argument("--model", help=f"the target: preset, config.json, local model directory or hub id (default {DEFAULT_TARGET})")
    # the target's training shape: the same flags, defaults aside, as `planner estimate`
    p.add_argument("--seq-len", metavar="N", help=f"the target's tokens per sequence (default {DEFAULT_SEQ_LEN})")
    p.add_argument("--batch-size", metavar="N", help=f"the target's micro-batch size (default {DEFAULT_BATCH_SIZE})")
    p.add_argument("--dtype", metavar="{float32,bfloat16,float16}", help=f"the target's weight dtype (default {DEFAULT_DTYPE}; float32 with --amp)")
    p.add_argument("--amp", metavar="{bf16,fp16}", help="autocast with float32 weights (HF Trainer's bf16=True)")
    add_lever_flags(p, shape_only=True)  # --optimizer, --optimizer-in-backward, --loss-chunks: every trial's shape
    p.add_argument("--proxy", default="auto",
                   help="what the short trainings run on: target (the target itself), builtin (the built-in pretrained "
                        "proxy, as deep as the target up to 32 layers), a preset, hub id or local model directory, or "
                        "auto (default: target when a CUDA device is present and the target's smallest plan fits its "
                        "free memory, else builtin)")
    p.add_argument("--proxy-device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="where the proxy trains (default auto: cuda when present)")
    p.add_argument("--data", help="training data file for the proxy (default: the built-in task)")
    p.add_argument("--n-trials", type=int, default=DEFAULT_N_TRIALS,
                   help=f"the study's total trials, baselines included (default {DEFAULT_N_TRIALS}); a resume runs the rest")
    p.add_argument("--timeout", type=float, help="stop starting new trials after this many seconds")
    p.add_argument("--study", help="study name; an existing name resumes that study (default: tune-<date>-<time>)")
    p.add_argument("--storage", default=DEFAULT_STORAGE,
                   help="Optuna storage URL (sqlite:///..., postgresql://..., mysql://...) or a journal file *.log "
                        "(default sqlite:///studies/planner.db)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler, the data order and the model init")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"proxy training steps per trial (default {DEFAULT_STEPS})")
    p.add_argument("--eval-every", type=int, help="steps between intermediate evaluations (default steps/3)")
    p.add_argument("--scorers", help="comma-separated scorers to search (default: every registered one)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda", help="the device the target's budget is for (default cuda)")
    p.add_argument("--profile", help="device profile JSON from `planner profile` (default: documented GPU constants)")
    p.add_argument("--multi-objective", action="store_true", help="search metric vs predicted peak; keep the Pareto front")
    p.add_argument("--lora", action="store_true", help="also search LoRA adapters inside the active layers (rank 0/8/16/32)")
    p.add_argument("--batch-sizes", help="comma-separated target micro-batch sizes to search (default: --batch-size); "
                                         "a proxy other than the target then trains with the same batch")
    p.add_argument("--sampler", choices=("tpe", "random"), default="tpe", help="Optuna sampler (default tpe)")
    p.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median", help="early stopping of losing trials (default median)")
    p.add_argument("--confirm-seeds", type=int, default=DEFAULT_CONFIRM_SEEDS,
                   help=f"before the plan is written, re-train the best searched plans and every baseline that fits with this "
                        f"many seeds and pick the best mean (default {DEFAULT_CONFIRM_SEEDS}; 0: no confirmation)")
    p.add_argument("--confirm-top", type=int, default=DEFAULT_CONFIRM_TOP,
                   help=f"how many of the best searched plans are confirmed (default {DEFAULT_CONFIRM_TOP})")
    p.add_argument("--no-baselines", dest="baselines", action="store_false", help="do not run LISA / full / LoRA baselines")
    p.add_argument("--out", help="plan YAML path (default studies/<study>/plan.yaml)")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help=f"PyTorch threads for proxy training (default {DEFAULT_THREADS}: small models, shared cores; 0 = PyTorch's default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    import warnings

    from rich.console import Console

    from planner.cli.levers import lever_values
    from planner.errors import collect
    from planner.tune import TuneOptions, run_tune
    from planner.tune.summary import confirmation_lines, measured_lines, plan_line, summary_table

    problems: list[str] = []
    options = TuneOptions(
        vram=args.vram, model=args.model, seq_len=args.seq_len, batch_size=args.batch_size, dtype=args.dtype, amp=args.amp,
        levers=lever_values(args, problems), proxy=args.proxy, proxy_device=args.proxy_device, data=args.data,
        n_trials=args.n_trials, timeout=args.timeout, study=args.study, storage=args.storage, seed=args.seed,
        steps=args.steps, eval_every=args.eval_every, scorers=args.scorers, device=args.device, profile=args.profile,
        multi_objective=args.multi_objective, lora=args.lora, batch_sizes=args.batch_sizes, out=args.out,
        sampler=args.sampler, pruner=args.pruner, baselines=args.baselines, threads=args.threads,
        confirm_seeds=args.confirm_seeds, confirm_top=args.confirm_top,
    )
    collect(problems)
    console = Console(highlight=False, soft_wrap=True)  # one line per message, whatever the width
    # transformers 5 deprecation noise from peft's LoRA wrapping: nothing a user can act on
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    from planner.tune.signals import interrupts_as_keyboard_interrupt

    with interrupts_as_keyboard_interrupt():  # SIGTERM like Ctrl-C; never raised inside a finalizer
        result = run_tune(options, console=console, progress=not args.quiet)
    plan = result.plan
    table = summary_table(result, metric_name=plan.metric_name, vram_bytes=plan.vram_bytes, target_name=plan.model)
    if console.is_terminal:
        console.print(table)
    else:  # piped or redirected, rich assumes 80 columns and would wrap every row: the table gets its natural width
        columns = console.width
        console.width = max(columns, console.measure(table, options=console.options.update_width(10**4)).maximum)
        console.print(table)
        console.width = columns
    counts = result.counts
    reused = f", {counts['reused']} reused a proxy run" if counts.get("reused") else ""
    console.print(f"trials: {counts.get('complete', 0)} trained{reused}, {counts.get('gated', 0)} gated (over budget for "
                  f"{plan.model}, never trained), {counts.get('pruned', 0) - counts.get('gated', 0)} pruned early, "
                  f"{counts.get('fail', 0)} failed"
                  + (f", {counts['interrupted']} interrupted (not counted)" if counts.get("interrupted") else "")
                  + (f"; {counts['confirmation']} confirmation runs" if counts.get("confirmation") else ""))
    for line in confirmation_lines(plan):
        console.print(line)
    for line in measured_lines(result):
        console.print(line)
    console.print(plan_line(plan))
    if plan.proxy is not None and plan.proxy.kind != "target":
        console.print(f"measured on {plan.proxy.name}: γ={plan.proxy.active_layers} of {plan.proxy.num_layers} from layer "
                      f"{plan.proxy.min_depth} up, lr={plan.proxy.learning_rate:.3g}, batch {plan.proxy.batch_size} "
                      f"(depth and learning-rate rules: planner.tune.mapping)")
    best_kind = result.rows[0].kind
    if best_kind != "search":
        console.print(f"the best plan is the {best_kind.split(':', 1)[1]} baseline itself: no searched trial beat it"
                      f"{' on the confirmed mean' if plan.confirmation else ''} "
                      f"(resume with --study {plan.study_name} and a larger --n-trials to search on)")
    if result.pareto:
        from planner.tune.gate import human_bytes

        console.print("Pareto front (metric vs predicted peak): " + ", ".join(
            f"#{p['trial']} {p['metric']:.4f} @ {human_bytes(p['predicted_peak_bytes'])}" for p in result.pareto))
    console.print(f"plan written to {result.plan_path}; study {plan.study_name!r} in {plan.storage} "
                  f"(browse: optuna-dashboard {plan.storage})")
    from planner.tune.summary import exit_code

    return exit_code(plan)  # 1 when confirmation found no signal: the plan is written, its verdict says so
