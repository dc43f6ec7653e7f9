"""`planner tune --proxy target`: the target itself trains every trial that fits; its memory is measured.

Builds a model directory with random weights (a preset's architecture, or a tiny Llama) and a
character tokenizer, runs `planner tune --model DIR --proxy target` on it (plain-text data: the
metric is held-out eval loss, which moves even from random weights), and prints one row
per trial: the point (target numbering), the cost model's predicted peak, and the measured one:

- on CUDA, from the trial record: device memory in use at the training peak (memory outside
  the caching allocator before the run + ``torch.cuda.max_memory_reserved``), and max reserved;
- on CPU, measured again after the study with ``planner.cost.measure_training_peak`` (live tensor
  bytes of real training steps) at the trial's worst-case draw.

    python studies/bench_tune_proxy_target.py --tiny --device cpu --vram 3MB
    python studies/bench_tune_proxy_target.py --preset llama-3.2-1b --device cuda --vram 70GB --seq-len 1024
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_dir(args, root: Path) -> Path:
    """A random-weight model directory of ``--preset`` (or a tiny Llama) with the built-in character tokenizer."""
    from planner.data.tokenizer import CharTokenizer
    from planner.spec import build_model, load_spec
    from planner.spec.tiny import tiny_spec

    tok = CharTokenizer()
    spec = (
        tiny_spec("llama", num_layers=4, hidden=64, heads=4, kv_heads=2, vocab=tok.vocab_size)
        if args.tiny
        else load_spec(args.preset)
    )
    cfg = spec.config
    cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    out = root / ("tiny-llama" if args.tiny else args.preset)
    build_model(spec, dtype="bfloat16" if args.dtype == "bfloat16" else "float32", seed=0).save_pretrained(out)
    tok.to_hf().save_pretrained(out)
    return out


def write_text_data(root: Path) -> Path:
    """Plain-text training data (metric: held-out eval loss, which moves even from random weights)."""
    path = root / "train.jsonl"
    lines = [
        json.dumps({"text": f"{i} plus {i % 7} is {i + i % 7}, and {i} times two is {2 * i}."}) for i in range(300)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def cpu_measured(spec, trial, shape: dict) -> tuple[int, int, list[str]]:
    """A trial without a measurement of its own (pruned mid-run): one real CPU training step of its worst-case draw
    in the form a proxy run executes, measured (live tensor bytes) and predicted (CPU cost model)."""
    import torch

    from planner.config import TrainConfig
    from planner.cost import estimate, measure_training_peak
    from planner.spec import build_model
    from planner.tune.study import record
    from planner.tune.proxy.train import ran_form

    p, a = trial.params, record.read(trial)
    cfg, unrun = ran_form(
        TrainConfig(
            **shape,
            layers=a.trainable_layers,
            gradient_checkpointing=p["gradient_checkpointing"],
            train_embeddings=p["train_embeddings"],
            train_head=p["train_head"],
            lora_rank=p.get("lora_rank") or None,
            **(a.levers or {}),
        )
    )
    torch.manual_seed(0)
    batch = torch.randint(3, spec.vocab_size, (shape["batch_size"], shape["seq_len"]))
    batch = {"input_ids": batch, "labels": batch.clone()}  # two tensors, as a proxy batch has
    measured = measure_training_peak(
        build_model(spec, dtype=shape["dtype"], seed=0), cfg, batch, layers=a.trainable_layers
    )
    return measured, int(estimate(spec, cfg, device="cpu").peak_bytes), unrun


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="llama-3.2-1b")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--vram", default="3MB")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--n-trials", type=int, default=10)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "reports" / "tune_proxy_target_cpu.txt"))
    ap.add_argument("--json", help="also write the rows as JSON here")
    ap.add_argument(
        "--confirm-seeds",
        type=int,
        default=0,
        help="confirmation runs per candidate (default 0: memory, not ranking, is measured here)",
    )
    ap.add_argument(
        "--storage", help="study storage (default: a temporary SQLite file); a file that outlives a cut run"
    )
    args = ap.parse_args()

    import optuna
    import torch
    import transformers

    from planner.cli.main import main as planner
    from planner.spec import load_spec
    from planner.tune.study import record
    from planner.tune.storage.backends import open_storage

    if args.device == "cpu":
        torch.set_num_threads(1)  # a shared CPU machine; on a GPU machine its cores build and copy the model
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model_dir = build_dir(args, Path(tmp))
        built = time.perf_counter() - t0
        storage = args.storage or f"sqlite:///{tmp}/s.db"
        argv = [
            "tune",
            "--vram",
            args.vram,
            "--model",
            str(model_dir),
            "--data",
            str(write_text_data(Path(tmp))),
            "--proxy",
            "target",
            "--proxy-device",
            args.device,
            "--device",
            args.device,
            "--seq-len",
            str(args.seq_len),
            "--batch-size",
            str(args.batch_size),
            "--dtype",
            args.dtype,
            "--n-trials",
            str(args.n_trials),
            "--steps",
            str(args.steps),
            "--eval-every",
            str(args.steps),
            "--study",
            "bench",
            "--storage",
            storage,
            "--quiet",
            "--out",
            f"{tmp}/plan.yaml",
            "--threads",
            "0" if args.device == "cuda" else "1",
            "--confirm-seeds",
            str(args.confirm_seeds),
        ]
        t0 = time.perf_counter()
        code = planner(argv)
        wall = time.perf_counter() - t0
        if code:
            return code
        trials = optuna.load_study(study_name="bench", storage=open_storage(storage)).trials
        spec = load_spec(str(model_dir))
        shape = dict(batch_size=args.batch_size, seq_len=args.seq_len, dtype=args.dtype)
        device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
        rows = []
        for t in trials:
            a, p = record.read(t), t.params
            row = {
                "trial": t.number,
                "kind": str(a.kind),
                "active_layers": p["active_layers"],
                "min_depth": a.min_depth,
                "checkpointing": p["gradient_checkpointing"],
                "embeddings": p["train_embeddings"],
                "head": p["train_head"],
                "lora_rank": p.get("lora_rank") or 0,
                "state": t.state.name,
                "gated": bool(a.gated),
                "predicted": a.predicted_peak_bytes,
                "trainable_layers": a.trainable_layers,
                "reason": a.reason,
            }
            if a.measured_memory and a.measured_memory.device == "cpu":
                m = a.measured_memory
                # the draw with the highest measured peak, predicted in the form the run executed
                top = (m.draws or [None])[0]
                row.update(
                    measured=top.measured_bytes if top else 0,
                    draw=top.layers if top else [],
                    draw_predicted=top.predicted_bytes if top else None,
                    draws=len(m.draws or []),
                    draws_exact=sum(d.predicted_bytes == d.measured_bytes for d in m.draws or []),
                    not_run=m.levers_not_run or [],
                    levers=sorted((a.levers or {}).items()),
                )
            elif a.measured_memory:
                m = a.measured_memory
                row.update(
                    measured=m.device_used_bytes,
                    max_reserved=m.max_reserved_bytes,
                    max_allocated=m.max_allocated_bytes,
                    outside=m.outside_allocator_bytes,
                )
            elif args.device == "cpu" and not row["gated"] and a.reused_from is None and a.trainable_layers:
                row["measured"], row["draw_predicted"], row["not_run"] = cpu_measured(spec, t, shape)
                row["draw"] = a.trainable_layers
            rows.append(row)
    lines = [
        f"`planner tune --proxy target` on {device} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"torch {torch.__version__}, transformers {transformers.__version__})",
        f"target: {'tiny llama (4 layers, hidden 64)' if args.tiny else args.preset} with random weights, batch "
        f"{args.batch_size} x seq {args.seq_len}, {args.dtype}; --vram {args.vram}; {args.n_trials} trials x "
        f"{args.steps} steps; model built in {built:.1f} s, study {wall:.1f} s wall",
        "measured: "
        + (
            "device memory in use at the training peak (outside the allocator before the run + max_memory_reserved)"
            if args.device == "cuda"
            else "live tensor bytes of the trial's own training steps (planner.tune.proxy.meters.CpuMeter), per draw "
            "of layers; 'draw pred.' is the CPU cost model for the draw with the highest measured peak, in "
            "the form the proxy loop ran (planner.tune.proxy.train.ran_form: levers it does not run left off, "
            "column 'not run'); 'plan pred.' the gate's worst-case prediction of the plan as written"
        ),
        f"{'#':>3} {'kind':<14} {'γ':>3} {'from':>4} {'ckpt':>4} {'E':>1} {'H':>1} {'lora':>4} "
        f"{'plan pred. B':>13} {'draw pred. B':>13} {'measured B':>13} {'error':>7} {'exact':>6}  state / not run",
    ]
    errors = []
    for r in rows:
        err, pred, exact = "", r.get("draw_predicted", r["predicted"]), ""
        if r.get("measured") and pred is not None:
            e = (pred - r["measured"]) / r["measured"]
            errors.append(e)
            err = f"{100 * e:+.2f}%"
        if "draws" in r:
            exact = f"{r['draws_exact']}/{r['draws']}"
        lines.append(
            f"{r['trial']:>3} {r['kind']:<14} {r['active_layers']:>3} {r['min_depth']:>4} {int(r['checkpointing']):>4} "
            f"{int(r['embeddings']):>1} {int(r['head']):>1} {r['lora_rank']:>4} {r['predicted']:>13,} "
            f"{pred if pred is not None else 0:>13,} {r.get('measured') or 0:>13,} {err:>7} {exact:>6}  "
            f"{'gated' if r['gated'] else r['state'].lower()}"
            + (f" / {', '.join(r['not_run'])}" if r.get("not_run") else "")
        )
    if errors:
        lines.append(f"largest |error| {100 * max(map(abs, errors)):.2f}% over {len(errors)} measured trials")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps(
                {
                    "device": device,
                    "torch": torch.__version__,
                    "transformers": transformers.__version__,
                    "preset": None if args.tiny else args.preset,
                    "shape": shape,
                    "vram": args.vram,
                    "rows": rows,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
