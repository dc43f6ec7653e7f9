"""Does the tuned plan beat LISA's defaults, LoRA and full fine-tuning beyond the seed noise, on more than one workload?

For each workload: ``planner tune`` (``run_tune``) plans Llama-3-8B in bfloat16 at a 40 GB budget
(where LISA's defaults and LoRA fit; full fine-tuning does not) on the built-in proxy, with its
baselines' learning-rate sweeps and its confirmation; then the tuned plan, LISA's defaults and LoRA
(each baseline at the best learning rate of its sweep) and full fine-tuning (where it fits) are
trained again with 5 fresh seeds (``planner.tune.confirm.confirm_seed(BENCH_SEED, i)``, none the
study's own) at the study's proxy budget: mean ± std of the held-out metric, the target's
predicted peak, and the verdict against LISA's defaults (margin vs 2 standard errors of the
difference, and the margin in pooled seed standard deviations).

Workloads: the default task (``maximum``: the largest of three numbers), a second built-in task of
another kind (``reversal``: a string written backwards), and a user-style instruction JSONL file
written here ("Spell 472 in words" -> "four seven two").

    nice -n 10 python studies/bench_workloads.py --only default &    # one process per workload
    nice -n 10 python studies/bench_workloads.py --only reversal &
    nice -n 10 python studies/bench_workloads.py --only jsonl &
    python studies/bench_workloads.py | tee reports/bench_workloads.txt   # the table from the three results
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "reports" / "bench_workloads"
VRAM = "40GB"
N_TRIALS = 16  # of the default 24: fewer searched trials, to fit the shared machine (documented in the output)
STEPS = 100  # of the default 150
SEEDS = 5
BENCH_SEED = 1  # re-training seeds: confirm_seed(1, i), distinct from the study's (--seed 0) confirmation seeds
WORKLOADS = ("default", "reversal", "jsonl")
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def write_jsonl(path: Path, n: int = 3000) -> str:
    rng = random.Random(7)
    seen, lines = set(), []
    while len(lines) < n:
        x = rng.randint(0, 9999)
        if x in seen:
            continue
        seen.add(x)
        lines.append(json.dumps({"instruction": f"Spell {x} in words", "response": " ".join(DIGITS[int(d)] for d in str(x))}))
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def load(name: str, tmp: Path):
    from planner.data import load_workload

    if name == "default":
        return load_workload(seed=0)
    if name == "reversal":
        return load_workload(data="builtin:reversal", seed=0)
    return load_workload(data=write_jsonl(tmp / "spell.jsonl"), seed=0)


def retrain(wl, trial, space, proxy_layers: int, batch: int, seeds: list[int]) -> list[float]:
    from planner.tune.mapping import proxy_params
    from planner.tune.proxy import run_proxy

    small = proxy_params(space.from_params(trial.params), target_layers=space.num_layers, proxy_layers=proxy_layers)
    return [run_proxy(wl, small, batch_size=batch, steps=STEPS, eval_every=STEPS, seed=s).metric for s in seeds]


def run_one(name: str) -> dict:
    import optuna
    import torch

    from planner.tune import TuneOptions, run_tune
    from planner.tune.baselines import KINDS, best_of_kind
    from planner.tune.confirm import confirm_seed
    from planner.tune.storage import open_storage
    from planner.tune.study import build_space, default_batch_size

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-workloads-{name}-"))
    wl = load(name, tmp)
    storage = f"sqlite:///{tmp}/s.db"
    options = TuneOptions(vram=VRAM, model="llama-3-8b", n_trials=N_TRIALS, steps=STEPS, storage=storage, study=name, out=str(tmp / "plan.yaml"),
                          proxy_device="cpu", seed=0)
    start = time.perf_counter()
    result = run_tune(options, workload=wl, progress=False)
    tune_s = time.perf_counter() - start
    target, _ = options.validate_all()
    space = build_space(target, options)
    study = optuna.load_study(study_name=name, storage=open_storage(storage))
    trials = study.get_trials(deepcopy=False)
    batch = getattr(wl, "batch_size", None) or default_batch_size(int(wl.seq_len))
    seeds = [confirm_seed(BENCH_SEED, i) for i in range(SEEDS)]
    rows = []
    plans = [("tuned plan", next(t for t in trials if t.number == result.best_trial_number))]
    plans += [(k.split(":", 1)[1], best_of_kind(trials, k, wl.direction)) for k in KINDS]
    start = time.perf_counter()
    for label, t in plans:
        if t is None:
            continue
        row = {"plan": label, "trial": t.number, "params": dict(t.params), "peak": t.user_attrs.get("predicted_peak_bytes"),
               "fits": t.user_attrs.get("fits"), "kind": t.user_attrs.get("kind")}
        if row["fits"]:
            row["metrics"] = retrain(wl, t, space, wl.spec.num_layers, batch, seeds)
        rows.append(row)
    conf = result.plan.confirmation
    return {"workload": name, "workload_repr": repr(wl), "metric": wl.metric_name, "direction": wl.direction,
            "tune_seconds": tune_s, "retrain_seconds": time.perf_counter() - start, "seeds": seeds, "rows": rows,
            "counts": result.counts, "confirmation": None if conf is None else conf.model_dump(mode="json")}


def stats(values):
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def render(results: list[dict]) -> list[str]:
    from planner.tune.gate import human_bytes

    out = [f"target Llama-3-8B bfloat16, budget {VRAM}; built-in proxy; `planner tune` with --n-trials {N_TRIALS} --steps "
           f"{STEPS} (defaults 24 and 150, reduced for the shared 2-core machine), baseline learning-rate sweeps and "
           f"confirmation (3 seeds, top 2) as in the default; then {SEEDS} fresh seeds per plan at {STEPS} steps",
           "verdict vs LISA's defaults: margin > 2 standard errors of the difference = beyond the seed noise; "
           "'x sd' = margin / pooled seed std sqrt((s_a² + s_b²)/2)", ""]
    worse, wins = [], []
    for r in results:
        sign = 1.0 if r["direction"] == "maximize" else -1.0
        out.append(f"== {r['workload']}: {r['workload_repr']}")
        out.append(f"   tune {r['tune_seconds']:.0f} s ({r['counts'].get('complete', 0)} trained, {r['counts'].get('gated', 0)} "
                   f"gated, {r['counts'].get('pruned', 0) - r['counts'].get('gated', 0)} pruned, "
                   f"{r['counts'].get('confirmation', 0)} confirmation runs); re-training {r['retrain_seconds']:.0f} s")
        lisa = next((x for x in r["rows"] if x["plan"] == "lisa" and x.get("metrics")), None)
        out.append(f"   {'plan':<11} {'mean':>7} {'std':>7}  {'predicted peak':>14}  {'lr':>8}  per-seed {r['metric']}"
                   f"{'':<20} vs LISA")
        for x in r["rows"]:
            p = x["params"]
            what = f"γ={p['gamma']} K={p['period']} {p['scorer']} E{'+' if p['train_embeddings'] else '-'}H{'+' if p['train_head'] else '-'}"
            if not x.get("metrics"):
                out.append(f"   {x['plan']:<11} {'does not fit':>15}  {human_bytes(x['peak']):>14}  ({what}): never trained")
                continue
            mean, std = stats(x["metrics"])
            verdict = ""
            if lisa is not None and x is not lisa:
                lm, ls = stats(lisa["metrics"])
                diff = sign * (mean - lm)
                se2 = 2 * math.sqrt(std ** 2 / len(x["metrics"]) + ls ** 2 / len(lisa["metrics"]))
                pooled = math.sqrt((std ** 2 + ls ** 2) / 2)
                word = "beyond noise" if diff > se2 else ("WORSE beyond noise" if diff < -se2 else "within noise")
                if x["plan"] == "tuned plan":
                    if diff < -se2:
                        worse.append(r["workload"])
                    if pooled and diff > 2 * pooled:
                        wins.append(r["workload"])
                verdict = f"{diff:+.4f} (2SE {se2:.4f}, {diff / pooled if pooled else math.inf:+.1f} sd): {word}"
            out.append(f"   {x['plan']:<11} {mean:7.4f} {std:7.4f}  {human_bytes(x['peak']):>14}  {p['lr']:8.2g}  "
                       + " ".join(f"{m:.3f}" for m in x["metrics"]) + f"   {verdict}")
            out.append(f"   {'':<11} {what}, trial {x['trial']}")
        if r.get("confirmation"):
            out.append("   the study's own confirmation (3 seeds): " + "; ".join(
                f"{c['name']} {c['mean']:.4f} ± {c['std']:.4f}" for c in r["confirmation"]["candidates"] if c["mean"] is not None))
            for m in r["confirmation"]["margins"]:
                if m["margin"] is not None:
                    out.append(f"     vs {m['baseline']}: {m['versus']} {m['margin']:+.4f} (2SE {m['noise']:.4f}): {m['verdict']}")
        out.append("")
    out.append(f"target 1, the tuned plan never worse than LISA's defaults beyond the noise: "
               f"{'met' if not worse else 'NOT met (' + ', '.join(worse) + ')'}")
    out.append(f"target 2, better than LISA's defaults by more than two seed standard deviations on at least one workload: "
               f"{'met (' + ', '.join(wins) + ')' if wins else 'NOT met'}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=WORKLOADS, help="measure one workload (results under reports/bench_workloads/)")
    args = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    names = [args.only] if args.only else [w for w in WORKLOADS if not (OUT / f"{w}.json").exists()]
    for name in names:
        res = run_one(name)
        (OUT / f"{name}.json").write_text(json.dumps(res, indent=1))
        print(f"{name}: measured ({res['tune_seconds']:.0f} s tune, {res['retrain_seconds']:.0f} s re-training)", file=sys.stderr)
    if args.only:
        return 0
    import torch
    import transformers

    results = [json.loads((OUT / f"{w}.json").read_text()) for w in WORKLOADS if (OUT / f"{w}.json").exists()]
    print(f"# bench_workloads: torch {torch.__version__}, transformers {transformers.__version__}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("\n".join(render(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
