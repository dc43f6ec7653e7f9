"""The study: create or resume it in its storage, queue the baselines, run trials, write the plan.

Two objects flow one way: the target (the model the plan is for, in its training shape) is
costed, and the cost decides the space's points through the gate; the proxy workload (a model
and data) trains the points that fit and gives the metric.

``--n-trials`` is the study's total: every process stops once the study holds that many
finished trials (complete, pruned or failed; interrupted ones do not count), so a resume
finishes the remainder and several processes on one storage share the work.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import replace
from pathlib import Path

import optuna

from planner.data.load import BUILTIN
from planner.errors import PlannerError
from planner.threads import torch_threads
from planner.tune.search.forms import fits as fits_in_a_form
from planner.tune.search.gate import BudgetGate
from planner.units import human_bytes

from planner.tune.options import DEFAULT_EVALS, TuneOptions, command_line
from planner.tune.proxy.target import target_layers_attribute
from planner.tune.storage.preflight import check_outputs, check_resume, check_param_names, unwritten_plan
from planner.tune.search.samplers import study_sampler
from planner.tune.storage.creation import CREATED_BY, READY, wait_for_creation
from planner.tune.storage.lifecycle import GuardedObjective, StopAfter, attach, owed, settle_message, stored_trials
from planner.tune.storage.processes import process_identity
from planner.tune.study.baselines import enqueue_baselines, enqueue_missing_baselines, enqueue_offered
from planner.tune.storage.signals import deferred, exit_code
from planner.tune.storage.backends import disk_full, full_disk_message, open_storage
from planner.tune.proxy.source import ProxySetup, pick_device, resolve_proxy
from planner.tune.proxy.pool import ProxyPool
from planner.tune.proxy.train import TrainShape
from planner.tune.study.slots import optimize_in_slots, study_jobs
from planner.tune.study.objective import Objective
from planner.tune.study.progress import TrialProgress
from planner.tune.study.result import finished, summarize
from planner.tune.study.confirm import confirm_phase, waiting_confirmations
from planner.tune.study.record import is_confirm
from planner.tune.target_space import build_space, check_feasible, target_of_workload

# default batch: 32 sequences or 2048 tokens, whichever is fewer (the default task's
# 36-token examples reach ~20% accuracy in 150 steps of 32; long sequences get small batches)
MAX_DEFAULT_BATCH = 32
DEFAULT_BATCH_TOKENS = 2048


def _eval_every(options: TuneOptions) -> int:
    # rounded up: the last of DEFAULT_EVALS evaluations falls on the last step and is the metric (50 steps:
    # 17, 34, 50; rounded down it was 16, 32, 48 and one more at 50)
    return options.eval_every or -(-options.steps // DEFAULT_EVALS)


def _make_pruner(options: TuneOptions):
    if options.pruner == "none" or options.multi_objective:
        return optuna.pruners.NopPruner()
    if options.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=_eval_every(options), max_resource=options.steps)
    # never on the first evaluation (early accuracy says little about the end: the default
    # run pruned 13 of 21 trials there), from the second on once 5 trials have finished; Optuna prunes
    # from step n_warmup_steps on, so the first evaluation's step is one short of it
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=_eval_every(options) + 1)


def default_batch_size(seq_len: int) -> int:
    return max(1, min(MAX_DEFAULT_BATCH, DEFAULT_BATCH_TOKENS // max(1, seq_len)))


def default_study_name() -> str:
    return "tune-" + time.strftime("%Y%m%d-%H%M%S")


def _open_study(options: TuneOptions, storage_obj, name: str, study_attrs: dict, space, multi_objective: bool, gate):
    """Create the study (and queue the baselines), or load it when it exists and matches."""

    directions = [study_attrs["direction"], "minimize"] if multi_objective else [study_attrs["direction"]]

    sampler, pruner = study_sampler(options.sampler, options.seed, space, gate), _make_pruner(options)

    try:
        study = optuna.create_study(
            storage=storage_obj, study_name=name, sampler=sampler, pruner=pruner, directions=directions
        )
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage_obj, study_name=name, sampler=sampler, pruner=pruner)
        created = wait_for_creation(study)
        check_resume(name, study.user_attrs, study_attrs)
        check_param_names(name, study.get_trials(deepcopy=False))
        if not created:
            # a worker killed between creating the study and storing its settings and baselines left them out
            for key in study_attrs.keys() - study.user_attrs.keys():
                study.set_user_attr(key, study_attrs[key])
            if options.baselines:
                enqueue_missing_baselines(study, space, gate)
            study.set_user_attr(READY, True)
        return study, False
    study.set_user_attr(CREATED_BY, process_identity())
    for key, value in study_attrs.items():
        study.set_user_attr(key, value)

    queued = len(enqueue_baselines(study, space, gate)) if options.baselines else 0
    enqueue_offered(study, space, gate, room=max(0, options.n_trials - queued))  # no more fixed trials than will run
    study.set_user_attr(READY, True)
    return study, True


class Interrupted(PlannerError):
    """Ctrl-C: finished trials are stored; the message says how to resume."""

    exit_code = 130


def _stopped(exc: BaseException, options: TuneOptions, name: str, storage_obj, worker) -> PlannerError | None:
    """The one line a study stopped by Ctrl-C, SIGTERM or a full disk ends with (None for any other error)."""

    interrupted = isinstance(exc, KeyboardInterrupt)
    if not interrupted and disk_full(exc) is None:
        return None
    if worker is not None:
        # interrupted: this run's unfinished trials are failed as such and queued again; a full disk takes no more
        # writes: the resume finds this run's trial dead, fails it and queues it again (neither counts)
        try:
            worker.settle() if interrupted else worker.close()
        except Exception as failed:  # noqa: BLE001 - Ctrl-C on a full disk: the resume settles them instead
            worker.close()
            if disk_full(failed) is None:
                raise
    kept = stored_trials(storage_obj, name)
    where = f"{'the' if kept is None else kept} finished trials of study {name!r} are stored in {options.storage}"
    if not interrupted:
        return PlannerError(
            f"{full_disk_message(exc, options.storage)}; {where}: free space and resume with: "
            f"{resume_command(options, name)}"
        )
    error = Interrupted(f"{settle_message(exc)}: {where}; resume with: {resume_command(options, name)}")
    error.exit_code = exit_code(exc)
    return error


def resume_command(options: TuneOptions, study_name: str) -> str:
    """The command that continues study ``study_name`` with the same settings: every flag of ``options`` that is
    not at its default (planner.tune.options), and the study's name (the generated one when none was given)."""
    return shlex.join(["planner", "tune", *command_line(options.model_copy(update={"study": study_name}))])


