"""Measure training-step memory on a CUDA GPU, as tests/fixtures/gpu-truth/README.md describes.

    python studies/gpu_measure.py --all OUTDIR            # every case, a fresh process each
    python studies/gpu_measure.py --case NAME OUTDIR      # one case (what --all runs)
    python studies/gpu_measure.py --sdpa OUTDIR           # which SDPA kernel runs and what it keeps

Each case: the model built on the GPU from its config (random weights), the trainable set applied,
AdamW (torch defaults: foreach), step 1 creates the state, then peak stats are reset and step 2
is measured: max_memory_allocated, max_memory_reserved, the allocator's pool peaks, and the
process's device memory from nvidia-smi (context = that - memory_reserved). ``--snapshot`` adds
the allocator's segment list after step 2, summarized.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "planner" / "spec" / "presets"

# name, preset, dtype, amp, batch, seq, layers, train_embeddings, train_head, lora_rank, gradient_checkpointing, GB guess
CASES = [
    ("l1b-full-bf16-b1s512", "llama-3.2-1b", "bfloat16", None, 1, 512, "all", True, True, None, False, 14),
    ("l1b-lisa-bf16-b2s1024-L01", "llama-3.2-1b", "bfloat16", None, 2, 1024, [0, 1], True, True, None, False, 11),
    ("l1b-frozen-bf16-b4s1024-L01", "llama-3.2-1b", "bfloat16", None, 4, 1024, [0, 1], False, False, None, False, 16),
    ("l1b-lora16-bf16-b2s1024", "llama-3.2-1b", "bfloat16", None, 2, 1024, "all", False, False, 16, False, 13),
    ("l8b-frozen-bf16-b1s2048-L01", "llama-3-8b", "bfloat16", None, 1, 2048, [0, 1], False, False, None, False, 33),
    ("l8b-full-bf16-b1s512", "llama-3-8b", "bfloat16", None, 1, 512, "all", True, True, None, False, 84),
    ("q05b-full-fp32-b4s512", "qwen2.5-0.5b", "float32", None, 4, 512, "all", True, True, None, False, 19),
    ("gpt2-full-fp32-b8s1024", "gpt2", "float32", None, 8, 1024, "all", True, True, None, False, 17),
    # new configurations: other architectures, long sequences, LoRA with checkpointing, amp, fp32 math attention
    ("gemma2b-full-bf16-b2s1024", "gemma-2b", "bfloat16", None, 2, 1024, "all", True, True, None, False, 34),
    (
        "mistral7b-frozen-bf16-b1s4096-L01",
        "mistral-7b",
        "bfloat16",
        None,
        1,
        4096,
        [0, 1],
        False,
        False,
        None,
        False,
        30,
    ),
    ("phi3-lisa-bf16-b1s4096-L1530", "phi-3-mini", "bfloat16", None, 1, 4096, [15, 30], True, True, None, False, 30),
    ("l1b-lisa-bf16-b1s8192-L01", "llama-3.2-1b", "bfloat16", None, 1, 8192, [0, 1], True, True, None, False, 30),
    ("l1b-lora16-gc-bf16-b4s2048", "llama-3.2-1b", "bfloat16", None, 4, 2048, "all", False, False, 16, True, 12),
    ("l1b-amp-b2s1024-L01", "llama-3.2-1b", "float32", "bf16", 2, 1024, [0, 1], True, True, None, False, 25),
    ("q05b-frozen-fp32-b2s2048-L23", "qwen2.5-0.5b", "float32", None, 2, 2048, [2, 3], False, False, None, False, 22),
]
# padded batches (--padded-batches): the same step with a batch whose first row ends one token early, its mask passed
# as a trainer's collator passes it (planner/levers/padded_batches.py); each beside its unpadded case above
PADDED = [
    (
        "l1b-lisa-bf16-b2s1024-L01-padded",
        "llama-3.2-1b",
        "bfloat16",
        None,
        2,
        1024,
        [0, 1],
        True,
        True,
        None,
        False,
        11,
    ),
    ("l1b-lora16-gc-bf16-b4s2048-padded", "llama-3.2-1b", "bfloat16", None, 4, 2048, "all", False, False, 16, True, 12),
    ("q05b-full-fp32-b4s512-padded", "qwen2.5-0.5b", "float32", None, 4, 512, "all", True, True, None, False, 19),
]
CASES += [(*row, True) for row in PADDED]
FIELDS = (
    "name",
    "preset",
    "dtype",
    "amp",
    "batch_size",
    "seq_len",
    "trainable_layers",
    "train_embeddings",
    "train_head",
    "lora_rank",
    "gradient_checkpointing",
    "gb",
    "padded",
)
SNAPSHOT_CASE = "l8b-frozen-bf16-b1s2048-L01"


def _case(name):
    for row in CASES:
        if row[0] == name:
            return {"padded": False, **dict(zip(FIELDS, row))}
    raise SystemExit(f"unknown case {name!r}")


def _process_used_bytes() -> int | None:
    """This process's device memory as nvidia-smi reports it (MiB resolution)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(os.getpid()):
            return int(parts[1]) * 2**20
    return None


