"""Do plan rankings from cheap proxies transfer to a real pretrained model?

Plans: :data:`PLANS`, layer-wise plans in the target's numbering (SmolLM2-135M-Instruct, 30 decoder
layers, tied embeddings), spanning γ (active layers), ``min_depth``, K (steps between re-draws), the
scorer (uniform, ist, gradnorm, semantic, cyclic), embeddings/head trainable or frozen, LoRA (the
baseline's rank 16 on every layer) and full fine-tuning. Learning rates are the target's: 3e-4 for
layer weights, 5x that for LoRA (the baseline's factor); a proxy narrower than the target trains at
``lr * d_target / d_proxy`` (the inverse of :func:`planner.tune.proxy.mapping.target_lr`, the rule
``planner tune`` uses to carry a proxy's rate to the target), snapped into the search's range.

Every run is :func:`planner.tune.proxy.train.run_proxy` on a :class:`planner.data.Workload` with the proxy
point :func:`planner.tune.proxy.mapping.proxy_params` maps the plan to: what a trial of ``planner tune`` trains.
Score: the held-out eval loss on answer tokens (nats per token; lower is better).

Tasks (both with SmolLM2's tokenizer and chat template for the SmolLM2-based models):
- ``docs``: natural English instruction data made here from the Python standard library's own
  docstrings: "What does textwrap.dedent do?" -> the first sentence of its docstring (640 records);
- ``maximum``: the built-in demo task ("max 37 82 15: " -> "82"), 640 examples.
The SmolLM2-based models read both as ``messages`` records with a short system turn ("Be brief."),
which keeps sequences near 40 tokens (the template's default system prompt adds ~20 tokens to each);
the built-in proxy reads ``docs`` as the same records in prompt/completion form (its character
tokenizer has no chat template; the run predates the plain rendering it now gives ``messages`` records) and ``maximum`` as
``builtin:maximum``, as ``planner tune`` without ``--data`` trains it.

Models:
- ``reference``: SmolLM2-135M itself, ``REF_STEPS`` steps of batch ``REF_BATCH``, seeds 0 and 1,
  evaluated every ``REF_EVERY`` steps on the first ``REF_HELD_OUT`` held-out examples (the same
  examples for every plan); the reference ranking is by the mean over seeds at the last step;
- ``builtin``: the built-in pretrained character model as deep as the target (30 layers, hidden 64),
  at ``planner tune``'s defaults (150 steps, eval every 50, batch 8 for a data file, 32 for the
  built-in task), seed 0 (and seed 1 last, when time allows);
- ``trunc8``: SmolLM2's first 8 decoder layers (``model.model.layers[:8]``, saved as a model
  directory, given as ``--proxy DIR`` would be), plans mapped by relative depth; trained at the
  reference's horizon (tune's default 150 steps of 8 would cost about 10 CPU minutes per trial here);
- ``short``: SmolLM2 itself after ``SHORT_STEPS`` steps, read off the reference runs' first
  evaluation (the learning rate is constant, so the first N steps of a run are an N-step run).

Results go to a JSON file cell by cell (``--out``; a rerun skips finished cells), and the report
(``--report``) is rewritten from it after every cell, so a stopped run keeps what it measured.

    nice -n 19 python studies/bench_transfer.py --threads 2            # the full run (resumes)
    python studies/bench_transfer.py --tiny --out /tmp/t.json --report /tmp/t.txt   # 2 plans, 5 steps
    python studies/bench_transfer.py --report-only                     # the report from the JSON

The demo task's reference, longer and wider (reports/transfer_long.txt, reports/transfer_b8.txt; each JSON starts
from the maximum task's built-in and trunc8 cells of reports/transfer.json, which do not depend on the reference):

    nice -n 19 python studies/bench_transfer.py --ref-steps 48 --ref-held-out 32 --out reports/transfer_long.json \
        --report reports/transfer_long.txt --work-dir /tmp/bench_transfer_long --only maximum:reference:0,maximum:reference:1
    nice -n 19 python studies/bench_transfer.py --ref-batch 8 --ref-held-out 32 --out reports/transfer_b8.json \
        --report reports/transfer_b8.txt --work-dir /tmp/bench_transfer_b8 --only maximum:reference:0,maximum:reference:1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

TARGET = "smollm2-135m"
TARGET_LAYERS = 30
TARGET_HIDDEN = 576
LR = 3e-4  # the target's rate for layer weights
LORA_LR = LR * 5  # planner.tune.study.baselines.LORA_LR_FACTOR
TASKS = ("docs", "maximum")
N_RECORDS = 640
MAX_SEQ_LEN = 64
SYSTEM = "Be brief."
REF_STEPS, REF_EVERY, REF_BATCH, REF_HELD_OUT = 24, 6, 2, 16


def _ref_skip(steps: int) -> tuple[int, ...]:
    """Reference checkpoints left out (evaluation costs): 6, 12, 24, then every 24 steps are kept."""
    keep = {6, 12} | set(range(24, steps + 1, 24)) | {steps}
    return tuple(s for s in range(REF_EVERY, steps + 1, REF_EVERY) if s not in keep)


REF_SKIP = _ref_skip(REF_STEPS)  # (18,) at 24 steps
REF_SEEDS = (0, 1)
SHORT_STEPS = 6
SHORT_BATCH = 2  # planner tune's short horizon: 6 steps of 2
SHORT_SOURCE = "short_b2"  # cells of a batch-2 reference run copied in where the reference here is wider
TRUNC_LAYERS = 8
TRUNC_STEPS, TRUNC_EVERY, TRUNC_BATCH = REF_STEPS, REF_STEPS, REF_BATCH
BUILTIN_STEPS, BUILTIN_EVERY = 150, 50  # planner.tune.options.DEFAULT_STEPS, DEFAULT_EVALS = 3


def _plans() -> dict:
    from planner.tune.search.space import TrialParams

    def p(active_layers, period, scorer, emb, head, *, depth=0, lora=None):
        return TrialParams(
            active_layers=active_layers,
            period=period,
            scorer=scorer,
            train_embeddings=emb,
            train_head=head,
            lr=LORA_LR if lora else LR,
            lora_rank=lora,
            min_depth=depth,
        )

    return {
        "lisa γ2 K20 +E+H": p(2, 20, "uniform", True, True),
        "uniform γ2 K5 +E+H": p(2, 5, "uniform", True, True),
        "uniform γ8 K10": p(8, 10, "uniform", False, False),
        "uniform γ8 K10 d15": p(8, 10, "uniform", False, False, depth=15),
        "uniform γ4 K5 d22": p(4, 5, "uniform", False, False, depth=22),
        "top half γ15 d15": p(15, 20, "uniform", False, False, depth=15),
        "top layer γ1 d29 +H": p(1, 20, "uniform", False, True, depth=29),
        "ist γ4 K10": p(4, 10, "ist", False, False),
        "ist γ2 K10 +E+H": p(2, 10, "ist", True, True),
        "gradnorm γ4 K10 d8": p(4, 10, "gradnorm", False, False, depth=8),
        "gradnorm γ2 K5 +E+H": p(2, 5, "gradnorm", True, True),
        "semantic γ8": p(8, 20, "semantic", False, False),
        "semantic γ4 +H": p(4, 20, "semantic", False, True),
        "cyclic γ4 K5": p(4, 5, "cyclic", False, False),
        "full γ30 +E+H": p(30, 20, "uniform", True, True),
        "lora r16 γ30": p(30, 20, "uniform", False, False, lora=16),
    }


# ---- data ------------------------------------------------------------------------------------------

DOC_MODULES = (
    "os",
    "os.path",
    "shutil",
    "json",
    "re",
    "string",
    "textwrap",
    "math",
    "statistics",
    "random",
    "itertools",
    "functools",
    "collections",
    "heapq",
    "bisect",
    "datetime",
    "calendar",
    "time",
    "pathlib",
    "glob",
    "fnmatch",
    "tempfile",
    "csv",
    "base64",
    "hashlib",
    "zlib",
    "gzip",
    "struct",
    "copy",
    "operator",
    "difflib",
    "html",
    "urllib.parse",
    "inspect",
    "typing",
    "decimal",
    "fractions",
    "uuid",
    "secrets",
    "unicodedata",
    "shlex",
    "platform",
    "locale",
    "gettext",
    "logging",
    "argparse",
    "threading",
    "queue",
    "socket",
    "select",
    "subprocess",
    "signal",
    "pickle",
    "io",
    "codecs",
    "contextlib",
    "dataclasses",
    "enum",
    "abc",
    "types",
    "weakref",
    "ast",
    "tokenize",
    "keyword",
    "dis",
    "traceback",
    "warnings",
    "pprint",
    "reprlib",
    "zipfile",
    "tarfile",
    "sqlite3",
    "email.utils",
    "http.client",
    "mimetypes",
    "binascii",
    "array",
    "colorsys",
    "filecmp",
    "stat",
    "sched",
    "numbers",
    "ipaddress",
    "configparser",
    "plistlib",
    "smtplib",
    "ftplib",
    "imaplib",
    "xml.dom.minidom",
    "xml.etree.ElementTree",
    "concurrent.futures",
    "asyncio",
    "multiprocessing",
    "unittest",
    "doctest",
    "timeit",
    "pstats",
    "linecache",
    "sysconfig",
    "importlib",
    "pkgutil",
    "runpy",
    "optparse",
    "lzma",
    "bz2",
    "html.parser",
    "urllib.request",
    "http.cookies",
    "http.server",
    "socketserver",
    "xmlrpc.client",
    "selectors",
    "gc",
    "token",
    "symtable",
    "code",
    "pdb",
    "bdb",
    "graphlib",
    "hmac",
    "shelve",
    "copyreg",
    "compileall",
    "zoneinfo",
    "wsgiref.util",
)


def doc_records(n: int = N_RECORDS, seed: int = 0) -> list[tuple[str, str]]:
    """(question, answer) pairs: "What does <module>.<name> do?" and the first sentence of its docstring
    (25-120 characters, capitalized, distinct), ``n`` of them drawn with ``random.Random(seed)``."""
    import importlib
    import inspect
    import warnings

    seen, out = set(), []
    for name in DOC_MODULES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a module this Python lacks
            continue
        for attr in sorted(dir(module)):
            obj = getattr(module, attr, None)
            if attr.startswith("_") or not (inspect.isfunction(obj) or inspect.isbuiltin(obj) or inspect.isclass(obj)):
                continue
            home = str(getattr(obj, "__module__", "") or "")
            if home and not home.startswith(name.split(".")[0]) and home != "builtins":
                continue
            doc = inspect.getdoc(obj)
            if not doc:
                continue
            para = doc.strip().split("\n\n")[0].replace("\n", " ")
            sentence = re.split(r"(?<=[.!?])\s", para)[0].strip()
            if not 25 <= len(sentence) <= 120 or not sentence[0].isupper() or sentence in seen:
                continue
            seen.add(sentence)
            out.append((f"What does {name}.{attr} do?", sentence))
    if len(out) < n:
        raise SystemExit(f"the standard library gave {len(out)} docstring records, fewer than {n}")
    return random.Random(seed).sample(out, n)


def builtin_records(task: str = "maximum", n: int = N_RECORDS) -> list[tuple[str, str]]:
    """A built-in task's examples (train then held-out, as ``builtin:<task>`` splits ``n``)."""
    from planner.data.default import split_sizes, task_examples

    n_train, n_held = split_sizes(n)
    train, held = task_examples(task, seed=0, n_train=n_train, n_held_out=n_held)
    return train + held


