"""Time the candidate-plan table (`planner estimate --model M --vram SIZE`) for large presets.

Prints, per model: the number of plans, the time with empty caches (cold: traces and allocator
replays are run; wall and CPU seconds), the time of a second call in the same process (warm:
both cached), and the wall time of the `planner estimate` command in a fresh process with the
disk cache filled (what a user waits for the second time; imports included, timed separately).
A second table splits the cold CPU seconds by phase: traces (building, tracing and cutting the
reduced-depth models, `get_family`), composing each plan's allocation sequence (`step_ops`),
replaying it through the caching allocator model (`replay_run`), the forked workers that compose and
replay a table's rows in parallel (`workers`: their CPU; cold CPU includes it), and the rest
(worst-case search, optimizer peaks, first imports). Target: the table for a 70B model in under 5 s.

    nice -n 10 python studies/bench_estimate_table.py --before REV | tee reports/bench_estimate_table.txt

``--before REV``: then the same tables (without the command timing) for the planner of git revision
REV, in a fresh process right after, so both figures share the machine's load. ``--no-cli``: skip
timing the command.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = ("llama-3-70b", "llama-2-70b", "llama-2-7b")
DTYPE, SEQ_LEN, VRAM = "bfloat16", 2048, "80GB"


PHASES = {
    "traces": ("planner.cost.estimator", "get_family"),
    "step ops": ("planner.cost.replay", "step_ops"),
    "replay": ("planner.cost.replay", "replay_run"),
}


def _time_phases() -> dict[str, float]:
    """CPU seconds spent in each phase's function from now on (the functions are wrapped where they are called)."""
    import importlib

    spent = dict.fromkeys(PHASES, 0.0)
    for phase, (module, name) in PHASES.items():
        try:
            mod = importlib.import_module(module)
            fn = getattr(mod, name)
        except (ImportError, AttributeError):  # an older planner without this phase
            spent[phase] = float("nan")
            continue

        def timed(*args, _fn=fn, _phase=phase, **kwargs):
            t0 = time.process_time()
            try:
                return _fn(*args, **kwargs)
            finally:
                spent[_phase] += time.process_time() - t0

        setattr(mod, name, timed)
    return spent


def _workers_cpu() -> float:
    """CPU seconds of finished child processes (the table's forked replay workers)."""
    import resource

    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def main(argv: list[str]) -> None:
    cache = tempfile.mkdtemp(prefix="planner-cost-cache-")
    os.environ["PLANNER_COST_CACHE"] = cache  # cold start: no traces on disk yet
    import torch

    torch.set_num_threads(1)
    from planner.config import TrainConfig
    from planner.cost.device import default_profile
    from planner.cost.plans import candidate_plans, largest_fitting_active_layers, smallest_fitting
    from planner.spec import load_spec
    from planner.units import parse_bytes

    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
        f"dtype {DTYPE}, seq {SEQ_LEN}, batch 1, device cuda (default profile), budget {VRAM}"
    )
    planner = str(Path(sys.executable).with_name("planner"))
    cli_timed = "--no-cli" not in argv
    if cli_timed:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch, transformers, peft, planner.cost"], check=True)
        print(
            f"fresh-process import of torch, transformers, peft and planner.cost: {time.perf_counter() - t0:.2f} s "
            "(part of every `cli s`)"
        )
    spent = _time_phases()
    phases = []
    print(
        f"{'model':<14} {'plans':>5} {'cold wall / CPU s':>18} {'warm wall / CPU s':>18} {'cli s':>8}  "
        "largest γ fitting (E+H / frozen); smallest plan"
    )
    for name in MODELS:
        spec = load_spec(name)
        cfg = TrainConfig(dtype=DTYPE, seq_len=SEQ_LEN)
        before = dict(spent)
        t0, c0, w0 = time.perf_counter(), time.process_time(), _workers_cpu()
        cands = candidate_plans(spec, cfg, "cuda", default_profile("cuda"))
        cold, workers = time.perf_counter() - t0, _workers_cpu() - w0
        cold_cpu = time.process_time() - c0 + workers
        phases.append((name, cold_cpu, {**{k: spent[k] - before[k] for k in spent}, "workers": workers}))
        t0, c0 = time.perf_counter(), time.process_time()
        candidate_plans(spec, cfg, "cuda", default_profile("cuda"))
        warm, warm_cpu = time.perf_counter() - t0, time.process_time() - c0
        cli = float("nan")
        if cli_timed:
            t0 = time.perf_counter()
            proc = subprocess.run(
                [
                    planner,
                    "estimate",
                    "--model",
                    name,
                    "--dtype",
                    DTYPE,
                    "--seq-len",
                    str(SEQ_LEN),
                    "--vram",
                    VRAM,
                    "--json",
                ],
                capture_output=True,
                text=True,
                env={**os.environ, "PLANNER_PROFILE_DIR": cache},
            )
            cli = time.perf_counter() - t0
            if proc.returncode not in (0, 1):
                raise SystemExit(f"planner estimate failed for {name}: {proc.stderr.strip().splitlines()[-1]}")
        vram = parse_bytes(VRAM)
        best = [largest_fitting_active_layers(cands, vram, train_embeddings=e, train_head=e) for e in (True, False)]
        active_layer_counts = " / ".join(str(b.active_layers) if b else "none" for b in best)
        low = smallest_fitting(cands)
        print(
            f"{name:<14} {len(cands):>5} {cold:>8.2f} / {cold_cpu:>6.2f} {warm:>9.2f} / {warm_cpu:>5.2f} {cli:>8.2f}  "
            f"{active_layer_counts}; {low.name} at {low.peak_bytes / 2**30:.1f} GiB",
            flush=True,
        )
    print(f"cold CPU seconds by phase (load average now {os.getloadavg()[0]:.1f})")
    print(f"{'model':<14} {'cold CPU':>8} " + " ".join(f"{k:>9}" for k in PHASES) + f" {'workers':>9} {'rest':>9}")
    for name, total, by in phases:
        print(
            f"{name:<14} {total:>8.2f} "
            + " ".join(f"{by[k]:>9.2f}" for k in PHASES)
            + f" {by['workers']:>9.2f}"
            + f" {total - sum(v for v in by.values() if v == v):>9.2f}"
        )
    if "--before" in argv:
        _before(argv[argv.index("--before") + 1])


def _before(rev: str) -> None:
    """This script, without the command timing, on the planner package of git revision ``rev``."""
    root = Path(__file__).resolve().parents[1]
    old = Path(tempfile.mkdtemp(prefix="planner-before-"))
    subprocess.run(f"git -C {root} archive {rev} planner | tar -x -C {old}", shell=True, check=True)
    print(f"\nbefore: the same script on the planner of {rev}", flush=True)
    env = {**os.environ, "PYTHONPATH": str(old)}
    subprocess.run([sys.executable, __file__, "--no-cli"], env=env, cwd=old, check=True)


if __name__ == "__main__":
    main(sys.argv[1:])
