"""Does the tuned plan beat LISA's defaults, LoRA and full fine-tuning beyond the seed noise, on more than one workload?

For each workload: ``planner tune`` (``run_tune``, its defaults: 24 trials of 150 proxy steps, the
baselines' learning-rate sweeps, confirmation) plans Llama-3-8B in bfloat16 at ``--vram`` on the
built-in proxy; then the tuned plan, LISA's defaults and LoRA (each baseline at the best learning
rate of its sweep) and full fine-tuning (where it fits) are trained again with 5 fresh seeds
(``planner.tune.study.confirm.confirm_seed(BENCH_SEED, i)``, none of them the study's own) at the study's
proxy budget: mean ± std of the held-out metric (and of the other held-out metric, for reference),
the target's predicted peak, and the verdicts against LISA's defaults and LoRA (margin vs 2 standard
errors of the difference, and the margin in pooled seed standard deviations).

Workloads, three kinds of job:
- ``default``: the default built-in task (``maximum``: the largest of three numbers, a comparison);
- ``sort``: the built-in task ``builtin:sort`` (the digits of a 3..5-digit string in ascending
  order: a rearrangement whose answer is as long as its input);
- ``jsonl``: a user-style file written here (``--data tickets.jsonl``): support tickets as
  prompt/completion records, each routed to one of four teams (a text classification). Longer
  tickets (a fixed instruction line, greetings and sign-offs: ~120 characters) stayed at chance,
  0.23-0.29 accuracy over 4 teams, in the proxy budget of a user file (150 steps of batch 8).

Budget: 40GB by default. There LISA's defaults (32.40 GiB predicted) and LoRA (27.96 GiB) fit and full
fine-tuning (80.98 GiB) does not; the search can trade embeddings and head for active layers (up to γ=12
of 32 with checkpointing). At 24GB neither baseline fits, so there is nothing to compare against.

Everything a run produces is kept under ``--work-dir`` (the studies' SQLite storage, the JSONL file,
each re-training run as it finishes), so a run that stops resumes where it was; each finished
workload is written to reports/bench_workloads/<workload>-<vram>.json.

    nice -n 10 python studies/bench_workloads.py --only default     # one workload (resumable)
    nice -n 10 python studies/bench_workloads.py | tee reports/bench_workloads.txt   # all missing, then the table
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "reports" / "bench_workloads"
VRAM = "40GB"
SEEDS = 5
BENCH_SEED = 1  # re-training seeds: confirm_seed(1, i), distinct from the study's (--seed 0) confirmation seeds
WORKLOADS = ("default", "sort", "jsonl")
PLANS = ("tuned plan", "lisa", "lora", "full")

# ---- the user-style file: support tickets routed to a team ---------------------------------------
TICKET_PREFIX = "ticket: "
# {n}: an order number, {user}: a user name, {device}: a product and its model
TICKETS = {
    "billing": (
        "i was charged twice for order {n}",
        "the invoice for order {n} is wrong",
        "please refund my payment for order {n}",
        "my card was declined when i paid order {n}",
        "why did order {n} cost more than the shop said",
        "i need a receipt for order {n}",
    ),
    "shipping": (
        "order {n} has not arrived yet",
        "the box for order {n} came damaged",
        "tracking for order {n} shows no update",
        "order {n} went to the wrong address",
        "can i change the delivery date of order {n}",
        "the courier left order {n} outside",
    ),
    "account": (
        "i cannot log in as {user}",
        "please reset the password of {user}",
        "how do i change the email address of {user}",
        "delete the account {user} and its data",
        "the account {user} was locked after three tries",
        "{user} never got the sign up code",
    ),
    "product": (
        "my {device} stays black after the update",
        "the battery of my {device} drains in two hours",
        "the app crashes on my {device}",
        "the power button of my {device} is stuck",
        "my {device} makes a buzzing sound",
        "my {device} will not connect to wifi",
    ),
}
USERS = (
    "ann",
    "bob",
    "chen",
    "dara",
    "emil",
    "fatima",
    "greg",
    "hana",
    "ivan",
    "jo",
    "kofi",
    "lena",
    "mia",
    "noor",
    "omar",
    "priya",
)
DEVICES = ("phone", "tablet", "laptop", "watch", "speaker", "tv", "camera", "router")
N_TICKETS = 3000  # 10% held out by --data's split, capped at 256


def ticket_records(n: int = N_TICKETS, seed: int = 7) -> list[dict]:
    """``n`` distinct tickets as prompt/completion records, the teams in turn (balanced classes)."""
    rng = random.Random(seed)
    teams = sorted(TICKETS)
    seen, out = set(), []
    while len(out) < n:
        team = teams[len(out) % len(teams)]
        issue = rng.choice(TICKETS[team]).format(
            n=rng.randint(1000, 99999),
            user=f"{rng.choice(USERS)}{rng.randint(1, 99)}",
            device=f"{rng.choice(DEVICES)} {rng.choice('abcxyz')}{rng.randint(1, 20)}",
        )
        text = f"{TICKET_PREFIX}{issue}."
        if text not in seen:
            seen.add(text)
            out.append({"prompt": text, "completion": team})
    return out


def write_tickets(path: Path, n: int = N_TICKETS) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in ticket_records(n)))
    return str(path)


def load(name: str, work: Path):
    from planner.data import load_workload

    if name == "default":
        return load_workload(seed=0)
    if name == "sort":
        return load_workload(data="builtin:sort", seed=0)
    path = work / "tickets.jsonl"
    if not path.exists():
        write_tickets(path)
    return load_workload(data=str(path), seed=0)


# ---- both held-out metrics of every re-training run ---------------------------------------------


def with_eval_loss(wl) -> None:
    """A workload scored by accuracy also reports its held-out eval loss as the secondary figure of each
    proxy run (a workload scored by eval loss reports its accuracy there itself: ``Workload.secondary``)."""
    import torch

    from planner.data.workload import eval_loss

    if wl.metric_name != "accuracy":
        return

    def secondary(model) -> dict:
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                return {"eval_loss": float(eval_loss(model, wl.held_out, wl.pad_id))}
        finally:
            model.train(was)

    wl.secondary = secondary


def retrain(wl, trial, space, batch: int, steps: int, seed: int) -> dict:
    from planner.tune.proxy.mapping import proxy_params
    from planner.tune.proxy.train import run_proxy

    small = proxy_params(
        space.from_params(trial.params), target_layers=space.num_layers, proxy_layers=wl.spec.num_layers
    )
    cpu = time.process_time()
    res = run_proxy(wl, small, batch_size=batch, steps=steps, eval_every=steps, seed=seed)
    return {
        "seed": seed,
        "metric": res.metric,
        "metrics": {wl.metric_name: res.metric, **res.secondary},
        "cpu_seconds": time.process_time() - cpu,
        "proxy_plan": {"active_layers": small.active_layers, "min_depth": small.min_depth},
    }


def run_one(name: str, vram: str, n_trials: int, steps: int, work: Path) -> dict:
    import optuna
    import torch

    from planner.tune import TuneOptions, run_tune
    from planner.tune.study import record
    from planner.tune.study.baselines import KINDS, best_of_kind
    from planner.tune.study.confirm import confirm_seed
    from planner.tune.storage.backends import open_storage
    from planner.tune.run import default_batch_size
    from planner.tune.target_space import build_space

    torch.set_num_threads(1)
    work.mkdir(parents=True, exist_ok=True)
    wl = load(name, work)
    study_name = f"{name}-{vram}"
    storage = f"sqlite:///{work}/studies.db"
    options = TuneOptions(
        vram=vram,
        model="llama-3-8b",
        n_trials=n_trials,
        steps=steps,
        storage=storage,
        study=study_name,
        out=str(work / f"{study_name}.yaml"),
        proxy_device="cpu",
        seed=0,
    )
    wall, cpu = time.perf_counter(), time.process_time()
    result = run_tune(options, workload=wl, progress=False)  # resumes the study when it is already there
    tune = {"wall_seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu}
    target, _ = options.validate_all()
    space = build_space(target, options)
    trials = optuna.load_study(study_name=study_name, storage=open_storage(storage)).get_trials(deepcopy=False)
    batch = getattr(wl, "batch_size", None) or default_batch_size(int(wl.seq_len))
    seeds = [confirm_seed(BENCH_SEED, i) for i in range(SEEDS)]
    plans = [("tuned plan", next(t for t in trials if t.number == result.best_trial_number))]
    plans += [(k.name, best_of_kind(trials, k, wl.direction)) for k in KINDS]
    done_path = work / f"{study_name}-retrain.json"  # each finished run, so a restart skips it
    done = json.loads(done_path.read_text()) if done_path.exists() else {}
    with_eval_loss(wl)
    rows = []
    wall = time.perf_counter()
    for label, t in plans:
        if t is None:
            continue
        a = record.read(t)
        row = {
            "plan": label,
            "trial": t.number,
            "params": dict(t.params),
            "peak": a.predicted_peak_bytes,
            "fits": a.fits,
            "kind": str(a.kind),
            "study_metric": a.metric,
        }
        if row["fits"]:
            runs = []
            for s in seeds:
                key = f"{t.number}/{s}"
                if key not in done:
                    done[key] = retrain(wl, t, space, batch, steps, s)
                    done_path.write_text(json.dumps(done, indent=1))
                    print(f"{study_name}: {label} seed {s}: {done[key]['metric']:.4f}", file=sys.stderr, flush=True)
                runs.append(done[key])
            row["runs"] = runs
            row["metrics"] = [r["metric"] for r in runs]
        rows.append(row)
    conf = result.plan.confirmation
    return {
        "workload": name,
        "vram": vram,
        "workload_repr": repr(wl),
        "metric": wl.metric_name,
        "direction": wl.direction,
        "n_trials": n_trials,
        "steps": steps,
        "proxy_layers": wl.spec.num_layers,
        "batch_size": batch,
        "tune": tune,
        "retrain_wall_seconds": time.perf_counter() - wall,
        "seeds": seeds,
        "rows": rows,
        "counts": result.counts,
        "confirmation": None if conf is None else conf.model_dump(mode="json"),
        "example": {"prompt": wl._decode(list(wl.held_out[0].prompt)), "answer": wl.held_out[0].target},
        "load_average": os.getloadavg(),
    }


# ---- the table ------------------------------------------------------------------------------------


def stats(values):
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def compare(x: list[float], y: list[float], sign: float) -> dict:
    """Margin of ``x`` over ``y`` (better > 0), 2 standard errors of the difference, and the margin in pooled seed stds."""
    (mx, sx), (my, sy) = stats(x), stats(y)
    diff = sign * (mx - my)
    se2 = 2 * math.sqrt(sx**2 / len(x) + sy**2 / len(y))
    pooled = math.sqrt((sx**2 + sy**2) / 2)
    word = "beyond noise" if diff > se2 else ("WORSE beyond noise" if diff < -se2 else "within noise")
    return {
        "margin": diff,
        "se2": se2,
        "sd": diff / pooled if pooled else (0.0 if diff == 0 else math.copysign(math.inf, diff)),
        "pooled": pooled,
        "verdict": word,
    }


def describe(p: dict) -> str:
    lora = f" LoRA r{p['lora_rank']}" if p.get("lora_rank") else ""
    depth = f" from layer {p['min_depth']}" if p.get("min_depth") else ""
    ckpt = " ckpt" if p.get("gradient_checkpointing") else ""
    return (
        f"γ={p['active_layers']}{depth} K={p['period']} {p['scorer']} E{'+' if p['train_embeddings'] else '-'}"
        f"H{'+' if p['train_head'] else '-'}{lora}{ckpt}"
    )


def render(results: list[dict]) -> tuple[list[str], dict]:
    from planner.units import human_bytes

    r0 = results[0]
    out = [
        f"target Llama-3-8B bfloat16 (32 layers), budget {r0['vram']}; built-in {r0.get('proxy_layers', 8)}-layer proxy; `planner tune` with "
        f"--n-trials {r0['n_trials']} --steps {r0['steps']}, its baselines' learning-rate sweeps and its confirmation; "
        f"then {SEEDS} fresh seeds per plan at the same proxy budget",
        "verdicts: margin > 2 standard errors of the difference = beyond the seed noise; "
        "'sd' = margin / pooled seed std sqrt((s_a² + s_b²)/2)",
        "",
    ]
    worse, wins = [], []
    for r in results:
        sign = 1.0 if r["direction"] == "maximize" else -1.0
        other = "eval_loss" if r["metric"] != "eval_loss" else "accuracy"
        c, t = r["counts"], r["tune"]
        out.append(f"== {r['workload']}: {r['workload_repr']}")
        out.append(
            f"   example: {r['example']['prompt']!r} -> {r['example']['answer']!r}; proxy batch {r['batch_size']}"
        )
        out.append(
            f"   tune {t['wall_seconds']:.0f} s wall, {t['cpu_seconds']:.0f} s CPU ({c.get('complete', 0)} trained, "
            f"{c.get('gated', 0)} gated, {c.get('pruned', 0) - c.get('gated', 0)} pruned, {c.get('confirmation', 0)} "
            f"confirmation runs); re-training {r['retrain_wall_seconds']:.0f} s wall"
        )
        by = {x["plan"]: x for x in r["rows"]}
        refs = {k: by[k] for k in ("lisa", "lora") if k in by and by[k].get("metrics")}
        out.append(
            f"   {'plan':<10} {r['metric']:>9} {'± std':>7}  {other:>9} {'± std':>6}  {'peak':>10} {'lr':>7}  per-seed {r['metric']}"
        )
        for x in r["rows"]:
            p = x["params"]
            if not x.get("metrics"):
                out.append(
                    f"   {x['plan']:<10} {'does not fit':>17}  {'':>16}  {human_bytes(x['peak']):>10}  ({describe(p)}): never trained"
                )
                continue
            mean, std = stats(x["metrics"])
            o = [run["metrics"].get(other) for run in x["runs"]]
            om, osd = stats(o) if all(v is not None for v in o) else (math.nan, math.nan)
            out.append(
                f"   {x['plan']:<10} {mean:9.4f} {std:7.4f}  {om:9.4f} {osd:6.4f}  {human_bytes(x['peak']):>10} {p['lr']:7.2g}  "
                + " ".join(f"{m:.3f}" for m in x["metrics"])
            )
            proxy = x["runs"][0]["proxy_plan"]
            same = (
                f": the {x['kind'].split(':', 1)[1]} baseline itself"
                if x["plan"] == "tuned plan" and str(x["kind"]).startswith("baseline:")
                else ""
            )
            out.append(
                f"   {'':<10} {describe(p)} (proxy γ={proxy['active_layers']}{' from layer ' + str(proxy['min_depth']) if proxy['min_depth'] else ''} of {r.get('proxy_layers', 8)}), trial {x['trial']}{same}"
            )
            for ref, y in refs.items():
                if y is x:
                    continue
                v = compare(x["metrics"], y["metrics"], sign)
                mem = "lower or equal" if x["peak"] <= y["peak"] else "higher"
                out.append(
                    f"   {'':<10} vs {ref}: {v['margin']:+.4f} (2SE {v['se2']:.4f}, {v['sd']:+.1f} sd): {v['verdict']}; "
                    f"{mem} predicted peak"
                )
                if x["plan"] == "tuned plan" and ref == "lisa":
                    if v["verdict"].startswith("WORSE"):
                        worse.append(r["workload"])
                    if v["margin"] > 2 * v["pooled"] and v["verdict"] == "beyond noise":
                        wins.append(r["workload"])
        if r.get("confirmation"):
            out.append(
                "   the study's own confirmation: "
                + "; ".join(
                    f"{c['name']} {c['mean']:.4f} ± {c['std']:.4f}"
                    for c in r["confirmation"]["candidates"]
                    if c["mean"] is not None
                )
            )
            for m in r["confirmation"]["margins"]:
                if m["margin"] is not None:
                    out.append(
                        f"     vs {m['baseline']}: {m['versus']} {m['margin']:+.4f} (2SE {m['noise']:.4f}): {m['verdict']}"
                    )
        out.append("")
    out.append(
        f"target 1, the tuned plan never worse than LISA's defaults beyond the noise: "
        f"{'met' if not worse else 'NOT met (' + ', '.join(worse) + ')'}"
    )
    out.append(
        f"target 2, better than LISA's defaults by more than two seed standard deviations on at least one workload: "
        f"{'met (' + ', '.join(wins) + ')' if wins else 'NOT met'}"
    )
    return out, {"worse": worse, "wins": wins}


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=WORKLOADS, help="measure one workload (results under reports/bench_workloads/)")
    ap.add_argument("--vram", default=VRAM, help=f"the budget (default {VRAM})")
    ap.add_argument("--n-trials", type=int, default=None, help="planner tune's --n-trials (default: its own)")
    ap.add_argument("--steps", type=int, default=None, help="proxy steps per run (default: planner tune's)")
    ap.add_argument(
        "--work-dir", default="/tmp/bench-workloads", help="studies, the JSONL file and finished runs (resumable)"
    )
    ap.add_argument(
        "--results-dir", default=str(OUT), help="where each workload's JSON goes (default reports/bench_workloads)"
    )
    ap.add_argument("--table-only", action="store_true", help="print the table from the results there are")
    args = ap.parse_args(argv)
    from planner.tune.options import DEFAULT_N_TRIALS, DEFAULT_STEPS

    n_trials, steps = args.n_trials or DEFAULT_N_TRIALS, args.steps or DEFAULT_STEPS
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    result_path = lambda w: results_dir / f"{w}-{args.vram}.json"  # noqa: E731
    names = (
        [] if args.table_only else [args.only] if args.only else [w for w in WORKLOADS if not result_path(w).exists()]
    )
    for name in names:
        res = run_one(name, args.vram, n_trials, steps, Path(args.work_dir))
        result_path(name).write_text(json.dumps(res, indent=1))
        print(
            f"{name}: measured ({res['tune']['wall_seconds']:.0f} s tune, {res['retrain_wall_seconds']:.0f} s re-training)",
            file=sys.stderr,
        )
    if args.only:
        return 0
    import torch
    import transformers

    results = [json.loads(result_path(w).read_text()) for w in WORKLOADS if result_path(w).exists()]
    if not results:
        print("no results yet", file=sys.stderr)
        return 1
    print(
        f"# bench_workloads: torch {torch.__version__}, transformers {transformers.__version__}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} now; at the end of each workload: "
        + ", ".join(f"{r['workload']} {r['load_average'][0]:.1f}" for r in results)
    )
    lines, _ = render(results)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