def write_data(work: Path) -> dict:
    """Per task: the ``messages`` file (SmolLM2-based models) and what the built-in proxy reads."""
    work.mkdir(parents=True, exist_ok=True)
    out = {}
    for task in TASKS:
        pairs = doc_records() if task == "docs" else builtin_records(task)
        chat = work / f"{task}-chat.jsonl"
        chat.write_text(
            "".join(
                json.dumps(
                    {
                        "messages": [
                            {"role": "system", "content": SYSTEM},
                            {"role": "user", "content": q},
                            {"role": "assistant", "content": a},
                        ]
                    }
                )
                + "\n"
                for q, a in pairs
            )
        )
        if task == "docs":
            pc = work / f"{task}-pc.jsonl"
            pc.write_text("".join(json.dumps({"prompt": q, "completion": a}) + "\n" for q, a in pairs))
            builtin = str(pc)
        else:
            builtin = f"builtin:{task}"
        out[task] = {"chat": str(chat), "builtin": builtin}
    return out


# ---- models ----------------------------------------------------------------------------------------


def truncated_model(work: Path, k: int = TRUNC_LAYERS) -> str:
    """SmolLM2's first ``k`` decoder layers as a model directory (with its tokenizer and chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from planner.spec.weights import local_weights

    out = work / f"smollm2-first{k}"
    if (out / "config.json").is_file():
        return str(out)
    src = local_weights(TARGET)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    model.model.layers = model.model.layers[:k]
    model.config.num_hidden_layers = k
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = list(model.config.layer_types)[:k]
    tmp = work / f".smollm2-first{k}.tmp"
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(src).save_pretrained(tmp)
    tmp.rename(out)
    return str(out)


_WORKLOADS: dict = {}


def workload(task: str, model: str, data: dict, work: Path):
    """The workload a proxy trains on (loaded once per process)."""
    key = (task, model)
    if key in _WORKLOADS:
        return _WORKLOADS[key]
    from planner.data import load_workload
    from planner.spec.weights import local_weights

    files = data[task]
    if model == "builtin":
        from planner.tune.proxy.source import builtin_layers

        wl = load_workload(data=files["builtin"], seed=0, max_examples=N_RECORDS, layers=builtin_layers(TARGET_LAYERS))
    else:
        source = local_weights(TARGET) if model == "reference" else truncated_model(work)
        wl = load_workload(model=source, data=files["chat"], seed=0, max_examples=N_RECORDS, max_seq_len=MAX_SEQ_LEN)
        if model == "reference":
            wl.held_out = wl.held_out[:REF_HELD_OUT]  # the same examples for every plan; evaluations cost
    _WORKLOADS[key] = wl
    return wl


# ---- one cell --------------------------------------------------------------------------------------


def proxy_point(params, model: str, wl):
    """The point a proxy trains for target plan ``params``: depth by :func:`proxy_params`, the rate by width."""
    from planner.tune.proxy.mapping import proxy_params
    from planner.tune.search.space import DEFAULT_LR_RANGE

    layers = wl.spec.num_layers
    small = proxy_params(params, target_layers=TARGET_LAYERS, proxy_layers=layers, is_target=model == "reference")
    hidden = wl.spec.hidden_size
    if hidden != TARGET_HIDDEN:  # the inverse of planner.tune.proxy.mapping.target_lr, snapped into the search's range
        lr = min(max(params.lr * TARGET_HIDDEN / hidden, DEFAULT_LR_RANGE[0]), DEFAULT_LR_RANGE[1])
        small = replace(small, lr=lr)
    return small


class Meter:
    """CPU time of the whole run and of its evaluations, read at each evaluation; skips the steps in ``skip``."""

    def __init__(self, wl, skip=(), every: int = 1):
        self.wl, self.skip, self.every = wl, set(skip), every
        self.evaluate = wl.evaluate
        self.calls = 0
        self.eval_cpu = 0.0
        self.points: list[dict] = []
        self.start = time.process_time()

    def __call__(self, model, *a, **kw):
        self.calls += 1
        step = self.calls * self.every
        if step in self.skip:
            return math.nan
        t = time.process_time()
        value = self.evaluate(model, *a, **kw)
        spent = time.process_time() - t
        self.eval_cpu += spent
        self.points.append(
            {
                "step": step,
                "value": float(value),
                "cpu": time.process_time() - self.start,
                "eval_cpu": spent,
                "train_cpu": time.process_time() - self.start - self.eval_cpu,
            }
        )
        return value


def run_cell(task: str, model: str, plan: str, seed: int, data: dict, work: Path, tiny: bool) -> dict:
    from planner.sampling import DivergedError
    from planner.tune.proxy.train import run_proxy

    params = PLANS_CACHE[plan]
    wl = workload(task, model, data, work)
    if model == "builtin":
        steps, every, batch = BUILTIN_STEPS, BUILTIN_EVERY, int(wl.batch_size)
    elif model == "trunc8":
        steps, every, batch = TRUNC_STEPS, TRUNC_EVERY, TRUNC_BATCH
    else:
        steps, every, batch = REF_STEPS, REF_EVERY, REF_BATCH
    skip = REF_SKIP if model == "reference" else ()
    if tiny:
        steps, every, skip = 5, 5, ()
    small = proxy_point(params, model, wl)
    wl.secondary = None  # no greedy-decoded accuracy beside the eval loss: it is not the score, and it costs
    meter = Meter(wl, skip, every)
    wl.evaluate = meter
    cpu, wall = time.process_time(), time.perf_counter()
    error = None
    try:
        result = run_proxy(wl, small, batch_size=batch, steps=steps, eval_every=every, seed=seed)
        metric = result.metric
    except DivergedError as exc:
        metric, error = math.nan, f"diverged: {exc}"
    finally:
        wl.evaluate = meter.evaluate
    return {
        "task": task,
        "model": model,
        "plan": plan,
        "seed": seed,
        "metric": float(metric),
        "error": error,
        "cpu_s": time.process_time() - cpu,
        "wall_s": time.perf_counter() - wall,
        "steps": steps,
        "batch": batch,
        "eval_every": every,
        "proxy_point": {k: v for k, v in asdict(small).items() if k != "levers"},
        "layers": wl.spec.num_layers,
        "hidden": wl.spec.hidden_size,
        "train_examples": len(wl.train),
        "held_out": len(wl.held_out),
        "curve": meter.points,
    }


# ---- results file ----------------------------------------------------------------------------------


def cell_key(task, model, plan, seed) -> str:
    return f"{task}|{model}|{plan}|{seed}"


def load_results(path: Path) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    return {"settings": {}, "cells": {}}


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive lock beside ``path``: processes sharing one results file take turns reading and writing it."""
    import fcntl

    import hashlib
    import tempfile

    name = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    with open(Path(tempfile.gettempdir()) / f"bench_transfer-{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def sync_results(path: Path, results: dict, cell: dict | None = None) -> None:
    """Merge the file's cells into ``results`` (other processes' work) and, with ``cell``, add it and write."""
    with locked(path):
        if path.is_file():
            for key, value in json.loads(path.read_text()).get("cells", {}).items():
                results["cells"].setdefault(key, value)
        if cell is None:
            return
        results["cells"][cell_key(cell["task"], cell["model"], cell["plan"], cell["seed"])] = cell
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(results, indent=1, ensure_ascii=False))
        os.replace(tmp, path)


