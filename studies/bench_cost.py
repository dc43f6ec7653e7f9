"""Benchmark of the cost model: accuracy against real training steps, and the time of a 70B plan table.

    python studies/bench_cost.py | tee reports/bench_cost.txt

Accuracy: 4-layer models (hidden 128, vocab 512) predicted from traces of 2-3 layers composed to
4, against two real training steps on CPU (peak of live tensor bytes in the second one).
Speed: ~200 estimates for Llama-2-70B (full fine-tuning, LoRA ranks, γ=1..80 with embeddings+head
on/off, a min_depth sampler), device cuda, traced under FakeTensorMode.
"""

from __future__ import annotations

import itertools
import os
import statistics
import sys
import tempfile
import time

import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def accuracy() -> list[float]:
    from planner.config import TrainConfig
    from planner.cost import estimate, measure_training_peak
    from planner.cost.measure import make_batch
    from planner.spec import build_model
    from planner.spec.tiny import tiny_spec

    shapes = ((2, 64), (1, 128))
    grid = [dict(arch=a, dtype=d, layers=l, train_embeddings=eh, train_head=eh, batch_size=shapes[k % 2][0], seq_len=shapes[k % 2][1])
            for a, d, (k, l), eh in itertools.product(("llama", "qwen2", "gpt2", "mistral"), ("float32", "bfloat16"),
                                                      enumerate(("all", [0], [3], [1, 2])), (True, False))]
    grid += [
        dict(arch="gemma", dtype="float32", layers=[1, 2], train_embeddings=False, train_head=False, batch_size=2, seq_len=64),
        dict(arch="phi3", dtype="bfloat16", layers="all", batch_size=2, seq_len=64),
        dict(arch="llama", dtype="float32", layers=[1, 2], train_embeddings=False, amp="bf16", batch_size=2, seq_len=64),
        dict(arch="gpt2", dtype="float32", layers="all", amp="bf16", batch_size=1, seq_len=128),
        dict(arch="llama", dtype="float32", layers=[1, 2], train_embeddings=False, gradient_checkpointing=True, batch_size=2, seq_len=64),
        dict(arch="qwen2", dtype="bfloat16", layers=[0, 3], train_embeddings=False, train_head=False, lora_rank=8, batch_size=2, seq_len=64),
        dict(arch="gpt2", dtype="float32", layers=[1, 2], optimizer="sgd", batch_size=2, seq_len=64),
        dict(arch="qwen2", dtype="float32", layers=[2], train_embeddings=False, train_head=True, batch_size=2, seq_len=64),
        # short sequences: the optimizer step (single-tensor AdamW temporaries) is the peak
        dict(arch="llama", dtype="float32", layers="all", batch_size=1, seq_len=8),
        dict(arch="gpt2", dtype="bfloat16", layers="all", lora_rank=4, batch_size=1, seq_len=8),
        dict(arch="llama", dtype="float32", layers=[1, 2], train_embeddings=False, amp="bf16", batch_size=1, seq_len=8),
    ]
    print(f"{'arch':8s} {'dtype':9s} {'layers':7s} {'E+H':4s} {'extra':22s} {'b x s':7s} {'predicted':>11s} {'measured':>11s} {'error':>8s}  phase")
    errors = []
    for case in grid:
        kw = dict(case)
        arch = kw.pop("arch")
        spec = tiny_spec(arch, hidden=128, vocab=512)
        cfg = TrainConfig(**kw)
        est = estimate(spec, cfg, device="cpu")
        measured = measure_training_peak(build_model(spec, dtype=cfg.dtype), cfg, make_batch(spec.vocab_size, cfg.batch_size, cfg.seq_len))
        err = (est.peak_bytes - measured) / measured * 100
        errors.append(abs(err))
        extra = ",".join(f"{k}={v}" for k, v in kw.items() if k in ("amp", "gradient_checkpointing", "lora_rank", "optimizer")) or "-"
        eh = f"{int(cfg.train_embeddings)}{int(cfg.train_head)}"
        print(f"{arch:8s} {cfg.dtype:9s} {str(kw['layers']).replace(' ', ''):7s} {eh:4s} {extra:22s} {cfg.batch_size}x{cfg.seq_len:<5d} "
              f"{est.peak_bytes:11d} {measured:11d} {err:+7.3f}%  {est.phase}", flush=True)
    print(f"\ncases: {len(errors)}  max |error|: {max(errors):.4f}%  median |error|: {statistics.median(errors):.4f}%"
          f"  within 3%: {sum(e <= 3 for e in errors)}/{len(errors)}\n")
    return errors


