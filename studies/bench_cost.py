"""Benchmark of the cost model: accuracy against real training steps, and the time of a 70B plan table.

    python studies/bench_cost.py | tee reports/bench_cost.txt
    python studies/bench_cost.py --gpu | tee reports/bench_cost_gpu.txt

``--gpu``: predictions of ``estimate(..., device="cuda")`` against every GPU-measured configuration in
tests/fixtures/gpu-truth (allocated, reserved and device peak), and the 70B plan table timed with
this checkout and with the commit before the allocator model (``--before REV``, default 077742f).

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
    grid = [
        dict(
            arch=a,
            dtype=d,
            layers=lay,
            train_embeddings=eh,
            train_head=eh,
            batch_size=shapes[k % 2][0],
            seq_len=shapes[k % 2][1],
        )
        for a, d, (k, lay), eh in itertools.product(
            ("llama", "qwen2", "gpt2", "mistral"),
            ("float32", "bfloat16"),
            enumerate(("all", [0], [3], [1, 2])),
            (True, False),
        )
    ]
    grid += [
        dict(
            arch="gemma",
            dtype="float32",
            layers=[1, 2],
            train_embeddings=False,
            train_head=False,
            batch_size=2,
            seq_len=64,
        ),
        dict(arch="phi3", dtype="bfloat16", layers="all", batch_size=2, seq_len=64),
        dict(
            arch="llama", dtype="float32", layers=[1, 2], train_embeddings=False, amp="bf16", batch_size=2, seq_len=64
        ),
        dict(arch="gpt2", dtype="float32", layers="all", amp="bf16", batch_size=1, seq_len=128),
        dict(
            arch="llama",
            dtype="float32",
            layers=[1, 2],
            train_embeddings=False,
            gradient_checkpointing=True,
            batch_size=2,
            seq_len=64,
        ),
        dict(
            arch="qwen2",
            dtype="bfloat16",
            layers=[0, 3],
            train_embeddings=False,
            train_head=False,
            lora_rank=8,
            batch_size=2,
            seq_len=64,
        ),
        dict(arch="gpt2", dtype="float32", layers=[1, 2], optimizer="sgd", batch_size=2, seq_len=64),
        dict(
            arch="qwen2", dtype="float32", layers=[2], train_embeddings=False, train_head=True, batch_size=2, seq_len=64
        ),
        # short sequences: the optimizer step (single-tensor AdamW temporaries) is the peak
        dict(arch="llama", dtype="float32", layers="all", batch_size=1, seq_len=8),
        dict(arch="gpt2", dtype="bfloat16", layers="all", lora_rank=4, batch_size=1, seq_len=8),
        dict(arch="llama", dtype="float32", layers=[1, 2], train_embeddings=False, amp="bf16", batch_size=1, seq_len=8),
    ]
    print(
        f"{'arch':8s} {'dtype':9s} {'layers':7s} {'E+H':4s} {'extra':22s} {'b x s':7s} {'predicted':>11s} {'measured':>11s} {'error':>8s}  phase"
    )
    errors = []
    for case in grid:
        kw = dict(case)
        arch = kw.pop("arch")
        spec = tiny_spec(arch, hidden=128, vocab=512)
        cfg = TrainConfig(**kw)
        est = estimate(spec, cfg, device="cpu")
        measured = measure_training_peak(
            build_model(spec, dtype=cfg.dtype), cfg, make_batch(spec.vocab_size, cfg.batch_size, cfg.seq_len)
        )
        err = (est.peak_bytes - measured) / measured * 100
        errors.append(abs(err))
        extra = (
            ",".join(
                f"{k}={v}" for k, v in kw.items() if k in ("amp", "gradient_checkpointing", "lora_rank", "optimizer")
            )
            or "-"
        )
        eh = f"{int(cfg.train_embeddings)}{int(cfg.train_head)}"
        print(
            f"{arch:8s} {cfg.dtype:9s} {str(kw['layers']).replace(' ', ''):7s} {eh:4s} {extra:22s} {cfg.batch_size}x{cfg.seq_len:<5d} "
            f"{est.peak_bytes:11d} {measured:11d} {err:+7.3f}%  {est.phase}",
            flush=True,
        )
    print(
        f"\ncases: {len(errors)}  max |error|: {max(errors):.4f}%  median |error|: {statistics.median(errors):.4f}%"
        f"  within 3%: {sum(e <= 3 for e in errors)}/{len(errors)}\n"
    )
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
    for kw in (
        dict(layers="all"),
        dict(layers=[0], train_embeddings=False, train_head=False),
        dict(layers=[7], train_embeddings=False, train_head=False),
        dict(layers=[3, 4]),
        dict(layers=[3, 4], train_embeddings=False, train_head=False, gradient_checkpointing=True),
    ):
        cfg = TrainConfig(batch_size=1, seq_len=512, dtype="bfloat16", **kw)
        est = estimate(spec, cfg, device="cpu")
        with FakeTensorMode():
            ids = torch.randint(0, spec.vocab_size, (1, 512))
            measured = measure_training_peak(
                build_model(spec, dtype="bfloat16"), cfg, {"input_ids": ids, "labels": ids.clone()}
            )
        err = (est.peak_bytes - measured) / measured * 100
        errors.append(abs(err))
        print(
            f"  {str(kw):90s} predicted {est.peak_bytes / GiB:7.3f} GiB  measured {measured / GiB:7.3f} GiB  error {err:+.4f}%  ({est.phase})",
            flush=True,
        )
    print()
    return errors


def plan_table_configs():
    from planner.config import TrainConfig

    base = dict(batch_size=1, seq_len=2048, dtype="bfloat16")
    cfgs = [TrainConfig(layers="all", train_embeddings=eh, train_head=eh, **base) for eh in (True, False)]
    cfgs += [
        TrainConfig(layers="all", lora_rank=r, train_embeddings=False, train_head=False, **base)
        for r in (8, 16, 32, 64)
    ]
    cfgs += [
        TrainConfig(active_layers=g, train_embeddings=eh, train_head=eh, **base)
        for eh in (True, False)
        for g in range(1, 81)
    ]
    cfgs += [
        TrainConfig(active_layers=g, min_depth=8, train_embeddings=False, train_head=False, **base)
        for g in range(1, 33)
    ]
    return cfgs


def speed() -> None:
    from planner.cost import estimate, family
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
        family._traces.clear()
        cold, out = run()
        n_traces = len(family._traces)
        warm, _ = run()
        family._traces.clear()  # a new process with the disk cache filled
        disk, _ = run()
    print(f"70B plan table (llama-2-70b, bf16, batch 1, seq 2048, cuda): {len(cfgs)} estimates")
    print(f"  cold (includes {n_traces} reduced-depth FakeTensor traces): {cold:.2f} s")
    print(
        f"  warm (traces cached in-process):                       {warm:.2f} s ({warm / len(cfgs) * 1000:.1f} ms per estimate)"
    )
    print(f"  disk cache only (new process, traces on disk):         {disk:.2f} s")
    print("\n  sample of the table (GiB):")
    for c, e in list(zip(cfgs, out))[:6] + [(cfgs[i], out[i]) for i in (6, 7, 45, 85, 86, 125, 166)]:
        what = (
            f"γ={c.active_layers}" + (f",min_depth={c.min_depth}" if c.min_depth else "")
            if c.active_layers
            else (f"LoRA r={c.lora_rank}" if c.lora_rank else "full FT")
        )
        b = e.breakdown
        print(
            f"  {what:18s} E+H={int(c.train_embeddings)} peak {e.peak_bytes / GiB:8.2f}  weights {b.weights / GiB:7.2f} grads {b.gradients / GiB:7.2f} "
            f"optim {b.optimizer / GiB:7.2f} act {b.activations / GiB:6.2f} trans {b.transient / GiB:6.2f} overhead {b.overhead / GiB:5.2f}  at {e.phase}; layers {e.trainable_layers[:4]}{'...' if len(e.trainable_layers) > 4 else ''}"
        )


def gpu_fixture() -> None:
    """Predicted vs measured per fixture line (an H200, torch 2.11): allocated, reserved, device peak."""
    import json
    from pathlib import Path

    from planner.config import TrainConfig
    from planner.cost import estimate
    from planner.cost.device import default_profile
    from planner.spec.model import ModelSpec, _config_from_dict

    root = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "gpu-truth"
    context = default_profile("cuda").context_bytes
    print(
        f"GPU fixtures ({root.relative_to(root.parents[2])}): predicted (estimate --device cuda, built_on_device=True as the fixtures were built, default profile: "
        f"context {context:,} B) vs measured; error = predicted / measured - 1"
    )
    print(
        f"{'configuration':36s} {'allocated':>15s} {'err':>8s} {'reserved':>15s} {'err':>8s} {'device peak':>15s} {'err':>8s}"
    )
    for name in ("h200.jsonl", "h200-more.jsonl"):
        errs = {"allocated": [], "reserved": [], "peak": []}
        for text in (root / name).read_text().splitlines():
            line = json.loads(text)
            spec = ModelSpec(line["preset"], _config_from_dict(line["config"]))
            cfg = TrainConfig(
                batch_size=line["batch_size"],
                seq_len=line["seq_len"],
                dtype=line["dtype"],
                amp=line["amp"] or "none",
                layers=line["trainable_layers"],
                train_embeddings=line["train_embeddings"],
                train_head=line["train_head"],
                lora_rank=line["lora_rank"],
                gradient_checkpointing=line["gradient_checkpointing"],
            )
            est = estimate(spec, cfg, device="cuda", built_on_device=True)  # as the fixtures were built
            m = line["measured"]
            peak_measured = m["max_reserved"] + m["context_est"]
            row = {
                "allocated": (est.allocated_bytes, m["max_allocated"]),
                "reserved": (est.reserved_bytes, m["max_reserved"]),
                "peak": (est.peak_bytes, peak_measured),
            }
            cells = []
            for key, (p, t) in row.items():
                errs[key].append(p / t - 1)
                cells.append(f"{p:>15,} {100 * (p / t - 1):+7.3f}%")
            print(f"{line['name']:36s} " + " ".join(cells), flush=True)
        for key, e in errs.items():
            print(
                f"  {name} {key:9s}: median |error| {100 * statistics.median(abs(x) for x in e):.3f}%, "
                f"max |error| {100 * max(abs(x) for x in e):.3f}%, under-predicted {sum(x < 0 for x in e)}/{len(e)} "
                f"(by more than 1%: {sum(x < -0.01 for x in e)})"
            )
    print("  device peak measured = max_memory_reserved + context (total - free - memory_reserved after the step)\n")


TABLE_SCRIPT = """
import os, sys, time, tempfile, torch
torch.set_num_threads(1)
os.environ["PLANNER_COST_CACHE"] = tempfile.mkdtemp()
from planner.config import TrainConfig
from planner.cost.plans import candidate_plans
from planner.cost.device import default_profile
from planner.spec import load_spec
spec, cfg = load_spec("llama-2-70b"), TrainConfig(dtype="bfloat16", seq_len=2048)
times = []
for _ in range(2):
    t0, c0 = time.perf_counter(), time.process_time()
    plans = candidate_plans(spec, cfg, "cuda", default_profile("cuda"))
    times.append((time.perf_counter() - t0, time.process_time() - c0))