def claim(work: Path, key: str) -> bool:
    """Whether this process may run cell ``key`` (no live process claimed it); claims it if so."""
    import hashlib

    claims = work / "claims"
    claims.mkdir(parents=True, exist_ok=True)
    path = claims / hashlib.sha256(key.encode()).hexdigest()[:16]
    try:
        pid = int(path.read_text())
        if pid != os.getpid():
            os.kill(pid, 0)  # alive: its claim stands
            return False
    except (FileNotFoundError, ValueError, ProcessLookupError):
        pass
    path.write_text(str(os.getpid()))
    return True


def queue(tiny: bool) -> list[tuple[str, str, int]]:
    """(task, model, seed) groups in the order they run: one task complete before the next."""
    out = []
    for task in TASKS:
        out += [(task, "reference", 0), (task, "builtin", 0), (task, "reference", 1), (task, "trunc8", 0)]
    if not tiny:
        out += [(task, "builtin", 1) for task in TASKS]
    return out


# ---- statistics ------------------------------------------------------------------------------------


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's τ-b of two score lists (pairs tied in either list count for neither side)."""
    n = len(a)
    conc = disc = ta = tb = 0
    for i in range(n):
        for j in range(i + 1, n):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ta += 1
            elif db == 0:
                tb += 1
            elif (da > 0) == (db > 0):
                conc += 1
            else:
                disc += 1
    denom = math.sqrt((conc + disc + ta) * (conc + disc + tb))
    return (conc - disc) / denom if denom else math.nan