def _proxy_setup(options: TuneOptions, target, space, gate, workload):
    """The proxy: ``workload`` when given (tests, benchmarks), else what ``--proxy`` names."""

    if workload is None:
        return resolve_proxy(
            options.proxy,
            target=target,
            data=options.data,
            proxy_device=options.proxy_device,
            seed=options.seed,
            space=space,
            gate=gate,
            max_seq_len=target.shape.seq_len,
        )
    if workload.spec.num_layers > target.num_layers:
        raise PlannerError(
            f"--proxy must not be deeper than the target, but {workload.name!r} has {workload.spec.num_layers} "
            f"decoder layers and the target {target.name!r} {target.num_layers}"
        )
    return ProxySetup(
        "given",
        workload.name,
        pick_device(options.proxy_device),
        workload,
        workload.spec.num_layers,
        workload.spec.hidden_size,
    )


def _train_shape(target, proxy):
    """How proxy runs are shaped: the target itself trains in the target's shape; other proxies in their own."""

    if proxy.is_target:
        s = target.shape
        return TrainShape(
            device=proxy.device, seq_len=s.seq_len, dtype=s.dtype, amp=s.amp, optimizer=s.optimizer, measure=True
        )
    return TrainShape(device=proxy.device, optimizer=target.shape.optimizer)  # the optimizer changes what is learned


def header_lines(target, proxy, vram: int, space, gate, new_study: str | None = None) -> list[str]:
    """What `planner tune` says first: the target, the proxy and its device (after a generated study's name,
    so that it can be resumed), then what the budget allows."""
    lines = [
        (new_study + ": " if new_study else "")
        + f"target: {target.label()} | proxy: {proxy.name} on {proxy.device}"
        + (f" ({proxy.why})" if proxy.why else "")
    ]
    front = space.frontier(fits_in_a_form(space, gate))
    allows = ", ".join(
        f"γ≤{p.active_layers} from layer {p.min_depth}{' with checkpointing' if p.gradient_checkpointing else ''}"
        for p in front
    )
    lines.append(
        f"budget {human_bytes(vram)} on {target.device} ({target.profile_line}): embeddings and head frozen, "
        f"it allows {allows or 'no layer-wise plan'}"
    )
    return lines


