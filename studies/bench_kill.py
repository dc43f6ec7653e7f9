"""Kill a three-worker study at random moments, resume it, and count what was lost, duplicated or left RUNNING.

Each round starts three ``planner tune`` processes on one study (a tiny local llama and a JSONL
file), waits for the round's first trial, and sends each worker a random signal (SIGINT, SIGTERM
or SIGKILL) at its own uniform moment in the next ``--max-delay`` seconds (a worker may still be
starting, in the budget gate, training, or writing to the storage). After the rounds a
final three-worker resume runs the study to its ``--n-trials``; then the storage is read:

- lost: counted trials short of ``--n-trials``, baselines that never finished, and interrupted
  trials whose point was never trained again (not counting retries still queued);
- duplicated: a point trained in two counted trials, and a trial trained by two processes
  (the worker's objective logs every trained trial with its pid);
- left RUNNING: trials still RUNNING after the final resume.

Also reported: worker exit codes other than 0/130/143/-2/-9/-15, tracebacks and "Exception
ignored" on stderr, and journal repairs (records cut by SIGKILL).

Second part (``--trace-interrupts N``): Ctrl-C at a random moment of the cost model's trace (the
budget gate's work on an empty cache), N times with Python's own handler and N times with
``planner tune``'s: how often the interrupt is swallowed ("Exception ignored in: <finalize
object>", the process goes on) and how long the process takes to end.

    nice -n 10 python studies/bench_kill.py | tee reports/bench_kill.txt
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
ROOT = Path(__file__).resolve().parent.parent
EXPECTED_EXITS = {0, 130, 143, -2, -9, -15}  # -2/-15: signalled before the handler was installed (imports)
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)


def write_workload(root: Path) -> tuple[str, str]:
    """A 3-layer random llama with the character tokenizer, and 80 instruction examples."""
    import torch

    from planner.data.tokenizer import CharTokenizer
    from planner.spec import build_model
    from planner.spec.tiny import tiny_spec

    torch.set_num_threads(1)
    tok = CharTokenizer()
    spec = tiny_spec("llama", num_layers=3, hidden=32, heads=2, kv_heads=1, vocab=tok.vocab_size)
    spec.config.bos_token_id, spec.config.eos_token_id, spec.config.pad_token_id = (
        tok.bos_token_id,
        tok.eos_token_id,
        tok.pad_token_id,
    )
    model_dir, data = root / "model", root / "train.jsonl"
    build_model(spec, seed=0).save_pretrained(model_dir)
    tok.to_hf().save_pretrained(model_dir)
    data.write_text(
        "\n".join(json.dumps({"instruction": f"double {i}", "response": str(2 * i)}) for i in range(80)) + "\n"
    )
    return str(model_dir), str(data)


def worker_main(log: str, argv: list[str]) -> int:
    """One ``planner tune`` process whose objective appends every trained trial to ``log``."""
    from planner.cli.main import main
    from planner.tune.storage.lifecycle import GuardedObjective

    call = GuardedObjective.__call__

    def logged(self, trial):
        value = call(self, trial)
        with open(log, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "trial": trial.number, "params": trial.params}) + "\n")
        return value

    GuardedObjective.__call__ = logged
    return main(argv)


def tune_argv(model, data, storage, study, n_trials, steps, out):
    return [
        "tune",
        "--vram",
        "1GB",
        "--model",
        model,
        "--data",
        data,
        "--n-trials",
        str(n_trials),
        "--steps",
        str(steps),
        "--eval-every",
        str(max(1, steps // 2)),
        "--storage",
        storage,
        "--study",
        study,
        "--device",
        "cpu",
        "--quiet",
        "--out",
        out,
        "--confirm-seeds",
        "0",
    ]  # confirmation re-trains points on purpose


def start(log, argv, errfile):
    return subprocess.Popen(
        [sys.executable, __file__, "--worker", log, "--", *argv],
        stdout=subprocess.DEVNULL,
        stderr=open(errfile, "w"),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def trial_count(storage, study) -> int:
    import optuna

    try:
        return len(optuna.load_study(storage=storage, study_name=study).get_trials(deepcopy=False))
    except KeyError:
        return 0


def run_round(rng, log, argv, errdir, r, max_delay, kill=True, storage=None, study=None):
    """Three workers; with ``kill``, each is signalled at a uniform moment in [0, max_delay] s after the round's first trial."""
    before = trial_count(storage, study) if kill else 0
    procs = [start(log, argv, errdir / f"r{r}-w{i}.err") for i in range(3)]
    while kill and trial_count(storage, study) == before and any(p.poll() is None for p in procs):
        time.sleep(0.5)  # start-up (imports, model load) varies with the machine's load: measure from the first trial
    t0 = time.monotonic()
    plan = sorted((rng.uniform(0.0, max_delay), i, rng.choice(SIGNALS)) for i in range(3)) if kill else []
    sent = {}
    for at, i, signum in plan:
        time.sleep(max(0.0, at - (time.monotonic() - t0)))
        if procs[i].poll() is None:
            procs[i].send_signal(signum)
            sent[i] = (round(at, 1), signal.Signals(signum).name)
    codes = [p.wait(timeout=900) for p in procs]
    return sent, codes


