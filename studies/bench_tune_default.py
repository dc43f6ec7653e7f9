"""The README's first command, measured: `planner tune --vram 24GB` as a user runs it.

Runs the command unchanged, in an empty temporary directory (its default storage
``sqlite:///studies/planner.db`` is relative to it, so every run starts from nothing but the
cached default proxy and cost traces), then reads the study it wrote:
wall time, trials trained / gated / pruned / failed, the baselines, and the chosen plan's
predicted peak against the 24 GB budget. Appends one record to
reports/bench_tune_default.txt and keeps the command's full output beside it.

    nice -n 10 python studies/bench_tune_default.py        # once per run to record
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "reports" / "bench_tune_default.txt"
OUTPUT = ROOT / "reports" / "tune_default_output.txt"
BUDGET = 24 * 10**9


def main() -> int:
    import optuna
    import torch
    import transformers

    from planner.plan import Plan
    from planner.tune.study import record
    from planner.tune.study.kinds import SEARCH
    from planner.tune.storage.backends import open_storage

    with tempfile.TemporaryDirectory() as tmp:
        storage = f"sqlite:///{tmp}/studies/planner.db"
        cmd = [sys.executable, "-m", "planner.cli.main", "tune", "--vram", "24GB"]
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        run = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, env={**os.environ, "COLUMNS": "120"})
        wall = time.perf_counter() - start
        if run.returncode != 0:
            print(run.stdout, run.stderr, sep="\n")
            return run.returncode
        (name,) = optuna.get_all_study_names(open_storage(storage))
        trials = optuna.load_study(study_name=name, storage=open_storage(storage)).trials
        plan = Plan.load(f"{tmp}/studies/{name}/plan.yaml")
    records = [(t, record.read(t)) for t in trials]
    gated = sum(bool(a.gated) for _, a in records)
    trained = sum(a.metric is not None and a.reused_from is None for _, a in records)
    reused = sum(a.reused_from is not None for _, a in records)
    pruned = sum(t.state.name == "PRUNED" for t in trials) - gated
    failed = sum(t.state.name == "FAIL" for t in trials)
    train_s = sum(a.train_seconds or 0.0 for _, a in records if a.reused_from is None)
    lines = [
        f"run at {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}: `planner tune --vram 24GB` "
        f"({os.cpu_count()} cores, load {load_before:.1f} at the start, torch {torch.__version__}, "
        f"transformers {transformers.__version__})",
        f"  wall {wall:.1f} s (proxy training {train_s:.1f} s of it); {len(trials)} trials: {trained} trained, "
        f"{reused} reused a proxy run, {gated} gated (predicted over 24 GB, never trained), {pruned} pruned early, "
        f"{failed} failed",
    ]
    for t, a in records:
        if a.kind != SEARCH:
            what = f"{a.metric:.4f}" if a.metric is not None else "does not fit" if a.gated else t.state.name
            lines.append(f"  {a.kind}: predicted {a.predicted_peak_bytes / 2**30:.2f} GiB -> {what}")
    lines.append(
        f"  plan: {plan.model} ({plan.num_layers} layers), γ={plan.active_layers} from layer {plan.min_depth}, "
        f"checkpointing {'on' if plan.train.gradient_checkpointing else 'off'}, {plan.scorer}, K={plan.period}, "
        f"{plan.metric_name} {plan.metric:.4f}; predicted peak {plan.predicted_peak_bytes:,} B "
        f"({plan.predicted_peak_bytes / 2**30:.2f} GiB) <= budget {BUDGET:,} B: "
        f"{plan.predicted_peak_bytes <= BUDGET}"
    )
    text = "\n".join(lines) + "\n"
    print(text, end="")
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    with REPORT.open("a") as f:
        f.write(text)
    OUTPUT.write_text(f"$ planner tune --vram 24GB\n{run.stdout}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
