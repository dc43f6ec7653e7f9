"""`planner profile`: measure a device's per-layer bytes and overheads; write a device profile JSON."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from planner.config import TrainConfig
from planner.errors import PlannerError, collect
from planner.writable import replace_atomic, unwritable_reason


def add_parser(sub) -> None:
    p = sub.add_parser(
        "profile",
        help="measure per-layer memory and device overheads on this machine; write a device profile",
        description="Run real training steps of a reduced-depth model on the local device and record per-layer "
        "activation, gradient and optimizer bytes (trainable, frozen above and frozen below the lowest "
        "trainable layer) and the device constants (CUDA context, cuBLAS workspaces, fragmentation). "
        "`planner estimate --device cuda` then uses the profile whose device name matches the local GPU.",
    )
    p.add_argument("--model", default="gpt2", help="preset, hub id, model directory or config.json (default gpt2)")
    p.add_argument("--device", default="cuda", metavar="{cuda,cpu}", help="default cuda")
    p.add_argument("--batch-size", metavar="N", help="default 1")
    p.add_argument("--seq-len", metavar="N", help="default 512")
    p.add_argument("--dtype", metavar="{float32,bfloat16,float16}", help="default float32")
    p.add_argument(
        "--out",
        metavar="PATH",
        help="output JSON (default: $PLANNER_PROFILE_DIR or ~/.cache/planner/profiles, named after the device)",
    )
    p.add_argument("--json", action="store_true", help="print the profile as JSON instead of a table")
    p.set_defaults(func=run)


def validate(args):
    """(spec, cfg) with every problem of the flags reported at once."""
    # planner.spec (torch): deferred, 'planner --help' and 'planner profile --help' must not import torch
    from planner.spec import load_spec
    from planner.spec.model import seq_len_problem

    problems, spec, cfg = [], None, None
    try:
        spec = load_spec(args.model)
    except PlannerError as exc:
        problems.append(str(exc))
    fields = {k: getattr(args, k) for k in ("batch_size", "seq_len", "dtype") if getattr(args, k) is not None}
    try:
        cfg = TrainConfig(**fields)
    except ValidationError as exc:
        for err in exc.errors():
            msg = err["msg"]
            problems.append(
                f"--{str(err['loc'][0]).replace('_', '-')} {msg[0].lower() + msg[1:]}, but got {err.get('input')!r}"
            )
    if args.device not in ("cuda", "cpu"):
        problems.append(f"--device must be cuda or cpu, but got {args.device!r}")
    if spec is not None and spec.num_layers < 1:
        problems.append(f"--model must have decoder layers, but {spec.name!r} has {spec.num_layers}")
    if spec is not None and cfg is not None and (problem := seq_len_problem(spec, cfg.seq_len)):
        problems.append(problem)
    if args.out is not None:
        problem = unwritable_reason(args.out)
        if problem:
            problems.append(f"--out must be a file path this user can write, but {args.out!r} {problem}")
    collect(problems)
    return spec, cfg


def _progress():
    """A progress bar on a terminal (stderr); otherwise one line per measured step on stderr."""

    @contextlib.contextmanager
    def lines():
        def on_step(done, total, text):
            print(f"profile [{done}/{total}] {text}", file=sys.stderr, flush=True)

        yield on_step

    @contextlib.contextmanager
    def bar():
        # rich: deferred to output, ~0.1 s that 'planner --help' need not pay
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("profile"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            transient=True,
            console=Console(stderr=True),
        ) as progress:
            task = progress.add_task("building and running the first model", total=None)

            def on_step(done, total, text):
                progress.update(task, completed=done, total=total, description=text)

            yield on_step

    return bar() if sys.stderr.isatty() else lines()


def run(args) -> int:
    # rich: deferred to output, ~0.1 s that 'planner --help' need not pay
    from rich.console import Console
    from rich.table import Table

    # planner.cost (torch): deferred, 'planner profile --help' must not import it
    from planner.cost.profile import local_device_name, profile_dir, profile_filename
    from planner.cost.profiling import measure_profile

    spec, cfg = validate(args)
    if not args.out:
        name = local_device_name(args.device)
        default = profile_dir() / profile_filename(name or "device")
        problem = unwritable_reason(default)
        if problem:
            raise PlannerError(
                f"the profile directory must be writable (set $PLANNER_PROFILE_DIR or --out), "
                f"but {str(default)!r} {problem}"
            )
    with _progress() as on_step:
        prof = measure_profile(
            spec, device=args.device, dtype=cfg.dtype, batch_size=cfg.batch_size, seq_len=cfg.seq_len, on_step=on_step
        )
    path = Path(args.out).expanduser() if args.out else profile_dir() / profile_filename(prof.device_name)
    try:
        replace_atomic(path, prof.save)  # whole or not at all (a full disk)
    except OSError as exc:
        raise PlannerError(
            f"--out must be a file path this user can write, but {str(path)!r} cannot be written "
            f"({exc.strerror or type(exc).__name__})"
        ) from None
    if args.json:
        print(json.dumps({"path": str(path), **prof.model_dump(mode="json")}))
        return 0
    console = Console(width=None if sys.stdout.isatty() else 160, highlight=False)
    console.print(f"device: {prof.device_name} ({prof.device}), torch {prof.torch_version}")
    console.print(
        f"measured: {spec.name} at depths {prof.measured_depths}, batch {cfg.batch_size} × seq {cfg.seq_len}, {cfg.dtype}"
    )
    table = Table(title="per decoder layer (bytes)")
    for col in ("role", "activation", "gradient", "optimizer", "weights"):
        table.add_column(col, justify="left" if col == "role" else "right")
    for m in prof.layers:
        table.add_row(
            m.role, f"{m.activation_bytes:,}", f"{m.gradient_bytes:,}", f"{m.optimizer_bytes:,}", f"{m.weight_bytes:,}"
        )
    console.print(table)
    console.print(
        f"context: {prof.context_bytes:,} B   workspace: {prof.workspace_bytes:,} B   "
        f"fragmentation: {prof.fragmentation:.4f}"
    )
    check = Table(title="cost model check: peak allocated bytes of each measured step")
    for col in ("role", "layers", "measured", "predicted", "error"):
        check.add_column(col, justify="left" if col == "role" else "right")
    for c in prof.checks or []:
        check.add_row(
            c["role"],
            str(c["layers"]),
            f"{c['measured_bytes']:,}",
            f"{c['predicted_bytes']:,}",
            f"{100 * c['error']:+.2f}%",
        )
    console.print(check)
    console.print(f"wrote {path}")
    return 0
