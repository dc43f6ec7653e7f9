"""How many trials does the search need? TPE vs random search against an exhaustive grid.

1. Train every point of a discretized search space of the default workload with the tuner's
   own proxy trainer (``planner.tune.proxy.train.run_proxy``) at `planner tune`'s default proxy run
   (150 steps of the workload's batch), once per grid seed (``GRID_SEEDS``), and cache the measured
   metric (``studies/bench_search_grid.json``; re-measured when the proxy model, its workload, its
   metric or the run changes). Then a race refines the top: seed after seed (up to
   ``--race-seeds``) goes to every point not yet ``--race-z`` standard errors worse than the
   leader, so the points that could be the best, or within 1% of it, are told apart by their means
   rather than by two seeds' luck; the rest are settled worse. A point's value is its mean over its
   seeds (every point shares each seed's data order, as the trials of one study do). The grid:
   γ 1..G (G = ``MAX_ACTIVE_LAYERS`` = 8 of the default proxy's 32 layers: as a budget bounds the real
   search, planner.tune.search.bounded) x 2 scorers (uniform: LISA's; ist: importance-weighted) x
   embeddings on/off (head trainable) x 2 learning rates (DEFAULT_LR and a third of it), K = LISA's
   20: 64 points.
2. For each search seed, run Optuna with each sampler variant on the same space, a trial's
   value looked up in the grid, and count the trials each needs to come within ``TOLERANCE``
   (relative) of the grid's best. ``tpe`` and ``random`` are `planner tune`'s own samplers
   (``planner.tune.search.samplers.study_sampler``, as the study draws); the others change one of its
   TPE settings (the share of trials modelled as good, start-up trials, multivariate). ``+queued``
   starts, as a study does, with the trials `planner tune` queues before searching (LISA's
   defaults and the point with the most layers that fit, γ = G; full fine-tuning, γ = L, would be
   gated untrained), counted as trials.
3. The same searches on each grid seed's runs alone: other landscapes with their own best, a
   check that a setting chosen on the means is not fitted to them.

    nice -n 10 python studies/bench_search.py | tee reports/bench_search.txt
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import statistics
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

HERE = Path(__file__).resolve().parent
CACHE = HERE / "bench_search_grid.json"
STEPS = 150  # planner tune's DEFAULT_STEPS
GRID_SEEDS = (0, 1)
PERIODS = (20,)
SCORERS = ("ist", "uniform")
TOLERANCE = 0.01  # "within 1%" of the best value, relative
SEARCH_SEEDS = 100
TARGET_SHARE = 0.20
RACE_Z = 3.0  # standard errors of the gap to the leader before a point leaves the race
RACE_SEEDS = 16
# G: the most active layers the bounded search draws (planner.tune.search.bounded.largest_fitting_active_layers): 8 for
# `planner tune --vram 32GB` on Llama-3-8B (bfloat16, batch 1 x 1024, AdamW); 3 at 24GB, 12 at 40GB, 17 at 48GB.
MAX_ACTIVE_LAYERS = 8

_WORKLOAD = None
GRID_WALL = None  # wall seconds the grid took to measure (from the cache)


def lrs() -> tuple[float, ...]:
    from planner.tune.search.space import DEFAULT_LR

    return (DEFAULT_LR / 3, DEFAULT_LR)


def space():
    from planner.tune.search.space import SearchSpace

    wl = _workload()
    return SearchSpace(
        num_layers=wl.spec.num_layers,
        scorers=SCORERS,
        seq_len=wl.seq_len,
        periods=PERIODS,
        lr_choices=lrs(),
        batch_sizes=(wl.batch_size,),
        head_choices=(True,),
    )


def grid_points():
    return [p for p in space().grid() if p.active_layers <= MAX_ACTIVE_LAYERS]


def _workload():
    global _WORKLOAD
    if _WORKLOAD is None:
        from planner.data import load_workload

        _WORKLOAD = load_workload(seed=0)
    return _WORKLOAD


def _key(p) -> str:
    return json.dumps(asdict(p), sort_keys=True)


def _measure(job):
    import torch

    from planner.tune.proxy.train import run_proxy

    p, seed = job
    torch.set_num_threads(1)
    wl = _workload()
    start = time.process_time()
    r = run_proxy(wl, p, batch_size=wl.batch_size, steps=STEPS, eval_every=STEPS, seed=seed)
    return _key(p), seed, r.metric, r.secondary, time.process_time() - start


def _meta() -> dict:
    wl = _workload()
    return {
        "steps": STEPS,
        "batch_size": wl.batch_size,
        "proxy": Path(wl.model_source).name,
        "workload": wl.name,
        "metric": wl.metric_name,
        "num_layers": wl.spec.num_layers,
        "held_out": len(wl.held_out),
        "max_active_layers": MAX_ACTIVE_LAYERS,
    }


def _summary(runs: dict, points) -> dict:
    """Key -> {"metric": mean over the point's seeds, "per_seed", "accuracy", "cpu_seconds"}."""
    out = {}
    for p in points:
        got = [
            runs[k]
            for k in sorted((k for k in runs if k.rsplit("|", 1)[0] == _key(p)), key=lambda k: int(k.rsplit("|", 1)[1]))
        ]
        per_seed = [g["metric"] for g in got]
        out[_key(p)] = {
            "metric": statistics.mean(per_seed),
            "per_seed": per_seed,
            "accuracy": [g["secondary"].get("accuracy") for g in got],
            "cpu_seconds": sum(g["cpu_seconds"] for g in got),
        }
    return out


def run_std(table: dict) -> float:
    """One run's seed noise, pooled over the points that have two seeds or more."""
    rows = [v["per_seed"] for v in table.values()]
    dof = sum(len(r) - 1 for r in rows if len(r) > 1)
    ss = sum(sum((x - statistics.mean(r)) ** 2 for x in r) for r in rows if len(r) > 1)
    return (ss / dof) ** 0.5 if dof else float("nan")


def contenders(table: dict, sign: float, z: float) -> list[str]:
    """The points not yet shown worse than the leader: mean gap <= z x the standard error of the gap (a race,
    Maron & Moore 1994: a point is dropped once z standard errors of its gap separate it from the leader)."""
    leader = max(table, key=lambda k: sign * table[k]["metric"])
    sd = run_std(table)
    n_lead = len(table[leader]["per_seed"])
    return [
        k
        for k, v in table.items()
        if sign * (table[leader]["metric"] - v["metric"]) <= z * sd * (1 / len(v["per_seed"]) + 1 / n_lead) ** 0.5
    ]


def measure_grid(workers: int, race_seeds: int = len(GRID_SEEDS), z: float = RACE_Z) -> dict:
    """Every grid point with GRID_SEEDS, then a race: each further seed (up to ``race_seeds``) for the points not
    yet shown worse than the leader by ``z`` standard errors. Returns :func:`_summary` (runs cached)."""
    points = grid_points()
    meta = _meta()
    cache = json.loads(CACHE.read_text()) if CACHE.is_file() else {}
    if cache.get("meta") != meta:
        cache = {}
    runs = cache.get("runs", {})
    wall = [cache.get("wall_seconds", 0.0)]
    sign = 1.0 if _workload().direction == "maximize" else -1.0

    def run(todo, pool):
        if not todo:
            return
        print(
            f"measuring {len(todo)} grid runs ({STEPS} steps x batch {meta['batch_size']}, {workers} workers)...",
            file=sys.stderr,
            flush=True,
        )
        start = time.time()
        for i, (key, seed, metric, secondary, cpu) in enumerate(pool.map(_measure, todo, chunksize=1), 1):
            runs[f"{key}|{seed}"] = {"metric": metric, "secondary": secondary, "cpu_seconds": cpu}
            if i % 8 == 0 or i == len(todo):
                print(f"  {i}/{len(todo)} in {time.time() - start:.0f}s", file=sys.stderr, flush=True)
                CACHE.write_text(
                    json.dumps({"meta": meta, "runs": runs, "wall_seconds": wall[0] + time.time() - start})
                )
        wall[0] += time.time() - start
        CACHE.write_text(json.dumps({"meta": meta, "runs": runs, "wall_seconds": wall[0]}))

    by_key = {_key(p): p for p in points}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        run([(p, s) for s in GRID_SEEDS for p in points if f"{_key(p)}|{s}" not in runs], pool)
        for seed in range(len(GRID_SEEDS), race_seeds):
            alive = contenders(_summary(runs, points), sign, z)
            if len(alive) < 2:
                break
            run([(by_key[k], seed) for k in alive if f"{k}|{seed}" not in runs], pool)
    global GRID_WALL
    GRID_WALL = wall[0]
    return _summary(runs, points)


def _snap(p, s):
    """``p`` with the head trainable, as in every grid point."""
    return replace(p, train_head=True)


def queued_points(s) -> list:
    """What `planner tune` trains before searching, as grid points: LISA's defaults (embeddings and head,
    DEFAULT_LR), then the most layers that fit (γ = G). Full fine-tuning (γ = L > G) would be gated, not trained."""
    from planner.tune.study.baselines import baseline_points, offered_points

    base = baseline_points(s)
    fixed = [
        base[k] for k in ("baseline:lisa", "baseline:full") if k in base and base[k].active_layers <= MAX_ACTIVE_LAYERS
    ]
    return [_snap(p, s) for p in fixed + offered_points(s, UpToG())]


class UpToG:
    """The grid's gate: every point with γ <= G fits (the grid holds no other)."""

    def predict(self, config):
        return type("P", (), {"fits": config.active_layers <= MAX_ACTIVE_LAYERS})()


# (no group=True variant: its decomposed spaces bypass the gate's bound on γ, and the space has no conditional
# parameters, where it measured the same as plain multivariate TPE on the 8-layer grid)
VARIANTS = {
    "tpe": "planner tune's sampler: TPE, multivariate, 5 random start-up trials, the best 15% of trials model l(x)",
    "random": "random search",
    "tpe+queued": "planner tune as a user runs it: its queued trials first, then its TPE",
    "random+queued": "random search after the same queued trials (what the queued trials alone are worth)",
    "tpe+queued@1seed": "the same, told one seed's value (seed 0 or 1, as a study's trials see), judged by the mean",
    "tpe-top10%": "TPE as planner tune's, l(x) from the best 10% of trials (Optuna's default)",
    "tpe-top20%": "TPE as planner tune's, l(x) from the best 20%",
    "tpe-top25%": "TPE as planner tune's, l(x) from the best 25%",
    "tpe-independent": "TPE, one parameter at a time (multivariate=False), otherwise as planner tune's",
    "tpe-10": "TPE as planner tune's, 10 start-up trials",
    "tpe-3": "TPE as planner tune's, 3 start-up trials",
}


def make(variant: str, seed: int):
    from planner.tune.search.samplers import good_trials, make_sampler, study_sampler

    base = variant.split("@")[0].split("+")[0]
    if base in ("tpe", "random"):  # exactly what `planner tune --sampler tpe|random` draws with
        return study_sampler(base, seed, space(), UpToG())
    if base.startswith("tpe-top"):
        opts = {"active_layers": functools.partial(good_trials, share=int(base[len("tpe-top") : -1]) / 100)}
    else:
        opts = {
            "tpe-independent": dict(multivariate=False),
            "tpe-10": dict(n_startup_trials=10),
            "tpe-3": dict(n_startup_trials=3),
        }[base]
    return study_sampler(base, seed, space(), UpToG(), sampler=make_sampler("tpe", seed, **opts))


def trajectory(
    variant: str, seed: int, grid: dict, cap: int, direction: str, landscape: int | None = None, stop=None
) -> list[tuple[float, int]]:
    """(value, distinct points so far) of each of ``cap`` trials, or until ``stop(path so far)``; a repeated point
    reuses its proxy run in a study. The sampler is told a point's mean, or with ``@1seed`` one grid seed's run
    (``seed`` mod 2: the noisy value a study's trial measures); the value returned is the mean. With ``landscape``
    (a grid seed) that seed's runs are both told and returned: another objective with its own best."""
    import optuna

    s = space()
    study = optuna.create_study(direction=direction, sampler=make(variant, seed))
    if "+queued" in variant:
        for p in queued_points(s):
            study.enqueue_trial(p.as_params())
    seen, out = set(), []
    for _ in range(cap):
        trial = study.ask()
        key = _key(s.suggest(trial))
        seen.add(key)
        value = grid[key]["metric"] if landscape is None else grid[key]["per_seed"][landscape]
        study.tell(trial, grid[key]["per_seed"][seed % 2] if variant.endswith("@1seed") else value)
        out.append((value, len(seen)))
        if stop is not None and stop(out):
            break
    return out


def first_hit(path: list[tuple[float, int]], hit) -> tuple[int | None, int | None]:
    """(trials until a value satisfies ``hit``, distinct points by then); (None, None) when none does."""
    for n, (value, distinct) in enumerate(path, 1):
        if hit(value):
            return n, distinct
    return None, None


def _fmt(p: dict) -> str:
    return f"γ={p['active_layers']} K={p['period']} scorer={p['scorer']} emb={'on' if p['train_embeddings'] else 'off'} lr={p['lr']:.2g}"


def main() -> int:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # TPESampler(group=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {list(VARIANTS)}")
    parser.add_argument("--grid-only", action="store_true", help="measure (or read) the grid and stop")
    parser.add_argument("--search-seeds", type=int, default=SEARCH_SEEDS, help="searches per variant (seeds 0..n-1)")
    parser.add_argument("--rows", action="store_true", help="print every search seed's row, not only the summary")
    parser.add_argument("--race-seeds", type=int, default=RACE_SEEDS, help="most seeds a point still in the race gets")
    parser.add_argument("--race-z", type=float, default=RACE_Z, help="standard errors that drop a point from the race")
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        print(f"--variants must name some of {list(VARIANTS)}, but got {bad}", file=sys.stderr)
        return 2

    start = time.time()
    measured_now = not CACHE.is_file() or json.loads(CACHE.read_text()).get("meta") != _meta()
    grid = measure_grid(args.workers, args.race_seeds, args.race_z)
    if args.grid_only:
        return 0
    wl = _workload()
    direction, sign = wl.direction, (1.0 if wl.direction == "maximize" else -1.0)
    values = {k: v["metric"] for k, v in grid.items()}
    n = len(values)
    best = max(values.values(), key=lambda v: sign * v)
    target = best - sign * TOLERANCE * abs(best)
    within = lambda v: sign * v >= sign * target  # noqa: E731
    near = sum(within(v) for v in values.values())
    sd = run_std(grid)
    best_key = max(grid, key=lambda k: sign * grid[k]["metric"])
    noise = sd / len(grid[best_key]["per_seed"]) ** 0.5  # the standard error of the best point's value
    seeds = sorted({len(v["per_seed"]) for v in grid.values()})
    cpu = sum(v["cpu_seconds"] for v in grid.values())
    s = space()
    print(
        f"grid: {n} points = γ 1..{MAX_ACTIVE_LAYERS} of {s.num_layers} x K {list(PERIODS)} x scorers {list(s.scorers)} x embeddings on/off (head trainable) "
        f"x lr {[float(f'{x:.3g}') for x in lrs()]}; proxy {STEPS} steps x batch {wl.batch_size}, each point the mean of "
        f"its seeds: {len(GRID_SEEDS)} for all, then up to {args.race_seeds} for the points still within {args.race_z:g} "
        f"standard errors of the leader (a race); {wl!r}"
    )
    print(
        "seeds per point: "
        + ", ".join(f"{n}: {sum(len(v['per_seed']) == n for v in grid.values())} points" for n in seeds)
    )
    print(
        f"grid {wl.metric_name} ({direction}): best {best:.4f}, median {statistics.median(values.values()):.4f}, "
        f"worst {max(values.values(), key=lambda v: -sign * v):.4f}; standard error of the best's value {noise:.4f} "
        f"(one run's seed noise {sd:.4f}); {near} points ({near / n:.1%}) within {TOLERANCE:.0%} ({abs(best) * TOLERANCE:.4f}) "
        f"of the best; measuring took {cpu:.0f} CPU-s"
        + (f", {GRID_WALL:.0f}s wall on a shared machine" if GRID_WALL else "")
    )
    top = sorted(grid.items(), key=lambda kv: -sign * kv[1]["metric"])[:8]
    print(f"top 8 points ({wl.metric_name} mean ± std over its seeds, seeds; mean accuracy):")
    for key, v in top:
        acc = [a for a in v["accuracy"] if a is not None]
        spread = statistics.stdev(v["per_seed"]) if len(v["per_seed"]) > 1 else float("nan")
        print(
            f"  {v['metric']:.4f} ± {spread:.4f}  (n={len(v['per_seed'])}; "
            f"{statistics.mean(acc) if acc else float('nan'):.3f})  {_fmt(json.loads(key))}"
        )
    queued = [_key(p) for p in queued_points(s)]
    print("queued by planner tune: " + "; ".join(f"{_fmt(json.loads(k))} = {grid[k]['metric']:.4f}" for k in queued))
    print()
    cap = n
    thresholds = [("1%", within)]
    if noise == noise and abs(best) * TOLERANCE < noise:
        noise_target = best - sign * noise
        thresholds.append((f"noise ({noise:.4f})", lambda v: sign * v >= sign * noise_target))
    seeds = range(args.search_seeds)
    budget = int(TARGET_SHARE * n)
    # a search stops once every threshold is hit and the budget is spent: nothing after that is read
    enough = lambda path: len(path) >= budget and all(any(hit(v) for v, _ in path) for _, hit in thresholds)  # noqa: E731
    paths = {v: [trajectory(v, seed, grid, cap, direction, stop=enough) for seed in seeds] for v in variants}
    for label, hit in thresholds:
        runs = {v: [first_hit(path, hit) for path in got] for v, got in paths.items()}
        rows = {v: [r[0] for r in got] for v, got in runs.items()}
        distinct = {v: [r[1] if r[0] is not None else cap + 1 for r in got] for v, got in runs.items()}
        reach = sum(hit(v) for v in values.values())
        print(
            f"trials until one is within {label} of the grid's best ({best:.4f}; {reach} of {n} points qualify); "
            f"cap {cap}, {len(seeds)} search seeds"
        )
        if args.rows:
            print(f"{'seed':>5} " + " ".join(f"{v:>16}" for v in variants))
        for i, seed in enumerate(seeds if args.rows else ()):
            print(
                f"{seed:>5} "
                + " ".join(f"{(str(rows[v][i]) if rows[v][i] is not None else '>' + str(cap)):>16}" for v in variants)
            )
        for name, hits in rows.items():
            finite = [h if h is not None else cap + 1 for h in hits]
            med = statistics.median(finite)
            print(
                f"{name:>16}: median {med:g} trials ({med / n:.1%} of the grid), mean {statistics.mean(finite):.1f}, "
                f"worst {max(finite)}, hit within {budget} trials ({TARGET_SHARE:.0%} of the grid) in "
                f"{sum(f <= budget for f in finite)}/{len(finite)} seeds; distinct points trained: median "
                f"{statistics.median(distinct[name]):g}  [{VARIANTS[name]}]"
            )
        if "tpe" in rows:
            tpe_med = statistics.median([h if h is not None else cap + 1 for h in rows["tpe"]])
            verdict = "met" if tpe_med < TARGET_SHARE * n else "NOT met"
            print(
                f"target at this threshold (TPE median under {TARGET_SHARE:.0%} of the grid = {TARGET_SHARE * n:.1f} "
                f"trials): {verdict}"
            )
        print()
    print(
        f"best value found after {budget} trials ({TARGET_SHARE:.0%} of the grid): median over {len(seeds)} seeds, "
        f"its excess over the grid's best ({best:.4f}), and its rank among the {n} points (1 = best)"
    )
    ranked = sorted(values.values(), key=lambda v: -sign * v)
    for name, got in paths.items():
        found = [max((v for v, _ in path[:budget]), key=lambda v: sign * v) for path in got]
        med = statistics.median(found)
        ranks = [1 + sum(sign * r > sign * f for r in ranked) for f in found]
        print(
            f"{name:>16}: {med:.4f} (+{abs(med - best):.4f}), rank median {statistics.median(ranks):g}, "
            f"in the top 3 in {sum(r <= 3 for r in ranks)}/{len(ranks)} seeds"
        )
    print()
    print(
        f"the same searches on one grid seed's runs alone (another landscape, with its own best; all {n} points have "
        f"seeds {list(GRID_SEEDS)}): median trials until one is within {TOLERANCE:.0%} of that landscape's best"
    )
    for name in (v for v in variants if "@" not in v):
        got = []
        for land in GRID_SEEDS:
            lbest = max((g["per_seed"][land] for g in grid.values()), key=lambda v: sign * v)
            lhit = lambda v, t=lbest - sign * TOLERANCE * abs(lbest): sign * v >= sign * t  # noqa: E731
            hits = [
                first_hit(trajectory(name, seed, grid, cap, direction, land, lambda p: lhit(p[-1][0])), lhit)[0]
                for seed in seeds
            ]
            finite = [h if h is not None else cap + 1 for h in hits]
            got.append(
                f"seed {land}: median {statistics.median(finite):g} trials, within {budget} in "
                f"{sum(f <= budget for f in finite)}/{len(finite)}"
            )
        print(f"{name:>16}: " + "; ".join(got))
    print(
        f"wall time of this run {time.time() - start:.0f}s (grid {'measured' if measured_now else 'read from ' + CACHE.name})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