def full_width() -> list[float]:
    """Composition at real width: Llama-2-7B shapes at 8 layers, predicted from traces of 2-3 layers,
    against real AdamW steps of the 8-layer model, both under FakeTensorMode (nothing allocated)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from planner.config import TrainConfig
    from planner.cost import estimate, measure_training_peak
    from planner.spec import build_model, load_spec
    from planner.units import GiB

    spec = load_spec("llama-2-7b").with_layers(8)
    print("Llama-2-7B shapes at 8 layers, bf16, batch 1 x seq 512 (FakeTensorMode, AdamW, CPU bytes)")
    errors = []
    for kw in (dict(layers="all"), dict(layers=[0], train_embeddings=False, train_head=False),
               dict(layers=[7], train_embeddings=False, train_head=False), dict(layers=[3, 4]),
               dict(layers=[3, 4], train_embeddings=False, train_head=False, gradient_checkpointing=True)):
        cfg = TrainConfig(batch_size=1, seq_len=512, dtype="bfloat16", **kw)
        est = estimate(spec, cfg, device="cpu")
        with FakeTensorMode():
            ids = torch.randint(0, spec.vocab_size, (1, 512))
            measured = measure_training_peak(build_model(spec, dtype="bfloat16"), cfg, {"input_ids": ids, "labels": ids.clone()})
        err = (est.peak_bytes - measured) / measured * 100
        errors.append(abs(err))
        print(f"  {str(kw):90s} predicted {est.peak_bytes / GiB:7.3f} GiB  measured {measured / GiB:7.3f} GiB  error {err:+.4f}%  ({est.phase})", flush=True)
    print()
    return errors


def plan_table_configs():
    from planner.config import TrainConfig

    base = dict(batch_size=1, seq_len=2048, dtype="bfloat16")
    cfgs = [TrainConfig(layers="all", train_embeddings=eh, train_head=eh, **base) for eh in (True, False)]
    cfgs += [TrainConfig(layers="all", lora_rank=r, train_embeddings=False, train_head=False, **base) for r in (8, 16, 32, 64)]
    cfgs += [TrainConfig(active_layers=g, train_embeddings=eh, train_head=eh, **base) for eh in (True, False) for g in range(1, 81)]
    cfgs += [TrainConfig(active_layers=g, min_depth=8, train_embeddings=False, train_head=False, **base) for g in range(1, 33)]
    return cfgs


def speed() -> None:
    from planner.cost import estimate, estimator
    from planner.spec import load_spec
    from planner.units import GiB

    spec = load_spec("llama-2-70b")
    cfgs = plan_table_configs()

    def run():
        t0 = time.perf_counter()
        out = [estimate(spec, c, device="cuda") for c in cfgs]
        return time.perf_counter() - t0, out

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PLANNER_COST_CACHE"] = tmp
        estimator._traces.clear()
        cold, out = run()
        n_traces = len(estimator._traces)
        warm, _ = run()
        estimator._traces.clear()  # a new process with the disk cache filled
        disk, _ = run()
    print(f"70B plan table (llama-2-70b, bf16, batch 1, seq 2048, cuda): {len(cfgs)} estimates")
    print(f"  cold (includes {n_traces} reduced-depth FakeTensor traces): {cold:.2f} s")
    print(f"  warm (traces cached in-process):                       {warm:.2f} s ({warm / len(cfgs) * 1000:.1f} ms per estimate)")
    print(f"  disk cache only (new process, traces on disk):         {disk:.2f} s")
    print("\n  sample of the table (GiB):")
    for c, e in list(zip(cfgs, out))[:6] + [(cfgs[i], out[i]) for i in (6, 7, 45, 85, 86, 125, 166)]:
        what = f"γ={c.active_layers}" + (f",min_depth={c.min_depth}" if c.min_depth else "") if c.active_layers else (f"LoRA r={c.lora_rank}" if c.lora_rank else "full FT")
        b = e.breakdown
        print(f"  {what:18s} E+H={int(c.train_embeddings)} peak {e.peak_bytes / GiB:8.2f}  weights {b.weights / GiB:7.2f} grads {b.gradients / GiB:7.2f} "
              f"optim {b.optimizer / GiB:7.2f} act {b.activations / GiB:6.2f} trans {b.transient / GiB:6.2f} overhead {b.overhead / GiB:5.2f}  at {e.phase}; layers {e.trainable_layers[:4]}{'...' if len(e.trainable_layers) > 4 else ''}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores\n")
    errors = accuracy()
    errors += full_width()
    speed()
    sys.exit(0 if max(errors) <= 3 and statistics.median(errors) <= 1 else 1)
