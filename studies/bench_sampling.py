"""Overhead of layer switching and scoring per training step, against static freezing.

A ~19M-parameter Llama-shaped model (hidden 384, 8 layers, vocab 8192) trains on CPU with
γ=2 active layers, embeddings and head trainable (LISA's default), one copy per configuration.
The configurations take turns step by step (round robin), so a shared machine's changing load
hits all of them alike. Every step is timed, and so is every call into the sampler (draws and
switches, gradient-norm reads, observations, calibration). Static freezing is the ``fixed``
scorer, which never switches.

- ``sampler ms/step``: time inside the sampler per step, amortized over the run;
- ``overhead``: that over the static median step (target: < 1% for the cheap scorers);
- ``vs static``: median step over the static median step. It also holds what the sampler
  does not do itself: the optimizer creating state for newly active layers;
- ``extra passes``: scorers that run forward passes of their own (IST rollouts, the one
  calibration pass of outlier/semantic) report that cost apart, amortized per step.

Run: ``python studies/bench_sampling.py | tee reports/bench_sampling.txt``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from planner.sampling import LayerSampler
from planner.spec import build_model
from planner.spec.tiny import tiny_spec

CONFIGS = [  # (label, scorer, options, period)
    ("static (fixed top-2)", "fixed", {}, 10**9),
    ("uniform K=1", "uniform", {}, 1),
    ("uniform K=20", "uniform", {}, 20),
    ("cyclic K=1", "cyclic", {}, 1),
    ("gradnorm K=1", "gradnorm", {}, 1),
    ("gradnorm K=20", "gradnorm", {}, 20),
    ("gradnorm K=20 every=5", "gradnorm", {"every": 5}, 20),
    ("outlier K=20", "outlier", {}, 20),
    ("ist K=1", "ist", {}, 1),
    ("semantic (static)", "semantic", {}, 20),
]
EXTRA_PASS_SCORERS = {"ist"}  # observe() runs rollouts: counted as extra passes, not overhead


class Run:
    """One configuration: its model, sampler, optimizer, batches and timers."""

    def __init__(self, label, scorer, options, period, *, batch_size, seq_len, seed=0):
        self.label, self.scorer_name = label, scorer
        spec = tiny_spec("llama", num_layers=8, hidden=384, heads=6, kv_heads=2, vocab=8192, intermediate=1024)
        self.model = build_model(spec, seed=seed)
        self.model.train()
        self.params = sum(p.numel() for p in self.model.parameters())
        self.sampler = LayerSampler(
            self.model, active_layers=2, period=period, scorer=scorer, scorer_options=options, seed=seed
        )
        self.optimizer = self.sampler.make_optimizer(torch.optim.AdamW, lr=1e-4)
        g = torch.Generator().manual_seed(seed)
        self.batches = []
        for _ in range(4):
            ids = torch.randint(0, spec.vocab_size, (batch_size, seq_len), generator=g)
            self.batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
        self.timers = {"draw": 0.0, "grads": 0.0, "observe": 0.0, "calibrate": 0.0}
        t = time.perf_counter()
        self.sampler.calibrate(self.batches[0])  # no-op for scorers that need no batch
        self.timers["calibrate"] = time.perf_counter() - t
        self.steps: list[float] = []

    def step(self, step: int) -> None:
        """One training step, as planner.sampling.train_layerwise runs it, with the sampler's calls timed."""
        s, opt = self.sampler, self.optimizer
        batch = self.batches[step % len(self.batches)]
        start = time.perf_counter()
        s.begin_step(step)
        t1 = time.perf_counter()
        loss = self.model(**batch).loss
        loss.backward()
        t2 = time.perf_counter()
        s.after_backward(step)
        t3 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        value = float(loss.detach())
        t4 = time.perf_counter()
        s.end_step(step, value, batch)
        end = time.perf_counter()
        self.timers["draw"] += t1 - start
        self.timers["grads"] += t3 - t2
        self.timers["observe"] += end - t4
        self.steps.append(end - start)

    def figures(self, steps: int) -> dict:
        extra = self.timers["calibrate"]
        cheap = self.timers["draw"] + self.timers["grads"]
        if self.scorer_name in EXTRA_PASS_SCORERS:
            extra += self.timers["observe"]
        else:
            cheap += self.timers["observe"]
        warm = self.steps[2:]  # the first steps create optimizer state and warm caches
        return {
            "label": self.label,
            "switches": self.sampler.switches,
            "median": statistics.median(warm),
            "sampler": cheap / steps,
            "extra": extra / steps,
        }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = [Run(*c, batch_size=args.batch_size, seq_len=args.seq_len) for c in CONFIGS]
    for step in range(args.steps):
        for k in range(len(runs)):  # rotate who goes first
            runs[(k + step) % len(runs)].step(step)
    rows = [r.figures(args.steps) for r in runs]
    static = rows[0]["median"]
    print(
        f"model: llama hidden=384 layers=8 vocab=8192, {runs[0].params / 1e6:.1f}M params; active_layers=2, "
        f"embeddings+head trainable; batch {args.batch_size}x{args.seq_len}; {args.steps} steps per config, "
        f"round robin; torch {torch.__version__}, {args.threads} thread(s), CPU"
    )
    print(f"static median step: {static * 1e3:.1f} ms")
    head = (
        f"{'config':<24} {'switches':>8} {'median ms':>9} {'vs static':>9} "
        f"{'sampler ms/step':>15} {'overhead':>9} {'extra passes ms/step':>20} {'extra %':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['label']:<24} {r['switches']:>8} {r['median'] * 1e3:>9.1f} {r['median'] / static - 1:>+9.1%} "
            f"{r['sampler'] * 1e3:>15.3f} {r['sampler'] / static:>9.3%} "
            f"{r['extra'] * 1e3:>20.2f} {r['extra'] / static:>8.2%}"
        )
    print(
        "overhead, extra % = over the static median step. extra passes: IST rollouts (3 forwards every 10 steps), "
        "or the one calibration forward of outlier/semantic, amortized over the run's steps"
    )


if __name__ == "__main__":
    main()
