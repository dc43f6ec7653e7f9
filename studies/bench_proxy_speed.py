"""Where a default proxy run's CPU time goes: `planner tune --vram 24GB`'s trials, one at a time.

Builds the default workload (the built-in proxy on ``maximum``) and trains representative points
with :func:`planner.tune.proxy.train.run_proxy` exactly as a study does (150 steps at batch 32, an
evaluation every 50 steps, the accuracy decoded after the last one), with one PyTorch thread:

- ``lisa``: LISA's defaults, γ=2 K=20 uniform, embeddings and head trained (the baseline);
- ``g6``: a searched point, γ=6 K=20 uniform, embeddings and head trained;
- ``lora``: the LoRA baseline, rank 16 on every layer's linear modules, embeddings and head frozen.

Times are CPU seconds (``time.process_time``; the machine is shared, wall time is not a measure).
Each run's time is split by timers around what the run calls (exclusive: an evaluation inside the
loop is not counted as loop time): model build, sampler set-up (draws, freezing, optimizer groups),
sampler calls per step, data batching, training forward, backward, optimizer step and zero_grad,
held-out evaluation (eval loss), the accuracy's greedy decode; ``other`` is the rest of the run
(the loop's own Python). ``--profile`` adds cProfile's top functions by own time for each point
(cProfile slows Python-heavy code: its shares are relative, not the timers' figures).

``--compare`` also runs the named points as the workload first batched them (every training batch
collated from its examples at each step, the held-out split collated at each evaluation), alternating
with the current path, and says whether the two runs' metrics, evaluations and draws are bitwise equal.

It first times one LISA step's forward and backward at batch 1, 4 and 32: what does not grow with
the batch is eager PyTorch's per-operation cost, the rest is the model's arithmetic.

Run: ``nice python studies/bench_proxy_speed.py --compare lisa,g6 --profile lisa > reports/bench_proxy_speed.txt``
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from contextlib import contextmanager, nullcontext

import torch

import planner.data.workload as workload_mod
import planner.tune.proxy.train as proxy_mod
from planner.data.default import BATCH_SIZE, default_workload
from planner.data.workload import EVAL_BATCH, Workload
from planner.sampling import LayerSampler
from planner.tune.study.baselines import LORA_BASELINE_RANK, LORA_LR_FACTOR
from planner.tune.options import DEFAULT_EVALS
from planner.tune.search.space import DEFAULT_LR, TrialParams

STEPS, EVAL_EVERY = 150, 50  # a study's default (--steps 150, 3 evaluations; the built-in task's: --steps 50)
POINTS = {
    "lisa": TrialParams(
        active_layers=2, period=20, scorer="uniform", train_embeddings=True, train_head=True, lr=DEFAULT_LR
    ),
    "g6": TrialParams(
        active_layers=6, period=20, scorer="uniform", train_embeddings=True, train_head=True, lr=DEFAULT_LR
    ),
    "lora": TrialParams(
        active_layers=32,
        period=20,
        scorer="uniform",
        train_embeddings=False,
        train_head=False,
        lr=DEFAULT_LR * LORA_LR_FACTOR,
        lora_rank=LORA_BASELINE_RANK,
    ),
}
PHASES = (
    "model build",
    "sampler set-up",
    "sampler per step",
    "data batching",
    "forward (train)",
    "backward",
    "optimizer step+zero_grad",
    "evaluation: eval loss",
    "evaluation: greedy decode",
    "other",
)


class Timers:
    """Exclusive CPU-time accumulators: a phase started inside another is not counted in the outer one."""

    def __init__(self):
        self.total = dict.fromkeys(PHASES, 0.0)
        self.stack: list[list] = []  # [phase, started, time spent in inner phases]

    def start(self, phase: str) -> None:
        self.stack.append([phase, time.process_time(), 0.0])

    def stop(self) -> None:
        phase, started, inner = self.stack.pop()
        spent = time.process_time() - started
        self.total[phase] += spent - inner
        if self.stack:
            self.stack[-1][2] += spent

    @contextmanager
    def phase(self, name: str):
        self.start(name)
        try:
            yield
        finally:
            self.stop()

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            with self.phase(name):
                return fn(*args, **kwargs)

        return timed


@contextmanager
def instrumented(workload, timers: Timers):
    """Timers around what a run calls (restored afterwards)."""
    saved = []

    def patch(owner, attr, value):
        saved.append(
            (
                owner,
                attr,
                owner.__dict__.get(attr, _MISSING) if isinstance(owner, type) else getattr(owner, attr, _MISSING),
            )
        )
        setattr(owner, attr, value)

    build = proxy_mod._build

    def _build(*args, **kwargs):
        with timers.phase("model build"):
            model = build(*args, **kwargs)
        model.register_forward_pre_hook(lambda m, a: timers.start("forward (train)") if m.training else None)
        model.register_forward_hook(lambda m, a, o: timers.stop() if m.training else None)
        return model

    make_optimizer, init = LayerSampler.make_optimizer, LayerSampler.__init__

    def _make_optimizer(self, *args, **kwargs):
        with timers.phase("sampler set-up"):
            optimizer = make_optimizer(self, *args, **kwargs)
        optimizer.step = timers.wrap("optimizer step+zero_grad", optimizer.step)
        optimizer.zero_grad = timers.wrap("optimizer step+zero_grad", optimizer.zero_grad)
        return optimizer

    train_batches = workload.train_batches

    def _train_batches(*args, **kwargs):
        stream = train_batches(*args, **kwargs)
        while True:
            with timers.phase("data batching"):
                batch = next(stream)
            yield batch

    patch(proxy_mod, "_build", _build)
    patch(LayerSampler, "__init__", timers.wrap("sampler set-up", init))
    patch(LayerSampler, "make_optimizer", _make_optimizer)
    for name in ("begin_step", "after_backward", "end_step"):
        patch(LayerSampler, name, timers.wrap("sampler per step", getattr(LayerSampler, name)))
    patch(torch.Tensor, "backward", timers.wrap("backward", torch.Tensor.backward))
    patch(workload, "train_batches", _train_batches)
    patch(workload_mod, "collate", timers.wrap("data batching", workload_mod.collate))  # held-out batches too
    patch(workload_mod, "eval_loss", timers.wrap("evaluation: eval loss", workload_mod.eval_loss))
    patch(workload_mod, "greedy_answers", timers.wrap("evaluation: greedy decode", workload_mod.greedy_answers))
    try:
        yield
    finally:
        for owner, attr, value in reversed(saved):
            if value is _MISSING:
                delattr(owner, attr)
            else:
                setattr(owner, attr, value)


_MISSING = object()


@contextmanager
def collated_every_time():
    """The workload as first written: batches collated from their examples at every step and evaluation."""
    saved = Workload._train_table, Workload._eval_batches
    Workload._train_table = lambda self: None  # type: ignore[method-assign]
    Workload._eval_batches = (
        lambda self, examples: [  # type: ignore[method-assign]
            workload_mod.collate(examples[i : i + EVAL_BATCH], self.pad_id) for i in range(0, len(examples), EVAL_BATCH)
        ]
    )
    try:
        yield
    finally:
        Workload._train_table, Workload._eval_batches = saved  # type: ignore[method-assign]


def run(workload, params: TrialParams, seed: int, profile: bool = False, reference: bool = False):
    timers = Timers()
    profiler = cProfile.Profile() if profile else None
    with instrumented(workload, timers), collated_every_time() if reference else nullcontext():
        if profiler is not None:
            profiler.enable()
        timers.start("other")
        result = proxy_mod.run_proxy(
            workload, params, batch_size=BATCH_SIZE, steps=STEPS, eval_every=EVAL_EVERY, seed=seed
        )
        timers.stop()
        if profiler is not None:
            profiler.disable()
    return result, timers.total, profiler


def fixed_cost(workload, repeats: int = 5) -> None:
    """One LISA step's forward and backward at batch 1, 4 and 32 (best of ``repeats``): what does not grow
    with the batch is the per-operation cost of eager PyTorch (dispatch, autograd records), the rest is compute."""
    model = workload.new_model(0)
    sampler = LayerSampler(model, **{k: getattr(POINTS["lisa"], k) for k in ("active_layers", "period", "scorer")})
    optimizer = sampler.make_optimizer(torch.optim.AdamW, lr=DEFAULT_LR)
    batch = next(workload.train_batches(BATCH_SIZE, 0))
    print("one step of lisa, best of 5 (CPU ms): batch  forward  backward")
    for size in (1, 4, BATCH_SIZE):
        part = {k: v[:size] for k, v in batch.items()}
        best = [float("inf")] * 2
        for _ in range(repeats):
            t0 = time.process_time()
            loss = model(**part).loss
            t1 = time.process_time()
            loss.backward()
            t2 = time.process_time()
            optimizer.zero_grad(set_to_none=True)
            best = [min(best[0], t1 - t0), min(best[1], t2 - t1)]
        print(f"{'':44}{size:5d} {1000 * best[0]:8.1f} {1000 * best[1]:9.1f}")
    print()


def main() -> None:
    global STEPS, EVAL_EVERY  # the runs' shape, as the module's functions read it
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", default=",".join(POINTS), help=f"comma-separated, of {list(POINTS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--profile", default="", help="comma-separated points to cProfile as well (a separate run each)"
    )
    parser.add_argument("--compare", default="", help="comma-separated points to run as first batched as well")
    parser.add_argument("--top", type=int, default=25, help="cProfile functions shown per point")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"steps per run (default {STEPS})")
    parser.add_argument(
        "--eval-every", type=int, default=None, help="steps between evaluations (default steps/3, rounded up)"
    )
    args = parser.parse_args()
    STEPS, EVAL_EVERY = args.steps, args.eval_every or -(-args.steps // DEFAULT_EVALS)  # as planner tune does
    torch.set_num_threads(1)
    t0 = time.process_time()
    workload = default_workload(progress=False)
    print(f"torch {torch.__version__}, 1 thread; {workload}")
    print(f"workload built in {time.process_time() - t0:.2f} CPU s (once per study)")
    print(
        f"each run: {STEPS} steps at batch {BATCH_SIZE}, evaluations every {EVAL_EVERY} steps on "
        f"{len(workload.held_out)} held-out examples, then the accuracy's greedy decode\n"
    )
    fixed_cost(workload)
    names = [p.strip() for p in args.points.split(",") if p.strip()]
    rows = []
    for name in names:
        result, split, _ = run(workload, POINTS[name], args.seed)
        total = sum(split.values())
        rows.append((name, total))
        print(
            f"{name}: {total:.2f} CPU s per run, {1000 * total / STEPS:.1f} ms per step (all included); "
            f"metric {result.metric!r}, evaluations {[round(v, 6) for _, v in result.evaluations]}, "
            f"accuracy {result.secondary.get('accuracy')}"
        )
        for phase in PHASES:
            print(
                f"  {phase:<28} {split[phase]:7.2f} s  {100 * split[phase] / total:5.1f}%"
                + (
                    f"  {1000 * split[phase] / STEPS:6.1f} ms/step"
                    if phase not in ("model build", "sampler set-up")
                    else ""
                )
            )
        print()
    print("CPU s per run: " + ", ".join(f"{n} {t:.2f}" for n, t in rows))
    for name in [p.strip() for p in args.compare.split(",") if p.strip()]:
        times: dict[bool, float] = {}
        batching: dict[bool, float] = {}
        results = {}
        for reference in (True, False):  # before, then after: back to back under the same load
            results[reference], split, _ = run(workload, POINTS[name], args.seed, reference=reference)
            times[reference] = sum(split.values())
            batching[reference] = split["data batching"]
            print(
                f"{name} {'collated every time' if reference else 'collated once     '}: {times[reference]:.2f} CPU s per run, "
                f"of which data batching (every collation, held-out batches included) {batching[reference]:.2f} s"
            )
        a, b = results[True], results[False]
        same = (
            a.metric == b.metric
            and a.evaluations == b.evaluations
            and a.history == b.history
            and a.secondary == b.secondary
        )
        print(
            f"{name}: data batching {batching[True] - batching[False]:+.2f} CPU s saved per run (whole runs differ by "
            f"{times[True] - times[False]:+.2f} s: the shared machine's noise); metric, evaluations, draws and accuracy "
            f"{'bitwise equal' if same else 'DIFFER'} ({a.metric!r} / {b.metric!r})\n"
        )
    for name in [p.strip() for p in args.profile.split(",") if p.strip()]:
        _, _, profiler = run(workload, POINTS[name], args.seed, profile=True)
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(args.top)
        text = out.getvalue()
        print(f"\ncProfile, {name}, top {args.top} by own time:")
        print(text[text.index("   ncalls") :].rstrip() if "   ncalls" in text else text)


if __name__ == "__main__":
    main()
