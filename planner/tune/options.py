"""What `planner tune` takes, each option declared once: a :class:`TuneOptions` field.

A field carries its type and default (pydantic), its help text (``description``), and, where the
field needs them, a :class:`Cli` entry in its annotation: the rule its value must follow and how
the value is shown. Its flag is its name with dashes (``n_trials``: ``--n-trials``); a bool field
is a switch: ``--lora`` turns on a False default, ``--no-baselines`` turns off a True one. The memory
levers of the training shape (``levers``) keep their own declarations (:class:`planner.levers.Flag`).

Read from these declarations: the command line's parser (``planner.cli.tune``), the options built
from its text (:meth:`TuneOptions.from_flags`) and the command that resumes a study
(:func:`command_line`). Every flag is repeated on resume: none changes what it means there (``--n-trials``
is the study's total, ``--timeout`` this process's own limit, ``--out`` where this process writes the
plan); a study started without ``--study`` is resumed by its generated name.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from planner.errors import PlannerError, ValidationProblems, collect
from planner.levers import all_levers
from planner.tune.study.confirm import DEFAULT_CONFIRM_SEEDS, DEFAULT_CONFIRM_TOP
from planner.tune.storage.backends import DEFAULT_STORAGE, check_storage
from planner.tune.proxy.pool import MAX_AUTO_JOBS
from planner.tune.proxy.target import DEFAULT_BATCH_SIZE, DEFAULT_DTYPE, DEFAULT_SEQ_LEN, DEFAULT_TARGET, resolve_target

DEFAULT_N_TRIALS = 24  # 3 baselines + 21 searched (learning-rate sweeps and confirmation runs come on top)
DEFAULT_STEPS = 150  # proxy optimizer steps per trial
# The built-in proxy's steps on its own task: after 50 its 16-plan ranking predicts another seed's 150-step ranking
# (τ 0.63, 0.67) better than 150 do (0.53), at a third of the CPU (reports/transfer_long.txt, bench_tune_default.txt).
DEMO_STEPS = 50
DEFAULT_EVALS = 3  # intermediate evaluations per trial (what the pruner sees)
# PyTorch intra-op threads for proxy training (0 = PyTorch's default). Proxy models are small, and threads spin-wait
# when cores are shared: on a busy 2-core machine 60 default-workload steps took 7.9 s with 1 thread, 173 s with 2.
DEFAULT_THREADS = 1
MAX_STUDY_NAME = 255  # bytes: the longest file name of common file systems (ext4, xfs, btrfs, tmpfs, APFS)


@dataclass(frozen=True)
class Cli:
    """A field's rule and command-line form, besides what pydantic declares.

    ``check(flag, value, options)``: the one-line problem with a value that is not None (naming the flag,
    the rule and the value), or None when it is fine; the target's fields (``--vram``, ``--model``, its shape,
    ``--device``, ``--profile``) have none: they are checked together as `planner estimate` checks them.
    ``metavar``: the value's name in ``--help`` (choices by default). ``text``: the value as a command line
    gives it (default ``str``).
    """

    check: Callable[[str, Any, Any], str | None] | None = None
    metavar: str | None = None
    text: Callable[[Any], str] | None = None


@dataclass(frozen=True)
class Option:
    """One field on the command line, as its declaration gives it. ``kind``: ``value``, ``list`` (comma-separated),
    ``switch`` (a flag without a value) or ``levers`` (the levers' own flags)."""

    field: str
    flag: str
    help: str
    kind: str
    default: Any
    required: bool
    metavar: str | None
    text: Callable[[Any], str]


def _above_zero(flag, value, options):
    return None if value > 0 else f"{flag} must be > 0, but got {value}"


def _at_least(bound: int):
    def check(flag, value, options):
        return None if value >= bound else f"`{flag} >= {bound}` must hold, but got {value}"

    return check


def _threads(flag, value, options):
    return None if value >= 0 else f"{flag} must be >= 0 (0 = PyTorch's default), but got {value}"


def _seconds(flag, value, options):
    ok = math.isfinite(value) and value > 0  # nan fails `> 0` too
    return None if ok else f"{flag} must be a finite number of seconds > 0, but got {value}"


def _proxy(flag, value, options):
    return (
        None
        if value.strip()
        else f"{flag} must be auto, target, builtin, a preset, a hub id or a local model directory, but got {value!r}"
    )


def _study(flag, value, options):
    if not value.strip():
        return f"{flag} must be a non-empty name, but got {value!r}"
    size = len(os.fsencode(value))
    if size > MAX_STUDY_NAME:
        return (
            f"{flag} must be at most {MAX_STUDY_NAME} bytes (it names the folders studies/<study>/ and "
            f"reports/<study>/), but got {size} bytes: {value[:40]!r}..."
        )
    return None


def _storage(flag, value, options):
    try:
        check_storage(value)
    except PlannerError as exc:
        return str(exc)
    return None


def _eval_every(flag, value, options):
    steps = options.steps
    return None if 1 <= value <= steps else f"{flag} must satisfy 1 <= eval_every <= steps={steps}, but got {value}"


def _scorers(flag, value, options):
    from planner.sampling import SCORERS  # planner.sampling (torch): deferred, 'planner tune --help' loads this module

    unknown = [s for s in value if s not in SCORERS]
    if unknown or not value:
        return f"{flag} must name registered scorers ({', '.join(sorted(SCORERS))}), but got {unknown or value}"
    return None


def _batch_sizes(flag, value, options):
    return None if value and all(b >= 1 for b in value) else f"{flag} must be integers >= 1, but got {value}"


def _data(flag, value, options):
    # planner.data (torch: the package loads workloads): deferred, 'planner tune --help' loads this module
    from planner.data.files import names_a_file
    from planner.data.load import BUILTIN

    # a name that is no file is a datasets name, resolved (and reported) when the workload loads
    if not value.startswith(BUILTIN) and names_a_file(value) and not Path(value).expanduser().exists():
        return f"{flag} file must exist, but {value!r} was not found"
    return None


def _size_text(value) -> str:
    """A budget as the command line gives it: a Python number is bytes."""
    return f"{value}B" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


class TuneOptions(BaseModel):
    """Everything `planner tune` takes; validated where it enters (:meth:`validate_all`)."""

    model_config = ConfigDict(extra="forbid")

    # the study's identity first: a resume command starts with what names the study
    vram: Annotated[str | int, Cli(metavar="SIZE", text=_size_text)] = Field(
        description="memory budget, e.g. 24GB (decimal) or 24GiB/24G (binary); from Python, a number is bytes"
    )
    study: Annotated[str | None, Cli(check=_study, metavar="NAME")] = Field(
        None, description="study name; an existing name resumes that study (default: tune-<date>-<time>)"
    )
    storage: Annotated[str, Cli(check=_storage, metavar="URL")] = Field(
        DEFAULT_STORAGE,
        description="Optuna storage URL (sqlite:///..., postgresql://..., mysql://...) or a journal "
        f"file *.log (default {DEFAULT_STORAGE})",
    )
    # the target in its training shape: the same flags, defaults aside, as `planner estimate`
    model: str | None = Field(
        None, description=f"the target: preset, config.json, local model directory or hub id (default {DEFAULT_TARGET})"
    )
    seq_len: Annotated[int | str | None, Cli(metavar="N")] = Field(
        None, description=f"the target's tokens per sequence (default {DEFAULT_SEQ_LEN})"
    )
    batch_size: Annotated[int | str | None, Cli(metavar="N")] = Field(
        None, description=f"the target's micro-batch size (default {DEFAULT_BATCH_SIZE})"
    )
    dtype: Annotated[str | None, Cli(metavar="{float32,bfloat16,float16}")] = Field(
        None, description=f"the target's weight dtype (default {DEFAULT_DTYPE}; float32 with --amp)"
    )
    amp: Annotated[str | None, Cli(metavar="{bf16,fp16}")] = Field(
        None, description="autocast with float32 weights (HF Trainer's bf16=True)"
    )
    levers: dict = Field(
        default_factory=dict,
        description="the training shape's lever fields, e.g. {'optimizer': 'adamw8bit', "
        "'loss_chunks': 8}: every trial's shape (planner.levers: those with in_shape; each lever declares its flag)",
    )
    device: Literal["cpu", "cuda"] = Field("cuda", description="the device the target's budget is for (default cuda)")
    profile: Annotated[str | None, Cli(metavar="PATH")] = Field(
        None, description="device profile JSON from `planner profile` (default: documented GPU constants)"
    )
    # the proxy and its training
    proxy: Annotated[str, Cli(check=_proxy)] = Field(
        "auto",
        description="what the short trainings run on: target (the target itself), builtin (the built-in "
        "pretrained proxy, as deep as the target up to 32 layers), a preset, hub id or local model directory, or auto "
        "(default: target when a CUDA device is present and the target's smallest plan fits its free memory; else, "
        "with --data, smollm2-135m at a short horizon (6 steps of 2) where its weights are installed; else builtin)",
    )
    proxy_device: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="where the proxy trains (default auto: cuda when present)"
    )
    data: Annotated[str | None, Cli(check=_data, metavar="PATH")] = Field(
        None, description="training data file for the proxy (default: the built-in task)"
    )
    steps: Annotated[int, Cli(check=_above_zero, metavar="N")] = Field(
        DEFAULT_STEPS,
        description=f"proxy training steps per trial (default {DEFAULT_STEPS}; {DEMO_STEPS} for the built-in proxy on "
        "its built-in task; 6 for smollm2-135m at a short horizon, --proxy auto's choice for --data on the CPU)",
    )
    eval_every: Annotated[int | None, Cli(check=_eval_every, metavar="N")] = Field(
        None, description=f"steps between intermediate evaluations (default steps/{DEFAULT_EVALS}, rounded up)"
    )
    seed: Annotated[int, Cli(metavar="N")] = Field(
        0, description="seed of the sampler, the data order and the model init"
    )
    threads: Annotated[int, Cli(check=_threads, metavar="N")] = Field(
        DEFAULT_THREADS,
        description=f"PyTorch threads for proxy training (default {DEFAULT_THREADS}: small models, "
        "shared cores; 0 = PyTorch's default)",
    )
    jobs: Annotated[int | None, Cli(check=_at_least(1), metavar="N")] = Field(
        None,
        description=f"proxy runs at once, a process each (default: usable cores / --threads, at most {MAX_AUTO_JOBS} "
        "and what free memory holds; 1 on a CUDA proxy); with 1 the search repeats run to run, with more its order "
        "follows which run ends first",
    )
    # the search
    n_trials: Annotated[int, Cli(check=_above_zero, metavar="N")] = Field(
        DEFAULT_N_TRIALS,
        description=f"the study's total trials, baselines included (default {DEFAULT_N_TRIALS}); "
        "a resume runs the rest",
    )
    timeout: Annotated[float | None, Cli(check=_seconds, metavar="SECONDS")] = Field(
        None, description="stop starting new trials after this many seconds (of this process)"
    )
    scorers: Annotated[list[str] | None, Cli(check=_scorers, metavar="NAME,...")] = Field(
        None, description="comma-separated scorers to search (default: every registered one)"
    )
    multi_objective: bool = Field(False, description="search metric vs predicted peak; keep the Pareto front")
    lora: bool = Field(False, description="also search LoRA adapters inside the active layers (rank 0/8/16/32)")
    batch_sizes: Annotated[list[int] | None, Cli(check=_batch_sizes, metavar="N,...")] = Field(
        None,
        description="comma-separated target micro-batch sizes to search (default: --batch-size); a proxy other "
        "than the target then trains with the same batch",
    )
    sampler: Literal["tpe", "random"] = Field("tpe", description="Optuna sampler (default tpe)")
    pruner: Literal["median", "hyperband", "none"] = Field(
        "median", description="early stopping of losing trials (default median)"
    )
    baselines: bool = Field(
        True,
        description="run the baselines (LISA, full, LoRA, QLoRA) as the study's first trials; "
        "--no-baselines leaves them out",
    )
    confirm_seeds: Annotated[int, Cli(check=_at_least(0), metavar="N")] = Field(
        DEFAULT_CONFIRM_SEEDS,
        description="before the plan is written, re-train the best searched plans and every "
        "baseline that fits with this many seeds and pick the best mean "
        f"(default {DEFAULT_CONFIRM_SEEDS}; 0: no confirmation)",
    )
    confirm_top: Annotated[int, Cli(check=_at_least(1), metavar="N")] = Field(
        DEFAULT_CONFIRM_TOP,
        description=f"how many of the best searched plans are confirmed (default {DEFAULT_CONFIRM_TOP})",
    )
    # outputs
    out: Annotated[str | None, Cli(metavar="PATH")] = Field(
        None, description="plan YAML path (default studies/<study>/plan.yaml)"
    )
    quiet: bool = Field(False, description="no progress bar")

    @field_validator("scorers", "batch_sizes", mode="before")
    @classmethod
    def _split(cls, value):
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @classmethod
    def from_flags(cls, values: dict, problems: list[str] | None = None) -> "TuneOptions":
        """Options from the command line's values (text, keyed by field); ``problems``: those found before.
        Raises every problem at once, each naming its flag: values of the wrong type, and then what
        :meth:`validate_all` finds in the rest."""
        problems = list(problems or [])
        try:
            options = cls(**values)
        except ValidationError as exc:
            wrong: dict[str, str] = {}  # field -> its one problem (a list field's first item of the wrong type)
            for err in exc.errors():
                name, what = str(err["loc"][0]), err["msg"].split(",")[0].removeprefix("Input should be ")
                rule = f"must be comma-separated, each {what}" if isinstance(err["loc"][-1], int) else f"must be {what}"
                wrong.setdefault(name, f"{flag_of(name)} {rule}, but got {values.get(name)!r}")
            problems += wrong.values()
            options = cls(**{k: v for k, v in values.items() if k not in wrong})
        if problems:
            try:  # the fields of the wrong type are left at their defaults
                options.validate_all()
            except ValidationProblems as exc:
                problems += exc.problems
            collect(problems)
        return options

    def training_shape(self) -> dict:
        """The target's training shape as these options give it (the keywords of resolve_target and workload_target)."""
        return {k: getattr(self, k) for k in ("seq_len", "batch_size", "dtype", "amp", "levers", "device", "profile")}

    def validate_all(self):
        """Check every flag at once; return (target, budget in bytes)."""
        target, vram, problems = resolve_target(self.model, **self.training_shape(), vram=self.vram)
        for name, info in type(self).model_fields.items():
            cli = _cli(info)
            value = getattr(self, name)
            if cli.check is not None and value is not None and (problem := cli.check(flag_of(name), value, self)):
                problems.append(problem)
        collect(problems)
        return target, vram


