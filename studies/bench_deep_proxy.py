"""Can a proxy as deep as the target rank the few active layers a 24-48 GB budget allows?

The built-in proxy has 8 layers, so the γ ≤ 6 of Llama-3-8B's 32 that fit 24-48 GB map to γ ≤ 2 of
8 (planner.tune.proxy.mapping) and the search cannot tell them apart (reports/bench_workloads.txt). Here a
proxy with the target's depth and a quarter of the width (32 layers, hidden 64: 1.19M parameters,
the built-in proxy's size and pretraining recipe otherwise) is pretrained once and trained at the
γ that fit, LISA's other defaults (K=20, uniform, embeddings and head), the spread benchmark's
fixed lr 3e-4, 150 steps of batch 32, 3 seeds: mean eval loss per γ against the seed noise.

    PLANNER_CACHE_DIR=/tmp/deep nice -n 10 python studies/bench_deep_proxy.py | tee reports/deep_proxy_gamma.txt
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_workload_spread import LISA, SPREAD_LR, proxy_run  # noqa: E402

from planner.data.default import default_workload  # noqa: E402
from planner.data.pretrain import PretrainRecipe  # noqa: E402

ACTIVE_LAYER_COUNTS, SEEDS, STEPS, BATCH = (1, 2, 3, 4, 6), 3, 150, 32


def main() -> None:
    torch.set_num_threads(1)
    recipe = PretrainRecipe(layers=32, hidden=64, heads=4, kv_heads=2, intermediate=128)
    t0 = time.time()
    wl = default_workload(recipe=recipe)
    print(
        f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}; proxy {recipe}; "
        f"pretrained or loaded in {time.time() - t0:.0f} s; {wl}",
        flush=True,
    )
    rows = {}
    for g in ACTIVE_LAYER_COUNTS:
        vals = []
        for seed in range(SEEDS):
            metric, accuracy, cpu = proxy_run(wl, {**LISA, "active_layers": g}, SPREAD_LR, seed, STEPS, BATCH)
            vals.append(metric)
            print(
                f"γ={g} of 32  seed {seed}  eval_loss {metric:.4f}  accuracy {accuracy:.3f}  {cpu:.1f} CPU-s",
                flush=True,
            )
        rows[g] = vals
    means = {g: statistics.mean(v) for g, v in rows.items()}
    noise = statistics.mean(statistics.stdev(v) for v in rows.values())
    spread = statistics.stdev(means.values())
    print(
        "mean eval loss per γ: "
        + ", ".join(f"γ={g} {m:.4f} ± {statistics.stdev(rows[g]):.4f}" for g, m in means.items())
    )
    print(
        f"spread across γ (std of means) {spread:.4f}, seed noise (mean within-γ std) {noise:.4f}, ratio {spread / noise:.2f}"
    )


if __name__ == "__main__":
    main()