def examine(storage, study, n_trials, log, errdir, journal):
    import optuna
    from optuna.trial import TrialState

    from planner.tune.study import record
    from planner.tune.study.baselines import KINDS
    from planner.tune.study.record import WORKER_DIED, counted, interrupted
    from planner.tune.storage.backends import open_storage

    trials = optuna.load_study(storage=open_storage(storage), study_name=study).trials
    done = [t for t in trials if counted(t)]
    point = lambda t: json.dumps(t.params, sort_keys=True)  # noqa: E731
    root = lambda t: t.number if (first := record.read(t).retry_of) is None else first  # noqa: E731
    trained_roots = {root(t) for t in done}
    queued_roots = {root(t) for t in trials if t.state == TrialState.WAITING}
    cut = [t for t in trials if interrupted(t) and t.params]
    lost_points = [t.number for t in cut if root(t) not in trained_roots and root(t) not in queued_roots]
    missing_baselines = [k for k in KINDS if not any(record.kind_of(t) == k for t in done)]
    short = max(0, n_trials - len(done))
    points = Counter(point(t) for t in done if record.read(t).fits is not False)
    dup_points = sum(c - 1 for c in points.values() if c > 1)
    entries = [json.loads(line) for line in Path(log).read_text().splitlines() if line.strip()]
    by_trial = Counter(e["trial"] for e in entries)
    dup_trials = sum(1 for n, c in by_trial.items() if c > 1)
    by_point = Counter(json.dumps(e["params"], sort_keys=True) for e in entries)
    retrained = sum(c - 1 for c in by_point.values() if c > 1) - dup_points - dup_trials
    running = [t.number for t in trials if t.state == TrialState.RUNNING]
    errs = [p.read_text() for p in sorted(errdir.glob("*.err"))]
    torn = Path(storage + ".torn") if journal else None
    return {
        "trials stored": len(trials),
        "counted": len(done),
        "interrupted": sum(interrupted(t) for t in trials),
        "worker died": sum((record.read(t).reason or "").startswith(WORKER_DIED) for t in trials),
        "retries": sum("retry_of" in record.read(t).model_fields_set for t in trials),
        "queued retries left": len(queued_roots),
        "lost": short + len(missing_baselines) + len(lost_points),
        "lost detail": {
            "short of n_trials": short,
            "baselines missing": missing_baselines,
            "points never retrained": lost_points,
        },
        "duplicated": dup_points + dup_trials,
        "duplicated detail": {
            "points in two counted trials": dup_points,
            "trials trained by two processes": dup_trials,
        },
        "retrained after a kill (work redone)": max(0, retrained),
        "left RUNNING": len(running),
        "stderr tracebacks": sum(e.count("Traceback") for e in errs),
        "stderr 'Exception ignored'": sum(e.count("Exception ignored") for e in errs),
        "journal records cut and set aside": (torn.read_bytes().count(b"\n") if torn and torn.exists() else 0),
    }


def bench(kind: str, args, out) -> dict:
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-kill-{kind}-"))
    model, data = write_workload(tmp)
    storage = f"sqlite:///{tmp}/study.db" if kind == "sqlite" else str(tmp / "study.log")
    log, errdir = str(tmp / "trained.jsonl"), tmp / "stderr"
    errdir.mkdir()
    argv = tune_argv(model, data, storage, "kill", args.n_trials, args.steps, str(tmp / "plan.yaml"))
    signals, unexpected = Counter(), []
    t0 = time.time()
    from planner.tune.storage.backends import open_storage

    watch = open_storage(storage)
    for r in range(args.rounds):
        sent, codes = run_round(rng, log, argv, errdir, r, args.max_delay, storage=watch, study="kill")
        signals.update(s for _, s in sent.values())
        unexpected += [(r, i, c) for i, c in enumerate(codes) if c not in EXPECTED_EXITS]
        print(f"  {kind} round {r + 1:2d}: signals {sent} exits {codes}", file=out, flush=True)
    _, codes = run_round(rng, log, argv, errdir, args.rounds, args.max_delay, kill=False)
    unexpected += [(args.rounds, i, c) for i, c in enumerate(codes) if c not in EXPECTED_EXITS]
    print(f"  {kind} final resume (no signals): exits {codes}", file=out, flush=True)
    result = examine(storage, "kill", args.n_trials, log, errdir, kind == "journal")
    result["signals sent"] = dict(signals)
    result["unexpected exits (round, worker, code)"] = unexpected
    result["wall seconds"] = round(time.time() - t0)
    result["files"] = str(tmp)
    return result


