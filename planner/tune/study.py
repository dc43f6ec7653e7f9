"""The study: create or resume it in its storage, queue the baselines, run trials, write the plan.

``--n-trials`` is the study's total: every process stops once the study holds that many
finished trials (complete, pruned or failed; interrupted ones do not count), so a resume
finishes the remainder and several processes on one storage share the work.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from planner.errors import PlannerError, collect
from planner.threads import torch_threads
from planner.tune.gate import human_bytes
from planner.tune.storage import DEFAULT_STORAGE, check_storage
from planner.units import parse_bytes

DEFAULT_N_TRIALS = 24  # 3 baselines + 21 searched
DEFAULT_STEPS = 150  # proxy optimizer steps per trial
# default batch: 32 sequences or 2048 tokens, whichever is fewer (the default task's
# 36-token examples reach ~20% accuracy in 150 steps of 32; long sequences get small batches)
MAX_DEFAULT_BATCH = 32
DEFAULT_BATCH_TOKENS = 2048
# PyTorch intra-op threads for proxy training (0 = PyTorch's default). Proxy models are small,
# and threads spin-wait when the cores are shared: on this project's busy 2-core machine 60
# steps of the default workload took 7.9 s with 1 thread and 173 s with 2.
DEFAULT_THREADS = 1
DEFAULT_EVALS = 3  # intermediate evaluations per trial (what the pruner sees)


class InfeasibleBudget(PlannerError):
    """Not even the smallest configuration fits the budget."""

    exit_code = 2


class TuneOptions(BaseModel):
    """Everything `planner tune` takes; validated where it enters."""

    model_config = ConfigDict(extra="forbid")

    vram: str | int = Field(description="budget, e.g. 24GB or 24GiB")
    model: str | None = None
    data: str | None = None
    n_trials: int = Field(DEFAULT_N_TRIALS, description="the study's total number of trials")
    timeout: float | None = None
    study: str | None = None
    storage: str = DEFAULT_STORAGE
    seed: int = 0
    steps: int = DEFAULT_STEPS
    eval_every: int | None = None
    scorers: list[str] | None = None
    device: Literal["cpu", "cuda"] = "cuda"
    profile: str | None = None
    multi_objective: bool = False
    lora: bool = False
    batch_sizes: list[int] | None = None
    out: str | None = None
    sampler: Literal["tpe", "random"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    baselines: bool = True
    threads: int = DEFAULT_THREADS

    @field_validator("scorers", "batch_sizes", mode="before")
    @classmethod
    def _split(cls, value):
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    def validate_all(self) -> int:
        """Check every flag at once; return the budget in bytes."""
        problems = []
        vram = None
        try:
            vram = parse_bytes(self.vram, name="--vram")
        except PlannerError as exc:
            problems.append(str(exc))
        if self.n_trials <= 0:
            problems.append(f"--n-trials must be > 0, but got {self.n_trials}")
        if self.timeout is not None and self.timeout <= 0:
            problems.append(f"--timeout must be > 0 seconds, but got {self.timeout}")
        if self.threads < 0:
            problems.append(f"--threads must be >= 0 (0 = PyTorch's default), but got {self.threads}")
        if self.steps <= 0:
            problems.append(f"--steps must be > 0, but got {self.steps}")
        if self.eval_every is not None and not 1 <= self.eval_every <= self.steps:
            problems.append(f"--eval-every must satisfy 1 <= eval_every <= steps={self.steps}, but got {self.eval_every}")
        if self.scorers is not None:
            from planner.sampling import SCORERS

            unknown = [s for s in self.scorers if s not in SCORERS]
            if unknown or not self.scorers:
                problems.append(f"--scorers must name registered scorers ({', '.join(sorted(SCORERS))}), but got {unknown or self.scorers}")
        if self.batch_sizes is not None and (not self.batch_sizes or any(b < 1 for b in self.batch_sizes)):
            problems.append(f"--batch-sizes must be integers >= 1, but got {self.batch_sizes}")
        if self.study is not None and not self.study.strip():
            problems.append("--study must be a non-empty name, but got ''")
        try:
            check_storage(self.storage)
        except PlannerError as exc:
            problems.append(str(exc))
        if self.data is not None and "://" not in self.data and not Path(self.data).expanduser().exists():
            problems.append(f"--data file must exist, but {self.data!r} was not found")
        if self.profile is not None and not Path(self.profile).expanduser().is_file():
            problems.append(f"--profile file must exist, but {self.profile!r} was not found")
        collect(problems)
        return vram


def _eval_every(options: TuneOptions) -> int:
    return options.eval_every or max(1, options.steps // DEFAULT_EVALS)


TPE_STARTUP_TRIALS = 5  # random points before TPE models the space (studies/bench_search.py: 5 beat 8 and 10)


def make_sampler(name: str, seed: int):
    """The Optuna sampler ``--sampler`` names: multivariate TPE (joint over the parameters) or random."""
    import optuna

    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=TPE_STARTUP_TRIALS, multivariate=True)


def _make_pruner(options: TuneOptions):
    import optuna

    if options.pruner == "none" or options.multi_objective:
        return optuna.pruners.NopPruner()
    if options.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=_eval_every(options), max_resource=options.steps)
    # never on the first evaluation (early accuracy says little about the end: the default
    # run pruned 13 of 21 trials there), from the second on once 5 trials have finished
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=_eval_every(options))


def default_batch_size(seq_len: int) -> int:
    return max(1, min(MAX_DEFAULT_BATCH, DEFAULT_BATCH_TOKENS // max(1, seq_len)))


def default_study_name() -> str:
    return "tune-" + time.strftime("%Y%m%d-%H%M%S")


def build_space(workload, options: TuneOptions):
    """The search space for ``workload`` under ``options``."""
    from planner.sampling import SCORERS
    from planner.tune.space import DEFAULT_LORA_RANKS, SearchSpace

    scorers = tuple(options.scorers) if options.scorers else tuple(sorted(SCORERS))
    kwargs = {}
    if options.batch_sizes:
        kwargs["batch_sizes"] = tuple(options.batch_sizes)
    else:
        suggested = getattr(workload, "batch_size", None)  # the workload's suggested proxy batch
        kwargs["batch_sizes"] = (int(suggested) if suggested else default_batch_size(int(workload.seq_len)),)
    return SearchSpace(num_layers=workload.spec.num_layers, scorers=scorers, seq_len=int(workload.seq_len),
                       lora_ranks=DEFAULT_LORA_RANKS if options.lora else (), **kwargs)


def check_feasible(space, gate) -> None:
    """Raise :class:`InfeasibleBudget` naming the smallest budget that would fit, when nothing fits."""
    preds = [(gate.predict(space.train_config(p)), p) for p in space.cheapest_points()]
    smallest, point = min(preds, key=lambda x: x[0].peak_bytes)
    if not smallest.fits:
        what = f"γ=1, embeddings {'trainable' if point.train_embeddings else 'frozen'}, head {'trainable' if point.train_head else 'frozen'}, batch {space.batch_size_of(point)}"
        if point.adapter_rank:
            what += f", LoRA rank {point.adapter_rank}"
        raise InfeasibleBudget(
            f"--vram {human_bytes(gate.vram_bytes)} must hold at least the smallest configuration ({what}), which needs "
            f"{human_bytes(smallest.peak_bytes)}: a budget of at least {smallest.peak_bytes} B "
            f"({human_bytes(smallest.peak_bytes)}) would fit"
        )


def _open_study(options: TuneOptions, storage_obj, name: str, study_attrs: dict, space, multi_objective: bool):
    """Create the study (and queue the baselines), or load it when it exists and matches."""
    import optuna

    from planner.tune.preflight import check_resume
    from planner.tune.seeding import PerTrialSeed

    directions = [study_attrs["direction"], "minimize"] if multi_objective else [study_attrs["direction"]]
    sampler, pruner = PerTrialSeed(make_sampler(options.sampler, options.seed), options.seed), _make_pruner(options)
    try:
        study = optuna.create_study(storage=storage_obj, study_name=name, sampler=sampler, pruner=pruner, directions=directions)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage_obj, study_name=name, sampler=sampler, pruner=pruner)
        check_resume(name, study.user_attrs, study_attrs)
        return study, False
    for key, value in study_attrs.items():
        study.set_user_attr(key, value)
    if options.baselines:
        from planner.tune.baselines import enqueue_baselines

        enqueue_baselines(study, space)
    return study, True


class StopAfter:
    """Stop the study once it holds ``total`` finished trials (counted across every process)."""

    def __init__(self, total: int):
        self.total = total

    def __call__(self, study, trial) -> None:
        from planner.tune.lifecycle import owed

        if owed(study, self.total) <= 0:
            study.stop()


class Interrupted(PlannerError):
    """Ctrl-C: finished trials are stored; the message says how to resume."""

    exit_code = 130


def resume_command(options: TuneOptions, study_name: str) -> str:
    parts = ["planner tune", f"--vram {options.vram}", f"--study {study_name}"]
    if options.storage != DEFAULT_STORAGE:
        parts.append(f"--storage {options.storage}")
    for flag, value in (("--model", options.model), ("--data", options.data), ("--n-trials", options.n_trials),
                        ("--device", options.device), ("--steps", options.steps), ("--seed", options.seed)):
        if value is not None:
            parts.append(f"{flag} {value}")
    if options.scorers:
        parts.append(f"--scorers {','.join(options.scorers)}")
    if options.batch_sizes:
        parts.append(f"--batch-sizes {','.join(map(str, options.batch_sizes))}")
    parts += [flag for flag, on in (("--lora", options.lora), ("--multi-objective", options.multi_objective)) if on]
    return " ".join(parts)


def run_tune(options: TuneOptions, *, workload=None, estimator=None, console=None, progress: bool = True, proxy=None):
    """Search layer-wise plans under ``--vram`` and write the best one; returns a ``TuneResult``.

    ``workload``/``estimator``/``proxy`` replace the built-in ones (tests, benchmarks).
    """
    vram = options.validate_all()
    from planner.tune.preflight import check_outputs

    name = options.study or default_study_name()
    check_outputs(options.out, name, options.storage)
    if console is not None and options.study is None:
        console.print(f"study {name!r} in {options.storage} (resume it with --study {name})")
    import optuna

    from planner.spec import layers_attribute
    from planner.tune.gate import BudgetGate
    from planner.tune.objective import Objective
    from planner.tune.progress import TrialProgress
    from planner.tune.result import finished, summarize
    from planner.tune.signals import deferred, exit_code
    from planner.tune.storage import open_storage

    storage_obj = open_storage(options.storage)  # before any work: an unreadable storage fails at once
    if workload is None:
        from planner.data import load_workload

        workload = load_workload(model=options.model, data=options.data, seed=options.seed)
    space = build_space(workload, options)
    profile = None
    if options.profile is not None:
        from planner.cost.device import DeviceProfile

        profile = DeviceProfile.load(options.profile)
    gate = BudgetGate(workload.spec, vram, device=options.device, profile=profile, estimator=estimator)
    check_feasible(space, gate)

    layers_attr = layers_attribute(workload.new_model(options.seed))
    study_attrs = {
        "vram_bytes": vram, "model": str(workload.model_source), "model_type": workload.spec.model_type,
        "num_layers": space.num_layers, "layers_attribute": layers_attr, "metric_name": workload.metric_name,
        "direction": workload.direction, "workload": workload.name, "device": options.device,
        "multi_objective": options.multi_objective, "search_space": space.describe(),
        "steps": options.steps, "seed": options.seed,
    }
    # Optuna logs every failed trial with its traceback; failures are counted in the progress bar and
    # their reasons stored in the trial (user_attrs['reason']), so the terminal stays one line per event
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with deferred():  # Ctrl-C waits until the study's settings and baselines are all stored
        study, _created = _open_study(options, storage_obj, name, study_attrs, space, options.multi_objective)

    objective = Objective(workload, space, gate, steps=options.steps, eval_every=_eval_every(options), seed=options.seed,
                          multi_objective=options.multi_objective, **({"proxy": proxy} if proxy else {}))
    from planner.tune.lifecycle import GuardedObjective, attach, owed, settle_message

    worker = attach(study)  # dead workers' trials are failed and queued again before counting
    done = sum(finished(t) for t in study.get_trials(deepcopy=False))
    remaining = owed(study, options.n_trials)
    if remaining > 0:
        bar = TrialProgress(options.n_trials, done, metric_name=workload.metric_name, direction=workload.direction,
                            console=console, enabled=progress)
        bar.seed_best(study)
        try:
            with torch_threads(options.threads), bar:
                study.optimize(GuardedObjective(objective, worker), n_trials=remaining, timeout=options.timeout,
                               catch=(Exception,), callbacks=[bar, worker.reap, StopAfter(options.n_trials)])
        except KeyboardInterrupt as exc:
            worker.settle()
            kept = sum(finished(t) for t in study.get_trials(deepcopy=False))
            error = Interrupted(f"{settle_message(exc)}: {kept} finished trials of study {name!r} are stored in {options.storage}; "
                                f"resume with: {resume_command(options, name)}")
            error.exit_code = exit_code(exc)
            raise error from None
    worker.close()

    result = summarize(study, space, workload=workload, vram_bytes=vram, layers_attribute=layers_attr,
                       storage=options.storage, multi_objective=options.multi_objective)
    out = Path(options.out) if options.out else Path("studies") / name / "plan.yaml"
    result.plan.save(out)
    return replace(result, plan_path=str(out))