def _finite(x) -> float:
    return x if x is not None and math.isfinite(x) else 1e9  # a diverged run ranks last


def ranking(scores: dict) -> list[str]:
    return sorted(scores, key=lambda p: (_finite(scores[p]), p))


def table_scores(cells: dict, task: str, model: str, seeds, step=None) -> dict:
    """plan -> mean metric over ``seeds`` (at checkpoint ``step``; None: the final metric); plans missing a seed left out."""
    out = {}
    for plan in PLANS_CACHE:
        vals = []
        for s in seeds:
            c = cells.get(cell_key(task, model, plan, s))
            if c is None:
                break
            if step is None:
                vals.append(c["metric"])
            else:
                pts = [p["value"] for p in c["curve"] if p["step"] == step]
                if not pts:
                    break
                vals.append(pts[0])
        else:
            out[plan] = statistics.mean(_finite(v) for v in vals) if vals else math.nan
    return out


def short_cost(cells: dict, task: str, plan: str, seed: int, step: int, source: str = "reference") -> float | None:
    """CPU seconds of a ``step``-step run on the target: the reference run's training time to that step and one evaluation."""
    c = cells.get(cell_key(task, source, plan, seed))
    if c is None:
        return None
    pts = [p for p in c["curve"] if p["step"] == step]
    return pts[0]["train_cpu"] + pts[0]["eval_cpu"] if pts else None


