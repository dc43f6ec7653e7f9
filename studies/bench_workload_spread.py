"""Is the default workload meaningful? Spread of proxy accuracy across configurations vs seeds.

Proxy fine-tunings of the embedded default workload (the pretrained default model on the
built-in ``maximum`` task) with the layer-wise sampler, for a handful of configurations
(γ, K, learning rate, embeddings+head) × seeds, plus the same configuration on a randomly
initialised model (does the pretraining matter?). Prints per-configuration mean ± std and
compares the spread across configurations (std and range of the configuration means) with
the spread across seeds (mean within-configuration std).

    python studies/bench_workload_spread.py | tee reports/workload_spread.txt
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch

from planner.data import load_workload
from planner.data.pretrain import DEFAULT_RECIPE, ensure_default_model
from planner.sampling import LayerSampler, train_layerwise

# (label, gamma, period, lr, train embeddings+head, pretrained)
CONFIGS = [
    ("γ=1 K=20 lr=1e-3 E+H", 1, 20, 1e-3, True, True),
    ("γ=2 K=20 lr=1e-3 E+H", 2, 20, 1e-3, True, True),
    ("γ=4 K=20 lr=1e-3 E+H", 4, 20, 1e-3, True, True),
    ("γ=2 K=5  lr=1e-3 E+H", 2, 5, 1e-3, True, True),
    ("γ=2 K=20 lr=3e-3 E+H", 2, 20, 3e-3, True, True),
    ("γ=2 K=20 lr=1e-3 no E+H", 2, 20, 1e-3, False, True),
    ("γ=4 K=20 lr=3e-3 E+H", 4, 20, 3e-3, True, True),
    ("γ=4 K=20 lr=1e-3 E+H, random init", 4, 20, 1e-3, True, False),
]


def proxy_run(wl, gamma, period, lr, eh, pretrained, seed, steps, batch_size):
    model = wl.new_model(seed)
    if not pretrained:
        torch.manual_seed(seed)
        model.apply(model._init_weights)
    sampler = LayerSampler(model, gamma=gamma, period=period, scorer="uniform", scorer_options={},
                           train_embeddings=eh, train_head=eh, min_depth=0, seed=seed)
    opt = sampler.make_optimizer(torch.optim.AdamW, lr=lr)
    t0 = time.perf_counter()
    result = train_layerwise(model, wl.train_batches(batch_size, seed), sampler=sampler, optimizer=opt, steps=steps,
                             eval_fn=wl.evaluate, eval_every=steps)
    return result.evals[-1][1], time.perf_counter() - t0


def summarize(rows, title: str) -> None:
    """Spread across configurations (std and range of their means) vs across seeds (mean within std)."""
    means = [r["mean"] for r in rows]
    within = statistics.mean(r["std"] for r in rows)
    across = statistics.stdev(means)
    print(f"{title} ({len(rows)} configurations):")
    print(f"  spread across configurations: std of means = {across:.3f}, max - min = {max(means) - min(means):.3f}")
    print(f"  spread across seeds:          mean within-configuration std = {within:.3f}")
    print(f"  ratio (std of means / mean within std) = {across / within if within else float('inf'):.1f}")


def run_grid(wl, steps: int, seeds: int, batch_size: int) -> None:
    print(f"proxy run: {steps} steps, batch {batch_size}, scorer uniform, accuracy = exact match of the greedy answer "
          f"on {len(wl.held_out)} held-out prompts; seeds 0..{seeds - 1} (batch order, layer draws)")
    print(f"{'configuration':38s} {'mean':>6s} {'std':>6s}  per-seed accuracies        s/run")
    rows = []
    for label, gamma, period, lr, eh, pretrained in CONFIGS:
        accs, secs = [], []
        for seed in range(seeds):
            acc, s = proxy_run(wl, gamma, period, lr, eh, pretrained, seed, steps, batch_size)
            accs.append(acc)
            secs.append(s)
        mean, std = statistics.mean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0
        rows.append({"label": label, "lr": lr, "pretrained": pretrained, "mean": mean, "std": std})
        print(f"{label:38s} {mean:6.3f} {std:6.3f}  {' '.join(f'{a:.3f}' for a in accs):26s} {statistics.mean(secs):5.1f}", flush=True)
    pre = [r for r in rows if r["pretrained"]]
    summarize(pre, "all pretrained configurations")
    summarize([r for r in pre if r["lr"] == 1e-3], "pretrained, lr=1e-3 only (γ, K, E+H differ)")
    best = max(pre, key=lambda r: r["mean"])
    for r in rows:
        if not r["pretrained"]:
            print(f"pretraining matters: {r['label']} = {r['mean']:.3f} vs best pretrained ({best['label']}) = {best['mean']:.3f}")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", default="100,60", help="proxy lengths to run, comma-separated")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--time-pretraining", action="store_true", help="also pretrain once in a fresh cache and time it")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# bench_workload_spread: torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    if args.time_pretraining:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["PLANNER_CACHE_DIR"] = tmp
            t0 = time.perf_counter()
            path = ensure_default_model(DEFAULT_RECIPE, progress=False)
            secs = time.perf_counter() - t0
            stats = json.loads((path / "planner_pretrain.json").read_text())
            del os.environ["PLANNER_CACHE_DIR"]
        print(f"first-use pretraining of the default model ({DEFAULT_RECIPE.steps} steps of "
              f"{DEFAULT_RECIPE.batch_size}x{DEFAULT_RECIPE.seq_len}, on {stats['threads']} thread(s)), fresh cache: "
              f"{secs:.1f} s, loss {stats['first_loss']:.2f} -> {stats['final_loss']:.2f} (load average now {os.getloadavg()[0]:.1f})")
    t0 = time.perf_counter()
    wl = load_workload(seed=0)
    print(f"workload: {wl!r}; loaded in {time.perf_counter() - t0:.1f} s")
    print()
    for steps in (int(x) for x in args.steps.split(",") if int(x) > 0):  # --steps 0: time the pretraining only
        run_grid(wl, steps, args.seeds, args.batch_size)
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