TRACE_LOOP = """
import os, sys
os.environ["PLANNER_COST_CACHE"] = "0"
import torch
torch.set_num_threads(1)
from planner.config import TrainConfig
from planner.cost import estimate
from planner.spec.tiny import tiny_spec
spec = tiny_spec("llama", num_layers=4, hidden=256, heads=4, kv_heads=2, vocab=2000)
def go():
    for b in range(1, 10000):
        estimate(spec, TrainConfig(batch_size=b, seq_len=256, active_layers=2), device="cpu")
print("ready", flush=True)
if sys.argv[1] == "planner":
    from planner.tune.storage.signals import interrupts_as_keyboard_interrupt
    with interrupts_as_keyboard_interrupt():
        go()
else:
    go()
"""
HONOURED_WITHIN = 30.0  # seconds from SIGINT to exit beyond which the interrupt counts as swallowed


def trace_interrupts(n: int, seed: int, out) -> None:
    rng = random.Random(seed)
    for mode in ("python", "planner"):
        swallowed, seconds = 0, []
        for _ in range(n):
            p = subprocess.Popen(
                [sys.executable, "-c", TRACE_LOOP, mode],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            p.stdout.readline()
            time.sleep(rng.uniform(0.5, 3.0))
            t0 = time.monotonic()
            p.send_signal(signal.SIGINT)
            try:
                _, err = p.communicate(timeout=HONOURED_WITHIN)
                lost = "Exception ignored" in err
                seconds.append(time.monotonic() - t0)
            except subprocess.TimeoutExpired:
                p.kill()
                _, err = p.communicate()
                lost = True
            swallowed += lost
        ended = f"median {statistics.median(seconds):.1f} s, max {max(seconds):.1f} s" if seconds else "never"
        print(
            f"  {mode:7s} handler: {swallowed} of {n} interrupts swallowed (still running {HONOURED_WITHIN:g} s later); "
            f"the others ended the process in {ended}",
            file=out,
            flush=True,
        )


def main() -> None:
    if "--worker" in sys.argv:
        i = sys.argv.index("--worker")
        sys.exit(worker_main(sys.argv[i + 1], sys.argv[sys.argv.index("--") + 1 :]))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--storage", choices=("sqlite", "journal", "both"), default="both")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--n-trials", type=int, default=250)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--max-delay", type=float, default=20.0, help="latest kill moment after a round's first trial (s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--trace-interrupts", type=int, default=12, help="Ctrl-C during the cost trace, times per handler (0: skip)"
    )
    args = p.parse_args()
    out = sys.stdout
    if args.trace_interrupts:
        print(
            f"Ctrl-C at a uniform moment in [0.5, 3] s of the cost model's trace loop, {args.trace_interrupts} times "
            f"per handler:",
            file=out,
            flush=True,
        )
        trace_interrupts(args.trace_interrupts, args.seed, out)
    if not args.rounds:
        return
    print(
        f"bench_kill: {args.rounds} rounds x 3 workers, each signalled (SIGINT/SIGTERM/SIGKILL, uniform) at a uniform "
        f"moment in [0, {args.max_delay:g}] s after the round's first trial; then one resume of 3 workers to --n-trials {args.n_trials}; "
        f"proxy {args.steps} steps on a 3-layer llama; seed {args.seed}",
        file=out,
        flush=True,
    )
    kinds = ("sqlite", "journal") if args.storage == "both" else (args.storage,)
    results = {k: bench(k, args, out) for k in kinds}
    for kind, res in results.items():
        print(
            f"\n{kind}: lost {res['lost']}, duplicated {res['duplicated']}, left RUNNING {res['left RUNNING']} "
            f"(target 0, 0, 0)",
            file=out,
        )
        for key, value in res.items():
            print(f"  {key}: {value}", file=out)


if __name__ == "__main__":
    main()
