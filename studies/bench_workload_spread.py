"""Does the default workload tell layer-wise plans apart? Spread across plans vs across seeds.

Proxy fine-tunings of the embedded default workload (the pretrained default model on a
built-in task) with the layer-wise sampler at one fixed learning rate, for plans that differ
from LISA's defaults (γ=2, K=20, uniform, min_depth 0, embeddings+head trained) in one choice
at a time: γ, K, scorer, ``min_depth``, embeddings+head; plus LISA's defaults on a randomly
initialised model (does the pretraining matter?). Each plan runs with seeds 0..n-1; a seed
fixes the data order and the layer draws, and every plan of a seed shares them (common random
numbers, as the trials of one study do).

Printed per plan: the mean ± std over seeds of the held-out metric that `planner tune`
optimizes on the workload (the default: eval loss) and of the exact-match accuracy (the
workload's secondary figure, for comparison). The verdict compares the spread across plans
(std of the plan means) with the seed noise (mean within-plan std over seeds), as ``ratio``.
The fixed learning rate defaults to ``SPREAD_LR``; ``--lr`` measures at another.

    nice -n 10 python studies/bench_workload_spread.py | tee reports/workload_spread.txt
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time

import torch

from planner.data.default import DEFAULT_TASK, N_HELD_OUT, default_workload
from planner.data.pretrain import DEFAULT_RECIPE, ensure_default_model
from planner.tune.proxy.train import DEFAULT_SCHEDULE, SCHEDULES, run_proxy
from planner.tune.search.space import TrialParams

# 3e-4: on the 8-layer proxy the plans' eval losses spread by 3.4x the seed noise, 2.98x at DEFAULT_LR (1e-3),
# where each plan scores lower but the scorers' seeds disagree more; on the 32-layer proxy 4.8x at 3e-4
# (reports/workload_spread.txt; 1e-3 not measured there)
SPREAD_LR = 3e-4
LISA = dict(active_layers=2, period=20, scorer="uniform", min_depth=0, eh=True)


def plans(num_layers: int) -> list[tuple[str, dict]]:
    """LISA's defaults and one-choice variations of them (label, sampler settings)."""
    half = num_layers // 2
    out = [("LISA defaults: γ=2 K=20 uniform", {})]
    # γ up to 8: what Llama-3-8B fits at 32 GB (G of planner.tune.search.bounded), not γ = L that no such budget allows
    out += [(f"γ={g}", {"active_layers": g}) for g in (1, 4, 8) if g <= num_layers]
    out += [(f"K={k}", {"period": k}) for k in (5, 40)]
    out += [(f"scorer={s}", {"scorer": s}) for s in ("cyclic", "gradnorm", "outlier", "fixed")]
    out += [(f"min_depth={half}", {"min_depth": half}), ("no embeddings/head", {"eh": False})]
    return [(label, {**LISA, **change}) for label, change in out]


class RandomInit:
    """``wl`` with its model's weights re-initialized (does the pretraining matter?)."""

    def __init__(self, wl):
        self._wl = wl

    def __getattr__(self, name):
        return getattr(self._wl, name)

    def new_model(self, seed: int = 0):
        model = self._wl.new_model(seed)
        torch.manual_seed(seed)
        model.apply(model._init_weights)
        return model


def proxy_run(
    wl,
    plan: dict,
    lr: float,
    seed: int,
    steps: int,
    batch_size: int,
    pretrained: bool = True,
    schedule: str = DEFAULT_SCHEDULE,
):
    """One proxy run as `planner tune` trains a trial (``run_proxy``): (metric, accuracy, CPU seconds)."""
    params = TrialParams(
        active_layers=plan["active_layers"],
        period=plan["period"],
        scorer=plan["scorer"],
        train_embeddings=plan["eh"],
        train_head=plan["eh"],
        lr=lr,
        min_depth=plan["min_depth"],
    )
    t0 = time.process_time()
    r = run_proxy(
        wl if pretrained else RandomInit(wl),
        params,
        batch_size=batch_size,
        steps=steps,
        eval_every=steps,
        seed=seed,
        schedule=schedule,
    )
    cpu = time.process_time() - t0
    accuracy = r.secondary.get("accuracy") if wl.metric_name != "accuracy" else r.metric
    return r.metric, accuracy, cpu


