"""`planner tune`: search layer-wise plans under a memory budget (Optuna), write the best as YAML."""

from __future__ import annotations


def add_parser(sub) -> None:
    from planner.tune.storage import DEFAULT_STORAGE
    from planner.tune.study import DEFAULT_N_TRIALS, DEFAULT_STEPS, DEFAULT_THREADS  # light: optuna loads inside run_tune

    p = sub.add_parser(
        "tune", help="search the best layer-wise plan that fits --vram (Optuna)",
        description="Search active-layer count, switching period, scorer, embeddings/head and learning rate "
                    "under a memory budget: every trial's peak is predicted before training and trials over "
                    "the budget are never trained. Writes the best plan as YAML.",
    )
    p.add_argument("--vram", required=True, help="memory budget, e.g. 24GB (decimal) or 24GiB/24G (binary)")
    p.add_argument("--model", help="preset, config.json, local model directory or hub id (default: the built-in tiny pretrained LM)")
    p.add_argument("--data", help="training data file (default: the built-in task)")
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
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda", help="the device the budget is for (default cuda)")
    p.add_argument("--profile", help="device profile JSON from `planner profile` (default: documented GPU constants)")
    p.add_argument("--multi-objective", action="store_true", help="search metric vs predicted peak; keep the Pareto front")
    p.add_argument("--lora", action="store_true", help="also search LoRA adapters inside the active layers (rank 0/8/16/32)")
    p.add_argument("--batch-sizes", help="comma-separated batch sizes to search (default: one, the workload's)")
    p.add_argument("--sampler", choices=("tpe", "random"), default="tpe", help="Optuna sampler (default tpe)")
    p.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median", help="early stopping of losing trials (default median)")
    p.add_argument("--no-baselines", dest="baselines", action="store_false", help="do not run LISA / full / LoRA baselines")
    p.add_argument("--out", help="plan YAML path (default studies/<study>/plan.yaml)")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help=f"PyTorch threads for proxy training (default {DEFAULT_THREADS}: small models, shared cores; 0 = PyTorch's default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    import warnings

    from rich.console import Console

    from planner.tune import TuneOptions, run_tune
    from planner.tune.progress import summary_table
    from planner.tune.gate import human_bytes

    options = TuneOptions(
        vram=args.vram, model=args.model, data=args.data, n_trials=args.n_trials, timeout=args.timeout, study=args.study,
        storage=args.storage, seed=args.seed, steps=args.steps, eval_every=args.eval_every, scorers=args.scorers,
        device=args.device, profile=args.profile, multi_objective=args.multi_objective, lora=args.lora,
        batch_sizes=args.batch_sizes, out=args.out, sampler=args.sampler, pruner=args.pruner, baselines=args.baselines,
        threads=args.threads,
    )
    console = Console()
    # transformers 5 deprecation noise from peft's LoRA wrapping: nothing a user can act on
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    from planner.tune.signals import interrupts_as_keyboard_interrupt

    with interrupts_as_keyboard_interrupt():  # SIGTERM like Ctrl-C; never raised inside a finalizer
        result = run_tune(options, console=console, progress=not args.quiet)
    plan = result.plan
    console.print(summary_table(result, metric_name=plan.metric_name, vram_bytes=plan.vram_bytes))
    counts = result.counts
    console.print(f"trials: {counts.get('complete', 0)} trained, {counts.get('gated', 0)} gated (over budget, never trained), "
                  f"{counts.get('pruned', 0) - counts.get('gated', 0)} pruned early, {counts.get('fail', 0)} failed")
    lora = f", LoRA rank {plan.lora_rank}" if plan.lora_rank else ""
    console.print(f"best plan (trial {plan.trial_number}): γ={plan.active_layers} of {plan.num_layers}, K={plan.period}, "
                  f"scorer={plan.scorer}, embeddings {'on' if plan.train_embeddings else 'off'}, head "
                  f"{'on' if plan.train_head else 'off'}, lr={plan.learning_rate:.3g}{lora}; predicted peak "
                  f"{human_bytes(plan.predicted_peak_bytes)} of {human_bytes(plan.vram_bytes)}")
    best_kind = result.rows[0].kind
    if best_kind != "search":
        console.print(f"the best plan is the {best_kind.split(':', 1)[1]} baseline itself: no searched trial beat it "
                      f"(resume with --study {plan.study_name} and a larger --n-trials to search on)")
    if result.pareto:
        console.print("Pareto front (metric vs predicted peak): " + ", ".join(
            f"#{p['trial']} {p['metric']:.4f} @ {human_bytes(p['predicted_peak_bytes'])}" for p in result.pareto))
    console.print(f"plan written to {result.plan_path}; study {plan.study_name!r} in {plan.storage} "
                  f"(browse: optuna-dashboard {plan.storage})")
    return 0
