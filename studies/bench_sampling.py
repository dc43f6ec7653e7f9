"""Overhead of layer switching and scoring per training step, against static freezing.

A ~20M-parameter Llama-shaped model (hidden 384, 8 layers, vocab 8192) trains on CPU with
γ=2 active layers, embeddings and head trainable (LISA's default). Every step is timed, and so
is every call into the sampler (draw and switch, gradient-norm reads, observations). Static
freezing is the fixed scorer with no switch at all.

- ``sampler ms/step``: time inside the sampler per step, switching included;
- ``overhead``: that over the median static step time (target < 1% for cheap scorers);
- ``step vs static``: median step time over the static one, which also shows the optimizer
  re-creating state for new layers (noisy on a shared machine);
- ``extra passes``: scorers that run extra forward passes (IST rollouts, calibration for
  semantic/outlier) report their cost amortized per step separately.

Run: ``python studies/bench_sampling.py | tee reports/bench_sampling.txt``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from planner.sampling import LayerSampler, train_layerwise
from planner.spec import build_model
from planner.spec.tiny import tiny_spec

CONFIGS = [  # (label, scorer, options, period)
    ("static (fixed top-2)", "fixed", {}, 10**9),
    ("uniform K=1", "uniform", {}, 1),
    ("uniform K=20", "uniform", {}, 20),
    ("cyclic K=1", "cyclic", {}, 1),
    ("gradnorm K=1", "gradnorm", {}, 1),
    ("gradnorm K=20", "gradnorm", {}, 20),
    ("outlier K=20", "outlier", {}, 20),
    ("ist K=1 (rollouts /10)", "ist", {}, 1),
    ("semantic (static)", "semantic", {}, 20),
]


class Timed:
    """Accumulates wall time of calls into the sampler's methods (per name)."""

    def __init__(self, sampler: LayerSampler):
        self.total: dict[str, float] = {}
        for name in ("begin_step", "after_backward", "end_step", "calibrate"):
            setattr(sampler, name, self._wrap(name, getattr(sampler, name)))

    def _wrap(self, name, fn):
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.total[name] = self.total.get(name, 0.0) + time.perf_counter() - t

        return timed


def run(label, scorer, options, period, *, steps, batch_size, seq_len, seed=0):
    spec = tiny_spec("llama", num_layers=8, hidden=384, heads=6, kv_heads=2, vocab=8192, intermediate=1024)
    model = build_model(spec, seed=seed)
    n_params = sum(p.numel() for p in model.parameters())
    sampler = LayerSampler(model, gamma=2, period=period, scorer=scorer, scorer_options=options, seed=seed)
    opt = sampler.make_optimizer(torch.optim.AdamW, lr=1e-4)
    timed = Timed(sampler)
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(4):
        ids = torch.randint(0, spec.vocab_size, (batch_size, seq_len), generator=g)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    stamps = [time.perf_counter()]

    def on_eval(step, _):
        stamps.append(time.perf_counter())

    t0 = time.perf_counter()
    train_layerwise(model, batches, sampler=sampler, optimizer=opt, steps=steps, eval_fn=lambda m: 0.0,
                    eval_every=1, on_eval=on_eval)
    wall = time.perf_counter() - t0
    steps_t = [b - a for a, b in zip(stamps[:-1], stamps[1:])]
    warm = steps_t[2:]  # the first steps create optimizer state and warm caches
    calib = timed.total.get("calibrate", 0.0)
    end = timed.total.get("end_step", 0.0)
    rollouts = getattr(sampler.scorer, "updates", 0)
    extra = calib + (end if scorer == "ist" else 0.0)  # forward passes of their own
    cheap = sum(timed.total.get(k, 0.0) for k in ("begin_step", "after_backward")) + (0.0 if scorer == "ist" else end)
    return {
        "label": label, "params": n_params, "switches": sampler.switches,
        "median_step": statistics.median(warm), "sampler_step": cheap / steps, "extra_step": extra / steps,
        "rollout_updates": rollouts, "wall": wall,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [run(*c, steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len) for c in CONFIGS]
    static = rows[0]["median_step"]
    print(f"model: llama hidden=384 layers=8 vocab=8192, {rows[0]['params'] / 1e6:.1f}M params; gamma=2, "
          f"embeddings+head trainable; batch {args.batch_size}x{args.seq_len}; {args.steps} steps; "
          f"torch {torch.__version__}, {args.threads} thread(s), CPU")
    print(f"static step (median): {static * 1e3:.1f} ms")
    head = f"{'config':<24} {'switches':>8} {'step ms':>8} {'vs static':>9} {'sampler ms/step':>15} {'overhead':>9} {'extra passes ms/step':>20} {'extra %':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['label']:<24} {r['switches']:>8} {r['median_step'] * 1e3:>8.1f} {r['median_step'] / static - 1:>+9.1%} "
              f"{r['sampler_step'] * 1e3:>15.3f} {r['sampler_step'] / static:>9.3%} "
              f"{r['extra_step'] * 1e3:>20.2f} {r['extra_step'] / static:>8.2%}")
    print("overhead = sampler ms/step / static step; extra passes = IST rollouts (3 forwards every 10 steps) "
          "or one calibration forward (outlier, semantic), amortized over the run")


if __name__ == "__main__":
    main()
