"""How many trials does the search need? TPE vs random search against an exhaustive grid.

1. Train every point of a discretized search space of the default workload (γ × K × 4 scorers ×
   embeddings × 2 learning rates; head always trainable) with the tuner's own proxy trainer,
   and cache the measured accuracies (``studies/bench_search_grid.json``; re-measured when the
   proxy model or its workload changes). The grid is sized to be measured in well under 15
   minutes of one idle core (``nice -n 10``, ``--workers 1``; 64 points of ~2.5 CPU-s): 2 of
   the 7 scorers (uniform: LISA's; ist: importance-weighted), the two that differ most in kind.
2. For several seeds, run Optuna with TPE and with random search on the same space, where a
   trial's value is looked up in the grid, and count the trials each needs to come within 1
   point of accuracy (0.01) of the grid's best. The samplers are `planner tune`'s own
   (``planner.tune.study.make_sampler``); the study's baselines are left out so both start equal.

    nice -n 10 python studies/bench_search.py --workers 1 | tee reports/bench_search.txt
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

HERE = Path(__file__).resolve().parent
CACHE = HERE / "bench_search_grid.json"
STEPS = 100
BATCH = 16
SEED = 0
PERIODS = (5, 20)
LRS = (1e-3, 3e-3)
TOLERANCE = 0.01  # "within 1%": one point of exact-match accuracy
SEARCH_SEEDS = tuple(range(20))
SCORERS = ("ist", "uniform")
TARGET_SHARE = 0.20

_WORKLOAD = None
GRID_WALL = None  # wall seconds the grid took to measure (from the cache)


def space():
    from planner.tune.space import SearchSpace

    wl = _workload()
    return SearchSpace(num_layers=wl.spec.num_layers, scorers=SCORERS, seq_len=wl.seq_len, periods=PERIODS,
                       lr_choices=LRS, batch_sizes=(BATCH,), head_choices=(True,))


def _workload():
    global _WORKLOAD
    if _WORKLOAD is None:
        from planner.data import load_workload

        _WORKLOAD = load_workload(seed=SEED)
    return _WORKLOAD


def _key(p) -> str:
    return json.dumps(asdict(p), sort_keys=True)


def _measure(p):
    import torch

    from planner.tune.proxy import run_proxy

    torch.set_num_threads(1)
    start = time.process_time()
    r = run_proxy(_workload(), p, batch_size=BATCH, steps=STEPS, eval_every=STEPS, seed=SEED)
    return _key(p), r.metric, time.process_time() - start


def measure_grid(workers: int) -> dict:
    """Key -> accuracy for every grid point (cached)."""
    points = space().grid()
    wl = _workload()
    # what a measured value depends on besides its point (the point itself is the key)
    meta = {"steps": STEPS, "batch_size": BATCH, "seed": SEED, "proxy": Path(wl.model_source).name, "workload": wl.name,
            "num_layers": wl.spec.num_layers}
    cache = json.loads(CACHE.read_text()) if CACHE.is_file() else {}
    values = cache.get("values", {}) if cache.get("meta") == meta else {}
    todo = [p for p in points if _key(p) not in values]
    if todo:
        print(f"measuring {len(todo)} of {len(points)} grid points ({STEPS} steps x batch {BATCH}, {workers} workers)...",
              file=sys.stderr, flush=True)
        start = time.time()
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for i, (key, metric, cpu) in enumerate(pool.map(_measure, todo, chunksize=4), 1):
                values[key] = {"metric": metric, "cpu_seconds": cpu}
                if i % 16 == 0 or i == len(todo):
                    print(f"  {i}/{len(todo)} in {time.time() - start:.0f}s", file=sys.stderr, flush=True)
                    CACHE.write_text(json.dumps({"meta": meta, "values": values}))
        cache["wall_seconds"] = cache.get("wall_seconds", 0) + (time.time() - start)
        CACHE.write_text(json.dumps({"meta": meta, "values": values, "wall_seconds": cache["wall_seconds"]}))
    global GRID_WALL
    GRID_WALL = cache.get("wall_seconds")
    return {k: values[k] for k in map(_key, points)}


def trials_to_hit(sampler_name: str, seed: int, grid: dict, target: float, cap: int) -> int | None:
    """Trials until one scores >= target (None when ``cap`` trials never do)."""
    import optuna

    from planner.tune.study import make_sampler

    s = space()
    sampler = make_sampler(sampler_name, seed)  # exactly what `planner tune --sampler tpe|random` uses
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for n in range(1, cap + 1):
        trial = study.ask()
        value = grid[_key(s.suggest(trial))]["metric"]
        study.tell(trial, value)
        if value >= target:
            return n
    return None


def main() -> int:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    start = time.time()
    measured_now = not CACHE.is_file()
    grid = measure_grid(args.workers)
    values = [v["metric"] for v in grid.values()]
    n = len(values)
    best = max(values)
    target = best - TOLERANCE
    near = sum(v >= target for v in values)
    cpu = sum(v["cpu_seconds"] for v in grid.values())
    s = space()
    print(f"grid: {n} points = γ 1..{s.num_layers} x K {list(PERIODS)} x scorers {list(s.scorers)} x embeddings on/off x lr {list(LRS)}"
          f" (head trainable); proxy {STEPS} steps x batch {BATCH}, seed {SEED}, {_workload()!r}")
    print(f"grid accuracy: best {best:.4f}, median {statistics.median(values):.4f}, worst {min(values):.4f}; "
          f"{near} points ({near / n:.1%}) within {TOLERANCE} of the best; measuring took {cpu:.0f} CPU-s"
          + (f", {GRID_WALL:.0f}s wall with {args.workers} workers on a shared machine" if GRID_WALL else ""))
    top = sorted(grid.items(), key=lambda kv: -kv[1]["metric"])[:5]
    print("top 5 points:")
    for key, v in top:
        p = json.loads(key)
        print(f"  {v['metric']:.4f}  γ={p['gamma']} K={p['period']} scorer={p['scorer']} emb={p['train_embeddings']} lr={p['lr']:g}")
    print()
    cap = n
    rows = {"tpe": [], "random": []}
    for seed in SEARCH_SEEDS:
        for name in rows:
            rows[name].append(trials_to_hit(name, seed, grid, target, cap))
    print(f"trials until one is within {TOLERANCE} of the grid's best ({target + TOLERANCE:.4f}); cap {cap}")
    print(f"{'seed':>5} {'tpe':>6} {'random':>7}")
    for i, seed in enumerate(SEARCH_SEEDS):
        t, r = rows["tpe"][i], rows["random"][i]
        print(f"{seed:>5} {t if t is not None else '>' + str(cap):>6} {r if r is not None else '>' + str(cap):>7}")
    for name, hits in rows.items():
        finite = [h if h is not None else cap + 1 for h in hits]
        med = statistics.median(finite)
        print(f"{name:>6}: median {med:g} trials ({med / n:.1%} of the grid), mean {statistics.mean(finite):.1f}, "
              f"worst {max(finite)}, hit within {int(TARGET_SHARE * n)} trials ({TARGET_SHARE:.0%} of the grid) in "
              f"{sum(f <= TARGET_SHARE * n for f in finite)}/{len(finite)} seeds")
    tpe_med = statistics.median([h if h is not None else cap + 1 for h in rows["tpe"]])
    verdict = "met" if tpe_med <= TARGET_SHARE * n else "NOT met"
    print(f"target (TPE median under {TARGET_SHARE:.0%} of the grid = {TARGET_SHARE * n:.0f} trials): {verdict}")
    print(f"wall time of this run {time.time() - start:.0f}s (grid {'measured' if measured_now else 'read from ' + CACHE.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