try:  # the in-process trace cache: planner.cost.family's, or before it planner.cost.estimator's
    from planner.cost import family as traces_home
except ImportError:
    from planner.cost import estimator as traces_home
traces_home._traces.clear()
try:
    from planner.cost import replay
    replay._memo.clear()
except ImportError:
    pass
t0, c0 = time.perf_counter(), time.process_time()
candidate_plans(spec, cfg, "cuda", default_profile("cuda"))
times.append((time.perf_counter() - t0, time.process_time() - c0))
try:  # traces in memory, replays not cached anywhere: what the allocator replays cost
    replay._memo.clear()
    os.environ["PLANNER_COST_CACHE"] = "0"
    t0, c0 = time.perf_counter(), time.process_time()
    candidate_plans(spec, cfg, "cuda", default_profile("cuda"))
    times.append((time.perf_counter() - t0, time.process_time() - c0))
except NameError:
    times.append((float("nan"), float("nan")))
print(len(plans), *(f"{w:.2f} {c:.2f}" for w, c in times))
"""


def table_before_after(before: str) -> None:
    """The 70B plan table (164 plans) in fresh processes: this checkout and ``before``."""
    import subprocess
    import tempfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    old = Path(tempfile.mkdtemp(prefix="planner-before-"))
    subprocess.run(f"git -C {root} archive {before} planner | tar -x -C {old}", shell=True, check=True)
    print(
        f"70B plan table (llama-2-70b, bf16, seq 2048, cuda): wall / CPU seconds; load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores"
    )
    print(f"{'code':28s} {'plans':>5s} {'cold':>16s} {'warm':>14s} {'disk cache only':>16s} {'replays only':>16s}")
    for label, path in ((f"before ({before})", old), ("after (this checkout)", root)):
        env = {**os.environ, "PYTHONPATH": str(path), "TRANSFORMERS_VERBOSITY": "error"}
        # run from the tree itself: `python -c` puts the working directory first on sys.path
        out = subprocess.run(
            [sys.executable, "-c", TABLE_SCRIPT], capture_output=True, text=True, env=env, cwd=path
        ).stdout.split()
        n, cold, cold_c, warm, warm_c, disk, disk_c, rep, rep_c = out[-9:]
        print(
            f"{label:28s} {n:>5s} {cold:>8s} / {cold_c:<6s} {warm:>6s} / {warm_c:<6s} {disk:>7s} / {disk_c:<6s} "
            f"{rep:>7s} / {rep_c:<6s}",
            flush=True,
        )
    print(
        "  cold: empty caches (FakeTensor traces and allocator replays run); warm: the same process again (both "
        "cached in-process); disk cache only: in-process caches cleared, traces and replays read from disk; "
        "replays only: traces in memory, every allocator replay run (nan before: there was none)\n"
    )


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores\n")
    if "--gpu" in sys.argv:
        before = sys.argv[sys.argv.index("--before") + 1] if "--before" in sys.argv else "077742f"
        gpu_fixture()
        table_before_after(before)
        sys.exit(0)
    errors = accuracy()
    errors += full_width()
    speed()
    sys.exit(0 if max(errors) <= 3 and statistics.median(errors) <= 1 else 1)