def _summarize_snapshot(snap) -> list:
    """Per segment: [pool, total size, [block size, allocated?]...] in address order."""
    out = []
    for seg in sorted(snap["segments"], key=lambda s: s["address"]):
        blocks = [[b["size"], int(b["state"] == "active_allocated")] for b in seg["blocks"]]
        out.append([seg["segment_type"], seg["total_size"], blocks])
    return out


def _history(torch) -> list:
    """[action, size] of every allocation, free and new segment recorded since history was switched on."""
    trace = torch.cuda.memory._snapshot()["device_traces"][0]
    torch.cuda.memory._record_memory_history(enabled=None)
    return [[e["action"], e["size"]] for e in trace if e["action"] in ("alloc", "free_completed", "segment_alloc")]


def run_case(name: str, outdir: Path, snapshot: bool, history: bool = False) -> dict:
    import torch
    import transformers
    from torch import nn
    from transformers import AutoConfig, AutoModelForCausalLM

    case = _case(name)
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a dry run of the script (tiny shapes)
    if dev == "cpu":
        case.update(batch_size=1, seq_len=16)
    preset = json.loads((PRESETS / f"{case['preset']}.json").read_text())["config"]
    data = dict(preset)
    cfg = AutoConfig.for_model(data.pop("model_type"), **data)
    cfg.use_cache = False
    dtype = getattr(torch, case["dtype"])
    torch.manual_seed(0)
    t0 = time.perf_counter()
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(cfg)
    torch.set_default_dtype(old)
    build_s = time.perf_counter() - t0
    if case["gradient_checkpointing"]:
        model.gradient_checkpointing_enable()
    from planner.spec.arch import find_decoder_layers

    base = model
    layers = find_decoder_layers(base)[1]
    L = len(layers)
    chosen = list(range(L)) if case["trainable_layers"] == "all" else case["trainable_layers"]
    if case["lora_rank"]:
        from peft import LoraConfig, get_peft_model

        names = sorted({n.rsplit(".", 1)[-1] for n, m in layers[0].named_modules() if isinstance(m, nn.Linear)})
        r = case["lora_rank"]
        model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=names))
    for p in model.parameters():
        p.requires_grad_(False)
    for i in chosen:
        for n, p in layers[i].named_parameters():
            if not case["lora_rank"] or "lora_" in n:
                p.requires_grad_(True)
    in_layers = {id(p) for p in layers.parameters()}
    emb = {id(p) for m in base.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    for p in base.parameters():
        if id(p) in in_layers:
            continue
        if (id(p) in emb and (case["train_embeddings"] or case["train_head"] and cfg.tie_word_embeddings)) or (
            id(p) not in emb and case["train_head"]
        ):
            p.requires_grad_(True)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-5)
    g = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (case["batch_size"], case["seq_len"]), generator=g).to(dev)
    mask = None
    if case["padded"]:
        mask = torch.ones_like(ids)
        mask[0, -1] = 0

    def step():
        ctx = torch.autocast(dev, torch.bfloat16) if case["amp"] == "bf16" else torch.autocast(dev, enabled=False)
        with ctx:
            loss = model(input_ids=ids, labels=ids, attention_mask=mask, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    if dev == "cpu":
        step()
        print(f"{name}: dry run on cpu ok")
        return {}
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    if history:
        torch.cuda.memory._record_memory_history(context=None, stacks="python", max_entries=200000)
    t0 = time.perf_counter()
    step()
    torch.cuda.synchronize()
    step_s = time.perf_counter() - t0
    if history:
        (outdir / f"history-{name}.json").write_text(json.dumps(_history(torch)))
    stats = torch.cuda.memory_stats()
    free, total = torch.cuda.mem_get_info()
    used = _process_used_bytes()
    measured = {
        "max_allocated": torch.cuda.max_memory_allocated(),
        "max_reserved": torch.cuda.max_memory_reserved(),
        "reserved_now": torch.cuda.memory_reserved(),
        "allocated_now": torch.cuda.memory_allocated(),
        "process_used": used,
        "context_est": (used - torch.cuda.memory_reserved()) if used else None,
        "device_used_now": int(total - free),
        "total": int(total),
        "pools": {
            k: stats.get(k)
            for k in (
                "allocated_bytes.small_pool.peak",
                "allocated_bytes.large_pool.peak",
                "reserved_bytes.small_pool.peak",
                "reserved_bytes.large_pool.peak",
                "segment.all.peak",
                "num_alloc_retries",
                "requested_bytes.all.peak",
            )
        },
        "attn": getattr(cfg, "_attn_implementation", None),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trainable_params": sum(p.numel() for p in trainable),
        "step_s": round(step_s, 3),
        "build_s": round(build_s, 2),
    }
    row = {k: case[k] for k in FIELDS if k != "gb"}
    row["config"] = preset
    row["optimizer"] = "adamw (torch default: foreach on CUDA)"
    row["measured"] = measured
    (outdir / f"{name}.json").write_text(json.dumps(row))
    if snapshot:
        snap = torch.cuda.memory._snapshot()
        (outdir / f"snapshot-{name}.json").write_text(json.dumps(_summarize_snapshot(snap)))
    return row


def sdpa_probe(outdir: Path) -> None:
    """Per (dtype, heads, mask): kernel names the profiler sees, bytes kept after forward, backward peak above that."""
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    rows = []
    b, h, s, d = 2, 16, 1024, 64
    for dtype in (torch.bfloat16, torch.float32):
        for hk in (16, 4):
            for masked in (False, True):
                torch.cuda.empty_cache()
                q = torch.randn(b, s, h, d, device="cuda", dtype=dtype).transpose(1, 2).requires_grad_()
                k = torch.randn(b, s, hk, d, device="cuda", dtype=dtype).transpose(1, 2).requires_grad_()
                v = torch.randn(b, s, hk, d, device="cuda", dtype=dtype).transpose(1, 2).requires_grad_()
                mask = torch.ones(s, s, device="cuda", dtype=torch.bool).tril() if masked else None
                kw = dict(enable_gqa=hk != h)
                if masked:
                    kw["attn_mask"] = mask
                else:
                    kw["is_causal"] = True
                torch.cuda.synchronize()
                before = torch.cuda.memory_allocated()
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    out = F.scaled_dot_product_attention(q, k, v, **kw)
                    torch.cuda.synchronize()
                    kept = torch.cuda.memory_allocated() - before
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                    out.backward(torch.ones_like(out))
                    torch.cuda.synchronize()
                    bwd_peak = torch.cuda.max_memory_allocated() - base
                names = sorted(
                    {
                        e.key
                        for e in prof.key_averages()
                        if "attention" in e.key.lower()
                        or "flash" in e.key.lower()
                        or "fmha" in e.key.lower()
                        or "cudnn" in e.key.lower()
                        or "gemm" in e.key.lower()
                    }
                )[:8]
                rows.append(
                    {
                        "dtype": str(dtype),
                        "heads": h,
                        "kv_heads": hk,
                        "mask": masked,
                        "b": b,
                        "s": s,
                        "d": d,
                        "kept_after_forward": kept,
                        "out_bytes": out.numel() * out.element_size(),
                        "backward_peak_above_start": bwd_peak,
                        "kernels": names,
                    }
                )
                del q, k, v, out, mask
    (outdir / "sdpa.json").write_text(json.dumps(rows))


def history_probe(outdir: Path) -> None:
    """The allocator's alloc/free sequence of one float32 grouped-query SDPA forward and backward (the math
    kernel), with the shapes of qwen2.5-0.5b at batch 2 x 2048, and of the same on CPU under the tracker."""
    import torch
    import torch.nn.functional as F

    b, h, hk, s, d = 2, 14, 2, 2048, 64
    out = {}
    for dev in ("cuda", "cpu"):
        q = torch.randn(b, s, h, d, device=dev).transpose(1, 2).requires_grad_()
        k = torch.randn(b, s, hk, d, device=dev).transpose(1, 2).requires_grad_()
        v = torch.randn(b, s, hk, d, device=dev).transpose(1, 2).requires_grad_()
        g = torch.ones(b, s, h, d, device=dev).transpose(1, 2)
        seq = []
        if dev == "cuda":
            torch.cuda.synchronize()
            torch.cuda.memory._record_memory_history(context=None, stacks="python", max_entries=100000)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            torch.cuda.synchronize()
            mark = torch.cuda.memory._snapshot()["device_traces"][0]
            o.backward(g)
            torch.cuda.synchronize()
            trace = torch.cuda.memory._snapshot()["device_traces"][0]
            torch.cuda.memory._record_memory_history(enabled=None)
            seq = [
                [e["action"], e["size"], int(i >= len(mark))]
                for i, e in enumerate(trace)
                if e["action"] in ("alloc", "free_completed", "segment_alloc")
            ]
        else:
            sys.path.insert(0, str(ROOT))
            from planner.cost import LiveBytesTracker

            class Recorder(LiveBytesTracker):
                def _change(self, aid, delta):
                    super()._change(aid, delta)
                    seq.append(["alloc" if delta > 0 else "free_completed", abs(delta), phase[0]])

            phase = [0]
            with Recorder() as t:
                t.track([q, k, v, g])
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                phase[0] = 1
                o.backward(g)
        out[dev] = seq
        del q, k, v, g, o
    (outdir / "math-history.json").write_text(json.dumps(out))


def run_all(outdir: Path, workers: int, budget_gb: float) -> None:
    """Every case in a fresh process, up to ``workers`` at once within ``budget_gb`` of expected peak."""
    import threading

    lock = threading.Condition()
    in_use = [0.0]

    def one(case):
        with lock:
            lock.wait_for(lambda: in_use[0] + case["gb"] <= budget_gb or in_use[0] == 0)
            in_use[0] += case["gb"]
        t0 = time.perf_counter()
        args = [sys.executable, __file__, "--case", case["name"], str(outdir)]
        if case["name"] == SNAPSHOT_CASE:
            args.append("--snapshot")
        proc = subprocess.run(args, capture_output=True, text=True)
        with lock:
            in_use[0] -= case["gb"]
            lock.notify_all()
        tail = (proc.stderr.strip().splitlines() or [""])[-1][:300]
        print(
            f"{case['name']}: rc={proc.returncode} {time.perf_counter() - t0:.1f}s {tail if proc.returncode else ''}",
            flush=True,
        )

    cases = sorted((dict(zip(FIELDS, r)) for r in CASES), key=lambda c: -c["gb"])
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, cases))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("outdir")
    ap.add_argument("--case")
    ap.add_argument("--all", action="store_true")
    ap.add_argument("--sdpa", action="store_true")
    ap.add_argument("--snapshot", action="store_true")
    ap.add_argument("--history", action="store_true")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--budget-gb", type=float, default=125)
    a = ap.parse_args()
    out = Path(a.outdir)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if a.case:
        run_case(a.case, out, a.snapshot, a.history)
    elif a.sdpa:
        sdpa_probe(out)
    elif a.history:
        history_probe(out)
    elif a.all:
        run_all(out, a.workers, a.budget_gb)


if __name__ == "__main__":
    main()