def compare(ref: dict, proxy: dict) -> dict:
    common = [p for p in ref if p in proxy]
    if len(common) < 3:
        return {"n": len(common)}
    tau = kendall_tau([_finite(ref[p]) for p in common], [_finite(proxy[p]) for p in common])
    best = ranking({p: ref[p] for p in common})[0]
    top3 = ranking({p: proxy[p] for p in common})[:3]
    return {
        "n": len(common),
        "tau": tau,
        "ref_best": best,
        "proxy_top3": top3,
        "best_in_top3": best in top3,
        "proxy_best": top3[0],
        "proxy_best_ref_rank": ranking({p: ref[p] for p in common}).index(top3[0]) + 1,
    }


# ---- report ----------------------------------------------------------------------------------------


def _fmt(v, width=7, digits=4):
    return (
        f"{v:{width}.{digits}f}"
        if v is not None and not (isinstance(v, float) and math.isnan(v))
        else f"{'-':>{width}s}"
    )


def _compare_line(name: str, c: dict, cost) -> str:
    if "tau" not in c:
        return f"  {name:40s} {c['n']:3d}   (fewer than 3 plans yet)"
    return (
        f"  {name:40s} {c['n']:3d} {c['tau']:6.3f} {('yes' if c['best_in_top3'] else 'no'):>9s} "
        f"{c['proxy_best_ref_rank']:9d}   {_fmt(cost, 9, 1)}"
    )


