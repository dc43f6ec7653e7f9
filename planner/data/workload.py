"""Workload: a model to fine-tune, training batches, and a metric on a held-out split.

Every workload (the built-in default and users' own data) is a list of tokenized examples:
a prompt (not trained on: labels -100) and an answer (trained on). The metric is either the
mean token cross-entropy of the held-out answers (``eval_loss``, minimize; any workload) or the
exact-match accuracy of the greedy-decoded answer (``accuracy``, maximize; needs an answer to
match). A workload scored by eval loss whose examples have answers to match also reports the
accuracy as a secondary figure (:meth:`Workload.secondary`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterator, Literal

import torch

from planner.errors import PlannerError

IGNORE_INDEX = -100  # labels that the loss skips (the prompt, padding)
EVAL_BATCH = 64  # held-out examples decoded at once
TABLE_MAX_TOKENS = 1 << 22  # a training split up to this many padded tokens is collated once (3 long tensors: 96 MiB)
Metric = Literal["accuracy", "eval_loss"]
METRICS = ("eval_loss", "accuracy")


@dataclass(frozen=True)
class Example:
    """Token ids of one example; ``target`` is the text the greedy answer must equal (None: eval loss)."""

    prompt: tuple[int, ...]
    answer: tuple[int, ...]
    target: str | None = None

    def __len__(self) -> int:
        return len(self.prompt) + len(self.answer)


class Workload:
    """A fine-tuning job for the tuner: see the module docstring for the metric."""

    def __init__(
        self,
        *,
        name: str,
        spec,
        model_source: str,
        train: list[Example],
        held_out: list[Example],
        model_factory: Callable[[int], torch.nn.Module],
        decode: Callable[[list[int]], str],
        pad_id: int,
        eos_id: int | None,
        metric_name: Metric,
        batch_size: int = 8,
    ):
        if metric_name not in METRICS:
            raise PlannerError(f"metric must be one of {list(METRICS)}, but got {metric_name!r}")
        self.name = name
        self.spec = spec
        self.model_source = model_source
        self.train = list(train)
        self.held_out = list(held_out)
        self.metric_name = metric_name
        self.direction: Literal["maximize", "minimize"] = "maximize" if metric_name == "accuracy" else "minimize"
        self._factory = model_factory
        self._decode = decode
        self.pad_id = pad_id
        self.eos_id = eos_id
        self.seq_len = max(len(e) for e in self.train + self.held_out)
        self.max_answer_len = max(len(e.answer) for e in self.held_out)
        self.batch_size = batch_size  # suggested proxy batch size
        self._table: tuple | None = None  # (train list, its length, _Collated): see _train_table
        self._eval_cache: tuple | None = None  # (key, held-out list, collated batches): see _eval_batches

    def __repr__(self) -> str:
        return (
            f"Workload({self.name!r}, model={self.model_source!r}, {len(self.train)} train / "
            f"{len(self.held_out)} held-out, metric={self.metric_name} ({self.direction}), seq_len={self.seq_len})"
        )

    def new_model(self, seed: int = 0) -> torch.nn.Module:
        """A fresh copy of the (pre)trained model: fp32, ``use_cache=False``, train mode."""
        torch.manual_seed(seed)
        model = self._factory(seed)
        # a transformers model's config, which nn.Module.__getattr__ types as Tensor | Module
        model.config.use_cache = False  # type: ignore[union-attr]
        return model.train()

    def train_batches(self, batch_size: int, seed: int) -> Iterator[dict]:
        """Endless batches (shuffled epochs, seeded): ``input_ids``, ``attention_mask``, ``labels``."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise PlannerError(f"batch_size must be an integer >= 1, but got {batch_size!r}")
        rng = random.Random(seed)
        table = self._train_table()
        order: list[int] = []
        while True:
            while len(order) < batch_size:  # a small training set: batches span epochs
                more = list(range(len(self.train)))
                rng.shuffle(more)
                order.extend(more)
            chosen, order = order[:batch_size], order[batch_size:]
            yield table.batch(chosen) if table is not None else collate([self.train[i] for i in chosen], self.pad_id)

    def _train_table(self) -> "_Collated | None":
        """The training split collated once (see :class:`_Collated`), or None where that would be large."""
        train = self.train
        if len(train) * max((len(e) for e in train), default=0) > TABLE_MAX_TOKENS:
            return None
        cached = getattr(self, "_table", None)
        if cached is None or cached[0] is not train or cached[1] != len(train):
            cached = (train, len(train), _Collated(train, self.pad_id))
            self._table = cached
        return cached[2]

    def _eval_batches(self, examples: list[Example]) -> list[dict[str, torch.Tensor]]:
        """``examples`` (a prefix of the held-out split) collated in batches of :data:`EVAL_BATCH`, kept for the
        next evaluation of the same split."""
        key = (id(self.held_out), len(self.held_out), len(examples))
        cached = getattr(self, "_eval_cache", None)
        if cached is None or cached[0] != key or cached[1] is not self.held_out:
            batches = [
                collate(examples[start : start + EVAL_BATCH], self.pad_id)
                for start in range(0, len(examples), EVAL_BATCH)
            ]
            cached = (key, self.held_out, batches)
            self._eval_cache = cached
        return cached[2]

    @property
    def has_targets(self) -> bool:
        """Whether every held-out example has an answer to match (exact-match accuracy is defined)."""
        return all(e.target is not None for e in self.held_out)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, max_examples: int | None = None, metric: str | None = None) -> float:
        """``metric`` (default: the workload's) on the first ``max_examples`` held-out examples (all by default)."""
        metric = metric or self.metric_name
        examples = self.held_out[: max_examples or len(self.held_out)]
        was_training = model.training
        model.eval()
        try:
            if metric == "accuracy":
                if not self.has_targets:
                    raise PlannerError(
                        f"accuracy needs an answer to match in every held-out example, but {self.name!r} has none"
                    )
                answers = greedy_answers(
                    model,
                    [e.prompt for e in examples],
                    max_new_tokens=self.max_answer_len,
                    pad_id=self.pad_id,
                    eos_id=self.eos_id,
                )
                targets = [e.target for e in examples if e.target is not None]  # all of them (has_targets)
                hits = sum(self._decode(a).strip() == t.strip() for a, t in zip(answers, targets))
                return hits / len(examples)
            return eval_loss(model, examples, self.pad_id, batches=self._eval_batches(examples))
        finally:
            model.train(was_training)

    def secondary(self, model: torch.nn.Module) -> dict[str, float]:
        """Figures shown next to the metric, not optimized: the accuracy of a workload scored by eval loss
        whose examples have answers to match (one greedy decode of the held-out split), else none."""
        if self.metric_name == "eval_loss" and self.has_targets:
            return {"accuracy": self.evaluate(model, metric="accuracy")}
        return {}


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; labels are the answer tokens, -100 on prompt and padding."""
    width = max(len(e) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, e in enumerate(examples):
        seq = list(e.prompt) + list(e.answer)
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        labels[row, len(e.prompt) : len(seq)] = torch.tensor(e.answer)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class _Collated:
    """Examples right-padded once to the longest of them: a batch of rows is then a gather and a cut to its
    longest row, the same tensors as :func:`collate` builds from those examples (what a proxy step would
    otherwise rebuild row by row, every step)."""

    def __init__(self, examples: list[Example], pad_id: int):
        full = collate(examples, pad_id)
        self.ids, self.mask, self.labels = full["input_ids"], full["attention_mask"], full["labels"]
        self.lengths = [len(e) for e in examples]

    def batch(self, rows: list[int]) -> dict[str, torch.Tensor]:
        index = torch.tensor(rows, dtype=torch.long)
        width = max(self.lengths[i] for i in rows)
        return {
            key: t.index_select(0, index)[:, :width].contiguous()
            for key, t in (("input_ids", self.ids), ("attention_mask", self.mask), ("labels", self.labels))
        }


def _device(model) -> torch.device:
    return next(model.parameters()).device


def greedy_answers(
    model,
    prompts: list[tuple[int, ...]],
    *,
    max_new_tokens: int,
    pad_id: int,
    eos_id: int | None,
    batch_size: int = EVAL_BATCH,
) -> list[list[int]]:
    """Greedy continuations (cut at ``eos_id``) of each prompt, batched by similar length.

    Prompts are sorted by length so most batches need no padding; where lengths differ the
    batch is left-padded and ``generate`` derives positions from the attention mask.
    """
    # transformers: deferred until answers are decoded (seconds on top of torch)
    from transformers import GenerationConfig

    gen = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=None,
    )
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    dev = _device(model)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            p = prompts[i]
            ids[row, width - len(p) :] = torch.tensor(p)
            mask[row, width - len(p) :] = 1
        new = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), generation_config=gen)[:, width:]
        for row, i in enumerate(idx):
            toks = new[row].tolist()
            if eos_id is not None and eos_id in toks:
                toks = toks[: toks.index(eos_id)]
            out[i] = toks
    return out


def eval_loss(
    model,
    examples: list[Example],
    pad_id: int,
    batch_size: int = EVAL_BATCH,
    batches: list[dict[str, torch.Tensor]] | None = None,
) -> float:
    """Mean cross-entropy per answer token (nats), over all held-out answer tokens.

    ``batches``: ``examples`` already collated in batches of ``batch_size`` (the same tensors, built once)."""
    dev = _device(model)
    total, count = 0.0, 0
    if batches is None:
        batches = [
            collate(examples[start : start + batch_size], pad_id) for start in range(0, len(examples), batch_size)
        ]
    for batch in batches:
        logits = model(input_ids=batch["input_ids"].to(dev), attention_mask=batch["attention_mask"].to(dev)).logits
        labels = batch["labels"][:, 1:].to(dev)
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]),
            labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        total += float(nll)
        count += int((labels != IGNORE_INDEX).sum())
    return total / max(count, 1)