def _cli(info) -> Cli:
    return next((m for m in info.metadata if isinstance(m, Cli)), Cli())


def flag_of(name: str) -> str:
    """The flag that sets field ``name`` (a switch on by default: its ``--no-`` form)."""
    info = TuneOptions.model_fields[name]
    return ("--no-" if info.default is True else "--") + name.replace("_", "-")


def _kind(name: str, info) -> str:
    if name == "levers":
        return "levers"
    if info.annotation is bool:
        return "switch"
    return "list" if any(get_origin(a) is list for a in (info.annotation, *get_args(info.annotation))) else "value"


def _choices(annotation) -> str | None:
    literal = next((a for a in (annotation, *get_args(annotation)) if get_origin(a) is Literal), None)
    return "{" + ",".join(get_args(literal)) + "}" if literal is not None else None


def cli_options() -> list[Option]:
    """Every field as a command-line option, in declaration order."""
    out = []
    for name, info in TuneOptions.model_fields.items():
        cli, kind = _cli(info), _kind(name, info)
        if not info.description:
            raise TypeError(f"TuneOptions.{name} needs a description: it is the option's --help text")
        text = cli.text or ((lambda v: ",".join(map(str, v))) if kind == "list" else str)
        out.append(
            Option(
                name,
                flag_of(name),
                info.description,
                kind,
                info.get_default(call_default_factory=True),
                info.is_required(),
                cli.metavar or _choices(info.annotation),
                text,
            )
        )
    return out


def _lever_args(levers: dict) -> list[str]:
    out = []
    for lever in all_levers():
        flag = lever.flag
        if flag is None or flag.field not in levers:
            continue
        value = levers[flag.field]
        if flag.kind == "bool":  # --x or --no-x: an explicit no keeps the search from pulling the lever
            out.append(flag.name if value else "--no-" + flag.name.removeprefix("--"))
        else:
            out += [flag.name, ",".join(map(str, value)) if flag.kind == "list" else str(value)]
    return out


def command_line(options: TuneOptions) -> list[str]:
    """The `planner tune` arguments that give ``options`` back: the required ones and every one off its default."""
    out = []
    for opt in cli_options():
        value = getattr(options, opt.field)
        if opt.kind == "levers":
            out += _lever_args(value)
        elif not opt.required and value == opt.default:
            continue
        elif opt.kind == "switch":
            out.append(opt.flag)
        else:
            out += [opt.flag, opt.text(value)]
    return out