def report(results: dict, path: Path) -> str:
    cells = results["cells"]
    settings = results.get("settings", {})
    lines = ["# Do plan rankings from cheap proxies transfer to the real model? (studies/bench_transfer.py)", ""]
    lines.append(
        f"cells finished: {len(cells)} of {settings.get('cells_total', '?')}; CPU seconds in them "
        f"{sum(c['cpu_s'] for c in cells.values()):.0f}"
    )
    for k, v in settings.items():
        if k != "cells_total":
            lines.append(f"{k}: {v}")
    lines.append("")
    steps = settings.get("ref_checkpoints") or []
    for task in TASKS:
        ref0 = table_scores(cells, task, "reference", (0,))
        ref1 = table_scores(cells, task, "reference", (1,))
        ref = table_scores(cells, task, "reference", REF_SEEDS)
        if not ref0:
            lines += [f"## task {task}: no reference run yet", ""]
            continue
        prox = {
            "builtin": table_scores(cells, task, "builtin", (0,)),
            "trunc8": table_scores(cells, task, "trunc8", (0,)),
            "short": table_scores(cells, task, SHORT_SOURCE, (0,), step=SHORT_STEPS),
        }
        # a short run of its own (the 48 x 2 reference's first steps, copied in) is independent of every seed here
        own = not any(c["task"] == task and c["model"] == SHORT_SOURCE for c in cells.values())
        if own:
            prox["short"] = table_scores(cells, task, "reference", (0,), step=SHORT_STEPS)
        short_batch = REF_BATCH if own else SHORT_BATCH
        lines.append(f"## task {task}: reference seed 0 on {len(ref0)} plans, seed 1 on {len(ref1)}")
        lines.append("")
        lines.append(
            "held-out eval loss (nats per answer token) and rank (1 = best) within each column's plans; "
            "rows in the order of the reference's seed 0"
        )
        lines.append(
            f"  {'plan':24s} {'ref s0':>7s} {'#':>3s} {'ref s1':>7s} {'ref':>7s} {'#':>3s} | {'builtin':>7s} {'#':>3s} | "
            f"{'trunc8':>7s} {'#':>3s} | {'short':>7s} {'#':>3s}"
        )
        cols = {"ref s0": ref0, "ref": ref, **prox}
        ranks = {m: {p: i + 1 for i, p in enumerate(ranking(sc))} for m, sc in cols.items()}
        for plan in ranking(ref0):
            row = f"  {plan:24s} {_fmt(ref0.get(plan))} {ranks['ref s0'].get(plan, 0):3d} {_fmt(ref1.get(plan))} "
            row += f"{_fmt(ref.get(plan))} {ranks['ref'][plan] if plan in ref else '-':>3}"
            for m in ("builtin", "trunc8", "short"):
                row += f" | {_fmt(prox[m].get(plan))} {ranks[m][plan] if plan in prox[m] else '-':>3}"
            lines.append(row)
        lines.append("")
        lines.append(
            "Kendall τ with the reference ranking; whether the reference's best plan is in the proxy's top 3; "
            "where the proxy's best plan ranks in the reference; CPU seconds per trial"
        )
        lines.append(
            f"  {'proxy vs reference':40s} {'n':>3s} {'tau':>6s} {'top 3':>9s} {'its best':>9s}   {'CPU s':>9s}"
        )
        rows = []
        for label, r in (("mean of seeds 0 and 1", ref), ("seed 0", ref0), ("seed 1", ref1)):
            if len(r) < 3:
                continue
            rows.append(
                (f"builtin (150 steps) vs ref {label}", compare(r, prox["builtin"]), _cost(cells, task, "builtin"))
            )
            for at in (50, 100):  # the 150-step runs' own checkpoints: the rate is constant, so an N-step run
                early = table_scores(cells, task, "builtin", (0,), step=at)
                if early and label != "seed 1":
                    rows.append(
                        (f"builtin ({at} steps) vs ref {label}", compare(r, early), _early_cost(cells, task, at))
                    )
            rows.append(
                (
                    f"trunc8 ({TRUNC_STEPS} x {TRUNC_BATCH}) vs ref {label}",
                    compare(r, prox["trunc8"]),
                    _cost(cells, task, "trunc8"),
                )
            )
            if label != "seed 0" or not own:  # seed 0's own first steps: not an independent check
                rows.append(
                    (
                        f"short ({SHORT_STEPS} x {short_batch}) vs ref {label}",
                        compare(r, prox["short"]),
                        _short_cost(cells, task, "reference" if own else SHORT_SOURCE),
                    )
                )
        rows.append(("ref seed 0 vs ref seed 1 (the noise)", compare(ref0, ref1), None))
        b1 = table_scores(cells, task, "builtin", (1,))
        if b1:
            rows.append(("builtin seed 1 vs ref seed 0", compare(ref0, b1), _cost(cells, task, "builtin", seed=1)))
            rows.append(("builtin seed 0 vs builtin seed 1", compare(prox["builtin"], b1), None))
            for at in (50, 100):  # a shorter run against the other seed's full one: does the horizon lose ranking?
                for seed, full in ((0, b1), (1, prox["builtin"])):
                    early = table_scores(cells, task, "builtin", (seed,), step=at)
                    rows.append((f"builtin seed {seed} at {at} vs seed {1 - seed} at 150", compare(full, early), None))
        if own:
            rows.append(
                ("short vs ref seed 0 (its own run; biased)", compare(ref0, prox["short"]), _short_cost(cells, task))
            )
        lines += [_compare_line(*r) for r in rows]
        lines.append(
            f"  reference best: {ranking(ref)[0] if ref else '-'} (mean of seeds), {ranking(ref0)[0]} (seed 0)"
        )
        for m in prox:
            if prox[m]:
                lines.append(f"  {m} top 3: {', '.join(ranking(prox[m])[:3])}")
        lines.append("")
        lines.append("reference ranking by checkpoint; Kendall τ with the previous checkpoint and with the last one:")
        for label, seeds in (("seed 0", (0,)), ("seed 1", (1,)), ("mean of seeds", REF_SEEDS)):
            ckpt = {s: table_scores(cells, task, "reference", seeds, step=s) for s in steps}
            if not steps or len(ckpt[steps[-1]]) < 3:
                continue
            prev = None
            for s in steps:
                sc = ckpt[s]
                t_prev = compare(ckpt[prev], sc).get("tau", math.nan) if prev else math.nan
                t_last = compare(ckpt[steps[-1]], sc).get("tau", math.nan)
                lines.append(
                    f"  {label:14s} step {s:3d} ({len(sc):2d} plans): τ(prev) {_fmt(t_prev, 6, 3)}  "
                    f"τ(last) {_fmt(t_last, 6, 3)}  best {ranking(sc)[0]}, mean loss {statistics.mean(_finite(v) for v in sc.values()):.4f}"
                )
                prev = s
        lines.append("")
    lines.append("## conclusion")
    lines.append("")
    lines += results.get("conclusion", ["(written when the run is complete)"])
    text = "\n".join(lines) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def _cost(cells, task, model, seed=0):
    v = [c["cpu_s"] for c in cells.values() if c["task"] == task and c["model"] == model and c["seed"] == seed]
    return statistics.mean(v) if v else None