def run_tune(options: TuneOptions, *, workload=None, estimator=None, console=None, progress: bool = True, proxy=None):
    """Search layer-wise plans for the target under ``--vram`` and write the best one; returns a ``TuneResult``.

    ``workload`` replaces the proxy workload (without ``options.model`` its own model is the
    target), ``estimator`` the cost model, ``proxy`` the proxy trainer (tests, benchmarks).
    """
    target, vram = options.validate_all()
    progress = progress and not options.quiet
    if workload is not None and options.model is None:
        target = target_of_workload(workload, options)

    name = options.study or default_study_name()
    check_outputs(options.out, name, options.storage)

    storage_obj = open_storage(options.storage)  # before any work: an unreadable storage fails at once
    worker = None  # once attached: its unfinished trials are settled when the study stops
    pool: ProxyPool | None = None  # with --jobs > 1: the worker processes that train the proxy runs
    try:
        space = build_space(target, options)
        gate = BudgetGate(target.spec, vram, device=target.device, profile=target.profile, estimator=estimator)
        check_feasible(space, gate, target.name)
        setup = _proxy_setup(options, target, space, gate, workload)
        workload = setup.workload
        # the proxy's own horizon (a real model's short one)
        if setup.steps and "steps" not in options.model_fields_set:
            options = options.model_copy(update={"steps": setup.steps})
        if console is not None:
            fresh = (
                f"study {name!r} in {options.storage} (resume it with --study {name})"
                if options.study is None
                else None
            )
            for line in header_lines(target, setup, vram, space, gate, fresh):
                console.print(line, highlight=False)

        layers_attr = target_layers_attribute(target.spec)
        study_attrs = {
            "vram_bytes": vram,
            "model": target.source,
            "model_type": target.spec.model_type,
            "num_layers": space.num_layers,
            "layers_attribute": layers_attr,
            "metric_name": workload.metric_name,
            "direction": workload.direction,
            "workload": workload.name,
            "device": options.device,
            "multi_objective": options.multi_objective,
            "search_space": space.describe(),
            "steps": options.steps,
            "seed": options.seed,
            "target": target.describe(),
            "target_shape": target.shape_dict(),
            "proxy": {k: v for k, v in setup.describe().items() if k != "device"},
            "proxy_device": setup.device,
        }
        # Optuna logs every failed trial with its traceback; failures are counted in the progress bar and
        # their reasons stored in the trial (user_attrs['reason']), so the terminal stays one line per event
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        with deferred():  # Ctrl-C waits until the study's settings and baselines are all stored
            study, _created = _open_study(options, storage_obj, name, study_attrs, space, options.multi_objective, gate)

        objective = Objective(
            workload,
            space,
            gate,
            steps=options.steps,
            eval_every=_eval_every(options),
            seed=options.seed,
            multi_objective=options.multi_objective,
            proxy_layers=setup.num_layers,
            proxy_hidden=setup.hidden_size,
            target_hidden=target.hidden_size,
            shape=_train_shape(target, setup),
            proxy_is_target=setup.is_target,
            proxy_batch=None
            if setup.is_target
            else (
                setup.batch_size or getattr(workload, "batch_size", None) or default_batch_size(int(workload.seq_len))
            ),
            **({"proxy": proxy} if proxy else {}),
        )

        worker = attach(study)  # dead workers' trials are failed and queued again before counting
        jobs = study_jobs(options, setup, proxy)
        if jobs > 1:  # forked now: no thread runs yet, the workers hold the workload and the trainer as they are
            pool = ProxyPool(objective.proxy, workload, jobs=jobs, threads=options.threads)
            objective.proxy = pool

        done = sum(finished(t) and not is_confirm(t) for t in study.get_trials(deepcopy=False))
        remaining = owed(study, options.n_trials)
        guarded = GuardedObjective(objective, worker)
        with torch_threads(options.threads):
            if remaining > 0:
                bar = TrialProgress(
                    options.n_trials,
                    done,
                    metric_name=workload.metric_name,
                    direction=workload.direction,
                    console=console,
                    enabled=progress,
                )
                bar.seed_best(study)
                with bar:  # queued confirmation runs of an earlier run are popped first: room for them too
                    if pool is not None:
                        optimize_in_slots(
                            study,
                            guarded,
                            pool,
                            total=options.n_trials,
                            timeout=options.timeout,
                            callbacks=[bar, worker.reap],
                        )
                    else:
                        study.optimize(
                            guarded,
                            n_trials=remaining + waiting_confirmations(study),
                            timeout=options.timeout,
                            catch=(Exception,),
                            callbacks=[bar, worker.reap, StopAfter(options.n_trials)],
                        )
            if options.confirm_seeds:
                confirm_phase(
                    study,
                    guarded,
                    space,
                    top=options.confirm_top,
                    seeds=options.confirm_seeds,
                    workload=workload,
                    console=console,
                    progress=progress,
                    callbacks=[worker.reap],
                    pool=pool,
                )
    except BaseException as exc:  # Ctrl-C, SIGTERM or a full disk (study creation included): every finished trial stays
        if pool is not None:
            pool.close()  # the runs in flight ended with their threads (in_slots), or end now
        error = _stopped(exc, options, name, storage_obj, worker)
        if error is None:
            raise
        raise error from None
    worker.close()
    if pool is not None:
        pool.close()

    result = summarize(
        study,
        space,
        target=target,
        proxy=setup,
        vram_bytes=vram,
        layers_attribute=layers_attr,
        storage=options.storage,
        multi_objective=options.multi_objective,
        seed=options.seed,
        steps=options.steps,
        data=options.data if options.data and not options.data.startswith(BUILTIN) else None,
    )
    out = Path(options.out) if options.out else Path("studies") / name / "plan.yaml"
    try:
        result.plan.save(out)
    except OSError as exc:  # a full disk: the plan is written whole or not at all, and the study is stored
        raise PlannerError(
            unwritten_plan(
                out,
                exc,
                flag="--out" if options.out else None,
                study=name,
                storage=options.storage,
                again=resume_command(options, name),
            )
        ) from None
    return replace(result, plan_path=str(out))
