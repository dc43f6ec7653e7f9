"""A tiny workload for the tuner's tests: a 3-layer llama learning to copy a few tokens."""

from __future__ import annotations

import random

from planner.data.workload import Example, Workload
from planner.spec import build_model
from planner.spec.tiny import tiny_spec


def tiny_workload(
    *, num_layers: int = 3, n_train: int = 32, n_held_out: int = 8, seed: int = 0, metric: str = "eval_loss"
) -> Workload:
    """Prompt: 4 random tokens then a separator; answer: the same 4 tokens (eval loss or exact match)."""
    spec = tiny_spec("llama", num_layers=num_layers, hidden=32, heads=2, kv_heads=1, vocab=48)
    rng = random.Random(seed)
    sep, eos = 2, 1

    def example() -> Example:
        toks = tuple(rng.randrange(3, 48) for _ in range(4))
        return Example(
            prompt=toks + (sep,),
            answer=toks + (eos,),
            target=" ".join(map(str, toks)) if metric == "accuracy" else None,
        )

    return Workload(
        name="tiny-copy",
        spec=spec,
        model_source="tiny-llama",
        train=[example() for _ in range(n_train)],
        held_out=[example() for _ in range(n_held_out)],
        model_factory=lambda s: build_model(spec, seed=s),
        decode=lambda ids: " ".join(str(i) for i in ids if i != eos),
        pad_id=0,
        eos_id=eos,
        metric_name=metric,
    )


def write_user_workload(root, *, text: bool = False) -> tuple[str, str]:
    """A user's workload on disk: a tiny random llama directory (char tokenizer) and an instruction JSONL file
    (``text=True``: plain text, whose metric, held-out eval loss, differs between any two trainings)."""
    import json
    from pathlib import Path

    from planner.data.tokenizer import CharTokenizer

    root = Path(root)
    model_dir, data = root / "my-model", root / "train.jsonl"
    tok = CharTokenizer()
    spec = tiny_spec("llama", num_layers=3, hidden=32, heads=2, kv_heads=1, vocab=tok.vocab_size)
    spec.config.bos_token_id, spec.config.eos_token_id, spec.config.pad_token_id = (
        tok.bos_token_id,
        tok.eos_token_id,
        tok.pad_token_id,
    )
    build_model(spec, seed=0).save_pretrained(model_dir)
    tok.to_hf().save_pretrained(model_dir)
    if text:
        data.write_text("\n".join(json.dumps({"text": f"{i} and {i + 1} make {2 * i + 1}"}) for i in range(60)) + "\n")
        return str(model_dir), str(data)
    # answers a few proxy steps learn in part (the majority first), so trials differ in accuracy
    data.write_text(
        "\n".join(json.dumps({"instruction": f"double {i}", "response": "7" if i % 3 else "seven"}) for i in range(80))
        + "\n"
    )
    return str(model_dir), str(data)


def write_target_config(workload: Workload, path) -> str:
    """The workload's model as a target ``config.json`` (the spec the gate costs; no weights)."""
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    workload.spec.config.to_json_file(str(path))
    return str(path)


def storage_url(kind: str, tmp_path) -> str:
    """An Optuna storage of ``kind`` (sqlite, journal, postgres) for one test; postgres is skipped without a server."""
    import os

    import pytest

    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/s.db"
    if kind == "journal":
        return str(tmp_path / "s.log")
    url = os.environ.get("PLANNER_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("PLANNER_TEST_POSTGRES_URL is not set (.ci/run starts a server and sets it)")
    return url


def tune_options(tmp_path, target: str, wl: Workload, **kw):
    """TuneOptions for a study of ``wl`` on the tiny ``target`` in float32 on the CPU, stored under ``tmp_path``."""
    from planner.tune import TuneOptions

    base = dict(
        vram="1GB",
        storage=f"sqlite:///{tmp_path}/s.db",
        out=str(tmp_path / "plan.yaml"),
        proxy_device="cpu",
        model=target,
        seq_len=wl.seq_len,
        batch_size=8,
        dtype="float32",
        device="cpu",
    )
    return TuneOptions(**{**base, **kw})
