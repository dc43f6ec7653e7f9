"""Time the candidate-plan table (`planner estimate --model M --vram SIZE`) for large presets.

Prints, per model: the number of plans, the time with empty trace caches (cold: traces are
run), the time of a second call in the same process (warm: traces cached), and the wall time
of the `planner estimate` command in a fresh process with the disk cache filled (what a user
waits for the second time; imports included, timed separately). Target: the table for a 70B
model computed in under 5 s.

    python studies/bench_estimate_table.py | tee reports/bench_estimate_table.txt
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


def main() -> None:
    cache = tempfile.mkdtemp(prefix="planner-cost-cache-")
    os.environ["PLANNER_COST_CACHE"] = cache  # cold start: no traces on disk yet
    import torch

    torch.set_num_threads(1)
    from planner.config import TrainConfig
    from planner.cost.device import default_profile
    from planner.cost.plans import candidate_plans, largest_fitting_gamma, smallest_fitting
    from planner.spec import load_spec
    from planner.units import parse_bytes

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"dtype {DTYPE}, seq {SEQ_LEN}, batch 1, device cuda (default profile), budget {VRAM}")
    planner = str(Path(sys.executable).with_name("planner"))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, transformers, peft, planner.cost"], check=True)
    print(f"fresh-process import of torch, transformers, peft and planner.cost: {time.perf_counter() - t0:.2f} s "
          "(part of every `cli s`)")
    print(f"{'model':<14} {'plans':>5} {'cold s':>8} {'warm s':>8} {'cli s':>8}  largest γ fitting (E+H / frozen); smallest plan")
    for name in MODELS:
        spec = load_spec(name)
        cfg = TrainConfig(dtype=DTYPE, seq_len=SEQ_LEN)
        t0 = time.perf_counter()
        cands = candidate_plans(spec, cfg, "cuda", default_profile("cuda"))
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        candidate_plans(spec, cfg, "cuda", default_profile("cuda"))
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        proc = subprocess.run([planner, "estimate", "--model", name, "--dtype", DTYPE, "--seq-len", str(SEQ_LEN),
                               "--vram", VRAM, "--json"], capture_output=True, text=True,
                              env={**os.environ, "PLANNER_PROFILE_DIR": cache})
        cli = time.perf_counter() - t0
        if proc.returncode not in (0, 1):
            raise SystemExit(f"planner estimate failed for {name}: {proc.stderr.strip().splitlines()[-1]}")
        vram = parse_bytes(VRAM)
        best = [largest_fitting_gamma(cands, vram, train_embeddings=e, train_head=e) for e in (True, False)]
        gammas = " / ".join(str(b.gamma) if b else "none" for b in best)
        low = smallest_fitting(cands)
        print(f"{name:<14} {len(cands):>5} {cold:>8.2f} {warm:>8.2f} {cli:>8.2f}  {gammas}; "
              f"{low.name} at {low.peak_bytes / 2**30:.1f} GiB", flush=True)


if __name__ == "__main__":
    main()