def spread(rows, key: str) -> tuple[float, float, float]:
    """(std of plan means, mean within-plan std, ratio)."""
    means = [statistics.mean(r[key]) for r in rows]
    within = statistics.mean(statistics.stdev(r[key]) for r in rows)
    across = statistics.stdev(means)
    return across, within, across / within if within else float("inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default=DEFAULT_TASK)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=150, help="proxy optimizer steps per run")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the workload's suggested proxy batch")
    ap.add_argument("--lr", type=float, default=SPREAD_LR, help="the fixed learning rate of every plan")
    ap.add_argument("--held-out", type=int, default=N_HELD_OUT)
    ap.add_argument(
        "--schedule", default=DEFAULT_SCHEDULE, choices=SCHEDULES, help="the proxy's learning-rate schedule"
    )
    ap.add_argument("--metric", default=None, help="eval_loss or accuracy (default: the workload's own)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default="", help="comma-separated plan labels to run (default: all)")
    ap.add_argument("--recipe", default="{}", help="JSON overrides of the pretraining recipe (experiments)")
    ap.add_argument("--time-pretraining", action="store_true", help="also pretrain once in a fresh cache and time it")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    recipe = dataclasses.replace(DEFAULT_RECIPE, **json.loads(args.recipe))
    print(
        f"# bench_workload_spread: torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start"
    )
    if args.time_pretraining:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["PLANNER_CACHE_DIR"] = tmp
            t0 = time.perf_counter()
            path = ensure_default_model(recipe, progress=False)
            secs = time.perf_counter() - t0
            stats = json.loads((path / "planner_pretrain.json").read_text())
            del os.environ["PLANNER_CACHE_DIR"]
        print(
            f"first-use pretraining ({recipe.layers} layers, hidden {recipe.hidden}, {stats['parameters'] / 1e6:.2f}M parameters, "
            f"{recipe.steps} steps of {recipe.batch_size}x{recipe.seq_len} on {stats['threads']} thread), fresh cache: "
            f"{secs:.1f} s ({stats['cpu_seconds']:.1f} CPU s), loss {stats['first_loss']:.2f} -> {stats['final_loss']:.2f}, weights sha256 "
            f"{stats['weights_sha256'][:16]} (load average now {os.getloadavg()[0]:.1f})"
        )
    t0 = time.perf_counter()
    extra = {"metric": args.metric} if args.metric else {}
    wl = default_workload(args.task, recipe=recipe, n_held_out=args.held_out, seed=0, **extra)
    batch = args.batch_size or wl.batch_size
    print(f"workload: {wl!r}; loaded in {time.perf_counter() - t0:.1f} s")
    print(
        f"proxy run: {args.steps} steps of batch {batch}, AdamW lr={args.lr:g} (fixed, {args.schedule} schedule), {wl.metric_name} on "
        f"{len(wl.held_out)} held-out prompts; seeds 0..{args.seeds - 1}, shared by every plan"
    )
    print(
        f"{'plan':34s} {wl.metric_name:>9s} {'± std':>6s}  {'per seed':22s} {'accuracy':>9s} {'± std':>6s}  CPU s/run"
    )
    chosen = [p for p in plans(wl.spec.num_layers) if not args.only or p[0] in args.only.split(",")]
    rows = []
    for label, plan in chosen + [("LISA defaults, random init", {**LISA, "random": True})]:
        if args.only and label not in args.only.split(","):
            continue
        metrics, accs, secs = [], [], []
        for seed in range(args.seeds):
            m, acc, cpu = proxy_run(
                wl, plan, args.lr, seed, args.steps, batch, pretrained="random" not in plan, schedule=args.schedule
            )
            metrics.append(m)
            accs.append(acc)
            secs.append(cpu)
        row = {"label": label, "metric": metrics, "accuracy": accs, "random": "random" in plan}
        rows.append(row)
        print(
            f"{label:34s} {statistics.mean(metrics):9.3f} {statistics.stdev(metrics):6.3f}  "
            f"{' '.join(f'{x:.3f}' for x in metrics):22s} {statistics.mean(accs):9.3f} {statistics.stdev(accs):6.3f}  "
            f"{statistics.mean(secs):6.1f}",
            flush=True,
        )
    pre = [r for r in rows if not r["random"]]
    if len(pre) > 1:
        for key, name in (("metric", wl.metric_name), ("accuracy", "accuracy (secondary)")):
            across, within, ratio = spread(pre, key)
            print(
                f"{name:>9s}: spread across {len(pre)} plans (std of means) {across:.4f}, seed noise (mean within-plan std) "
                f"{within:.4f}, ratio {ratio:.1f}"
            )
    for r in rows:
        if r["random"] and pre:
            print(
                f"pretraining matters: {r['label']} = {statistics.mean(r['metric']):.3f} vs LISA defaults pretrained = "
                f"{statistics.mean(pre[0]['metric']):.3f}"
            )
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