def _early_cost(cells, task, step):
    """CPU seconds of the built-in proxy's run to ``step``: its training to that step and one evaluation."""
    v = []
    for c in cells.values():
        if c["task"] == task and c["model"] == "builtin" and c["seed"] == 0:
            v += [p["train_cpu"] + p["eval_cpu"] / len(c["curve"]) for p in c["curve"] if p["step"] == step]
    return statistics.mean(v) if v else None


def _short_cost(cells, task, source="reference"):
    v = [short_cost(cells, task, p, 0, SHORT_STEPS, source) for p in PLANS_CACHE]
    v = [x for x in v if x is not None]
    return statistics.mean(v) if v else None


PLANS_CACHE: dict = {}


def main(argv=None) -> int:
    global REF_STEPS, REF_HELD_OUT, REF_SKIP, REF_BATCH, TASKS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "reports" / "transfer.json"))
    ap.add_argument("--report", default=str(ROOT / "reports" / "transfer.txt"))
    ap.add_argument("--work-dir", default="/tmp/bench_transfer")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tiny", action="store_true", help="2 plans, 5 steps: an end-to-end check")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--models", default="reference,builtin,trunc8", help="comma-separated models to run (default: all)")
    ap.add_argument(
        "--only",
        help="comma-separated task:model:seed groups to run (default: every group, in order); "
        "processes sharing --out and --work-dir split the cells between them",
    )
    ap.add_argument("--ref-steps", type=int, default=REF_STEPS, help=f"reference horizon (default {REF_STEPS})")
    ap.add_argument(
        "--ref-held-out",
        type=int,
        default=REF_HELD_OUT,
        help=f"held-out examples the reference scores (default {REF_HELD_OUT})",
    )
    ap.add_argument("--ref-batch", type=int, default=REF_BATCH, help=f"reference batch size (default {REF_BATCH})")
    ap.add_argument(
        "--tasks",
        default=",".join(TASKS),
        help=f"comma-separated tasks: docs or built-in tasks (default {','.join(TASKS)})",
    )
    args = ap.parse_args(argv)
    TASKS = tuple(args.tasks.split(","))
    REF_BATCH = args.ref_batch
    REF_STEPS, REF_HELD_OUT, REF_SKIP = args.ref_steps, args.ref_held_out, _ref_skip(args.ref_steps)

    import torch

    torch.set_num_threads(args.threads)
    from planner.cachedir import quiet_transformers  # noqa: F401 - transformers' warnings stay quiet below
    import transformers

    transformers.logging.set_verbosity_error()
    plans = _plans()
    if args.tiny:
        plans = {k: plans[k] for k in ("lisa γ2 K20 +E+H", "lora r16 γ30")}
    PLANS_CACHE.update(plans)
    out, rep, work = Path(args.out), Path(args.report), Path(args.work_dir)
    results = load_results(out)
    groups = [g for g in queue(args.tiny) if g[1] in args.models.split(",")]
    if args.only:
        groups = [g for g in groups if f"{g[0]}:{g[1]}:{g[2]}" in args.only.split(",")]
    results["settings"] = {
        "cells_total": len(groups) * len(plans),
        "target": f"{TARGET} ({TARGET_LAYERS} layers, hidden {TARGET_HIDDEN}, tied embeddings), float32 on CPU, torch threads {args.threads}",
        "plans": f"{len(plans)}; lr {LR:g} for layer weights, {LORA_LR:g} for LoRA (the target's; a narrower proxy trains at lr*576/hidden within [1e-4, 1e-2])",
        "data": f"{N_RECORDS} records per task; SmolLM2-based models: messages records with system turn {SYSTEM!r}, at most {MAX_SEQ_LEN} tokens",
        "reference": (
            f"{REF_STEPS} steps x batch {REF_BATCH}, seeds {list(REF_SEEDS)}, eval loss on the first {REF_HELD_OUT} held-out examples "
            f"at steps {[s for s in range(REF_EVERY, REF_STEPS + 1, REF_EVERY) if s not in REF_SKIP]}"
        )
        if not args.tiny
        else "tiny",
        "ref_checkpoints": [s for s in range(REF_EVERY, REF_STEPS + 1, REF_EVERY) if s not in REF_SKIP]
        if not args.tiny
        else [5],
        "builtin": f"built-in pretrained proxy (30 layers, hidden 64), {BUILTIN_STEPS} steps, batch = the workload's (8 for a file, 32 for the built-in task)",
        "trunc8": f"SmolLM2's first {TRUNC_LAYERS} layers, {TRUNC_STEPS} steps x batch {TRUNC_BATCH}, all its held-out examples",
        "short": f"SmolLM2 after {SHORT_STEPS} steps x batch {REF_BATCH} (the reference runs' seed-0 checkpoint; CPU = training to that step + one evaluation)"
        if not any(c["model"] == SHORT_SOURCE for c in results["cells"].values())
        else f"SmolLM2 after {SHORT_STEPS} steps x batch {SHORT_BATCH} (cells {SHORT_SOURCE!r}: the seed-0 runs of the 48 x 2 reference, "
        "reports/transfer_long.json, copied in; CPU = training to that step + one evaluation)",
    }
    if args.report_only:
        print(report(results, rep))
        return 0
    data = write_data(work)
    started = time.perf_counter()
    for task, model, seed in groups:
        for plan in plans:
            key = cell_key(task, model, plan, seed)
            sync_results(out, results)
            if key in results["cells"] or not claim(work, key):
                continue
            try:
                cell = run_cell(task, model, plan, seed, data, work, args.tiny)
            except Exception:  # noqa: BLE001 - one broken cell must not stop the others; a rerun retries it
                import traceback

                traceback.print_exc()
                print(f"FAILED {key}", flush=True)
                break
            sync_results(out, results, cell)
            report(results, rep)
            print(
                f"[{time.perf_counter() - started:7.0f}s] {key}: {cell['metric']:.4f} ({cell['cpu_s']:.1f} CPU s, "
                f"{cell['wall_s']:.1f} s)",
                flush=True,
            )
    print(report(results, rep))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
