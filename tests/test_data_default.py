"""The embedded default workload: tokenizer, tasks, split, cache, batches and the metric."""

import dataclasses
import json
import random
import threading

import pytest
import torch

from planner.data import pretrain as pretrain_mod
from planner.data import load_workload
from planner.data.default import default_workload, task_examples
from planner.cachedir import weights_sha256
from planner.data.pretrain import PretrainRecipe, cache_dir, cache_key, ensure_default_model, recipe_for
from planner.data.tasks import TASKS, corpus_text
from planner.data.tokenizer import CHARS, EOS, CharTokenizer
from planner.data.workload import IGNORE_INDEX, greedy_answers
from planner.errors import PlannerError

TINY = PretrainRecipe(
    layers=2, hidden=32, heads=2, kv_heads=1, intermediate=64, seq_len=32, batch_size=4, steps=3, warmup=1
)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PLANNER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def wl(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLANNER_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        return default_workload(recipe=TINY, n_train=64, n_held_out=24, progress=False)


def test_tokenizer_round_trip_and_hf_twin():
    tok = CharTokenizer()
    text = CHARS + "count 1 2 3\nreverse ab:"
    ids = tok.encode(text, bos=True, eos=True)
    assert tok.decode(ids) == text
    assert len(set(tok.encode(CHARS))) == len(CHARS)
    assert max(ids) < tok.vocab_size
    hf = tok.to_hf()
    assert hf(text)["input_ids"] == tok.encode(text, bos=True)
    assert hf.decode(hf(text)["input_ids"], skip_special_tokens=True) == text
    assert tok.decode(tok.encode("A!")) == ""  # unknown characters are <unk>, dropped on decode


def test_task_answers_are_correct():
    rng = random.Random(3)
    for _ in range(200):
        p, a = TASKS["addition"](rng, digits=3)
        x, y = p[:-1].split("+")
        assert int(a) == int(x) + int(y)
        p, a = TASKS["reversal"](rng)
        assert a == p[len("reverse ") : -1][::-1]
        p, a = TASKS["sort"](rng)
        assert a == "".join(sorted(p[len("sort ") : -1]))
        p, a = TASKS["lookup"](rng)
        table, key = p.split("|")
        pairs = {kv[0]: kv[1:] for kv in table.split(" ")}
        assert len(pairs) == table.count(" ") + 1  # keys are distinct
        assert pairs[key] == a
        p, a = TASKS["maximum"](rng)
        nums = [int(x) for x in p[len("max ") : -2].split()]
        assert int(a) == max(nums) and len(set(nums)) == len(nums)
        p, a = TASKS["increment"](rng)
        x, y = p[:-1].split("+")
        assert int(a) == int(x) + int(y) and 1 <= int(y) <= 9
    tok = CharTokenizer()
    for name in TASKS:  # every task and the corpus stay inside the vocabulary
        p, a = TASKS[name](rng)
        assert tok.decode(tok.encode(p + a)) == p + a
    text = corpus_text(random.Random(0), 500)
    assert len(text) == 500 and tok.decode(tok.encode(text)) == text


def test_split_is_disjoint_and_deterministic():
    train, held = task_examples("lookup", seed=1, n_train=500, n_held_out=100)
    assert len(held) == 100 and len({p for p, _ in held}) == 100
    assert not {p for p, _ in train} & {p for p, _ in held}
    assert (train, held) == task_examples("lookup", seed=1, n_train=500, n_held_out=100)
    assert held != task_examples("lookup", seed=2, n_train=500, n_held_out=100)[1]
    with pytest.raises(PlannerError, match="task must be one of"):
        task_examples("nope", seed=0)
    with pytest.raises(PlannerError, match="enough distinct prompts"):
        task_examples("sort", seed=0, n_train=10, n_held_out=1200, options={"length": 3})


def test_cache_pretrains_once_and_key_follows_recipe(cache):
    before = pretrain_mod.runs
    path = ensure_default_model(TINY, progress=False)
    assert path.parent == cache and (path / "config.json").is_file() and (path / "tokenizer.json").is_file()
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert ensure_default_model(TINY, progress=False) == path
    assert pretrain_mod.runs == before + 1
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in cache.iterdir() if ".tmp-" in p.name]
    meta = json.loads((path / "planner_pretrain.json").read_text())
    assert meta["key"] == cache_key(TINY) and meta["threads"] == 1 and meta["torch"] == torch.__version__
    from transformers import LlamaForCausalLM

    assert meta["weights_sha256"] == weights_sha256(LlamaForCausalLM.from_pretrained(path))


def test_concurrent_first_use_pretrains_once(cache):
    before = pretrain_mod.runs
    paths = []
    threads = [
        threading.Thread(target=lambda: paths.append(ensure_default_model(TINY, progress=False))) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(paths) == 2 and paths[0] == paths[1]
    assert pretrain_mod.runs == before + 1


def test_progress_message_explains_first_run(cache, capsys):
    ensure_default_model(TINY)
    err = capsys.readouterr().err
    assert "first use: pretraining" in err and "cached at" in err
    ensure_default_model(TINY)
    assert capsys.readouterr().err == ""


def test_workload_contract(wl):
    assert wl.name == "default:maximum" and wl.metric_name == "eval_loss" and wl.direction == "minimize"
    assert wl.has_targets
    assert wl.spec.num_layers == TINY.layers and wl.spec.model_type == "llama"
    assert len(wl.train) == 64 and len(wl.held_out) == 24
    m1, m2 = wl.new_model(0), wl.new_model(1)
    assert m1.config.use_cache is False and m1.training
    assert all(p.dtype == torch.float32 for p in m1.parameters())
    assert m1 is not m2 and m1.model.embed_tokens.weight.data_ptr() != m2.model.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(m1.state_dict(), m2.state_dict())  # both are the pretrained weights


def test_train_batches_mask_prompt_and_are_seeded(wl):
    it = wl.train_batches(8, seed=5)
    batches = [next(it) for _ in range(10)]  # more than one epoch of 64 examples
    b = batches[0]
    assert set(b) == {"input_ids", "attention_mask", "labels"}
    assert b["input_ids"].shape == b["labels"].shape == (8, b["input_ids"].shape[1]) <= (8, wl.seq_len)
    tok = CharTokenizer()
    for row in range(8):
        n = int(b["attention_mask"][row].sum())
        labels = b["labels"][row][:n]
        answer = labels[labels != IGNORE_INDEX].tolist()
        assert answer[-1] == EOS
        prompt = tok.decode(b["input_ids"][row][: n - len(answer)])
        assert prompt.startswith("max ") and prompt.endswith(": ") and (b["labels"][row][n:] == IGNORE_INDEX).all()
    again = next(wl.train_batches(8, seed=5))
    assert torch.equal(again["input_ids"], b["input_ids"])
    assert not torch.equal(next(wl.train_batches(8, seed=6))["input_ids"], b["input_ids"])


def _manual_greedy(model, prompt, max_new):
    ids = list(prompt)
    out = []
    for _ in range(max_new):
        nxt = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        if nxt == EOS:
            break
        out.append(nxt)
        ids.append(nxt)
    return out


def test_evaluate_matches_manual_greedy_decoding(wl):
    model = wl.new_model(0).eval()
    prompts = [e.prompt for e in wl.held_out]
    batched = greedy_answers(
        model, prompts, max_new_tokens=wl.max_answer_len, pad_id=wl.pad_id, eos_id=wl.eos_id, batch_size=7
    )
    with torch.no_grad():
        manual = [_manual_greedy(model, p, wl.max_answer_len) for p in prompts]
    assert batched == manual
    tok = CharTokenizer()
    expected = sum(tok.decode(a) == e.target for a, e in zip(manual, wl.held_out)) / len(prompts)
    assert wl.evaluate(model, metric="accuracy") == expected
    assert 0.0 <= wl.evaluate(model, max_examples=5, metric="accuracy") <= 1.0
    assert wl.secondary(model) == {"accuracy": expected}  # shown next to the eval loss


def test_evaluate_is_the_answer_tokens_cross_entropy(wl):
    """The default metric against a per-example sum of -log p(answer token | everything before it)."""
    model = wl.new_model(0).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for e in wl.held_out:
            seq = list(e.prompt) + list(e.answer)
            logp = torch.log_softmax(model(input_ids=torch.tensor([seq])).logits[0].double(), dim=-1)
            for i in range(len(e.prompt), len(seq)):
                total -= float(logp[i - 1, seq[i]])
                count += 1
    assert wl.evaluate(model) == pytest.approx(total / count, rel=1e-5)
    assert count == sum(len(e.answer) for e in wl.held_out)


def test_an_unknown_metric_is_refused(cache):
    with pytest.raises(PlannerError, match="metric must be one of"):
        default_workload(recipe=TINY, n_train=8, n_held_out=4, progress=False, metric="bleu")


def test_evaluate_scores_exact_matches(wl, monkeypatch):
    """With the decoder replaced by an oracle, evaluate() is 1.0; with every other answer wrong, 0.5."""
    import planner.data.workload as wmod

    answers = {e.prompt: list(e.answer[:-1]) for e in wl.held_out}  # the target without <eos>
    monkeypatch.setattr(wmod, "greedy_answers", lambda model, prompts, **kw: [answers[p] for p in prompts])
    assert wl.evaluate(wl.new_model(0), metric="accuracy") == 1.0
    wrong = {p: (a if i % 2 else a + [a[0]]) for i, (p, a) in enumerate(answers.items())}
    monkeypatch.setattr(wmod, "greedy_answers", lambda model, prompts, **kw: [wrong[p] for p in prompts])
    assert wl.evaluate(wl.new_model(0), metric="accuracy") == 0.5


@pytest.mark.slow
def test_default_recipe_pretrains_and_a_proxy_run_learns(tmp_path, monkeypatch):
    monkeypatch.setenv("PLANNER_CACHE_DIR", str(tmp_path))
    wl = load_workload(seed=0)
    model = wl.new_model(0)
    before, before_acc = wl.evaluate(model), wl.evaluate(model, metric="accuracy")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    it = wl.train_batches(32, seed=0)
    for _ in range(100):
        loss = model(**next(it)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    after, after_acc = wl.evaluate(model), wl.evaluate(model, metric="accuracy")
    assert after < before - 0.2 and after_acc > before_acc + 0.2


def _weight_bytes(model) -> bytes:
    return b"".join(k.encode() + v.numpy().tobytes() for k, v in sorted(model.state_dict().items()))


def test_pretraining_gives_the_same_bytes_whatever_the_thread_setting(monkeypatch):
    before = torch.get_num_threads()
    seen = []
    real = pretrain_mod._pretrain
    monkeypatch.setattr(pretrain_mod, "_pretrain", lambda r, p: (seen.append(torch.get_num_threads()), real(r, p))[1])
    weights = []
    for ambient in (2, 1):  # as on an idle 2-core machine, then as on a busy one
        torch.set_num_threads(ambient)
        model, stats = pretrain_mod.pretrain(TINY, progress=False)
        assert stats["threads"] == TINY.threads == 1
        assert torch.get_num_threads() == ambient  # the caller's setting comes back
        weights.append(_weight_bytes(model))
    torch.set_num_threads(before)
    assert seen == [1, 1]
    assert weights[0] == weights[1]
    with pytest.raises(PlannerError, match="threads must be an integer >= 1"):
        PretrainRecipe(threads=0)


@pytest.mark.parametrize(
    "field, value",
    [
        ("layers", 3),
        ("hidden", 48),
        ("heads", 4),
        ("kv_heads", 2),
        ("intermediate", 96),
        ("seq_len", 48),
        ("batch_size", 5),
        ("steps", 4),
        ("lr", 1e-3),
        ("warmup", 2),
        ("weight_decay", 0.1),
        ("seed", 1),
        ("threads", 2),
    ],
)
def test_cache_name_changes_with_each_recipe_field(field, value):
    assert getattr(TINY, field) != value
    other = dataclasses.replace(TINY, **{field: value})
    assert cache_key(other) != cache_key(TINY) and cache_dir(other).name != cache_dir(TINY).name


def test_every_recipe_field_is_covered_by_the_cache_name_test():
    covered = {
        "layers",
        "hidden",
        "heads",
        "kv_heads",
        "intermediate",
        "seq_len",
        "batch_size",
        "steps",
        "lr",
        "warmup",
        "weight_decay",
        "seed",
        "threads",
    }
    assert {f.name for f in dataclasses.fields(PretrainRecipe)} == covered


def test_cache_name_changes_with_software_versions_and_data(monkeypatch):
    import transformers

    key = cache_key(TINY)
    monkeypatch.setattr(torch, "__version__", torch.__version__ + ".other")
    assert cache_key(TINY) != key
    monkeypatch.undo()
    monkeypatch.setattr(transformers, "__version__", transformers.__version__ + ".other")
    assert cache_key(TINY) != key
    monkeypatch.undo()
    monkeypatch.setattr(pretrain_mod, "CHARS", pretrain_mod.CHARS + "@")
    assert cache_key(TINY) != key
    monkeypatch.undo()
    monkeypatch.setattr(pretrain_mod, "corpus_text", lambda rng, n: "x" * n)
    assert cache_key(TINY) != key
    monkeypatch.undo()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "OTHER")
    assert cache_key(TINY) != key
    monkeypatch.undo()
    assert cache_key(TINY) == key


def test_data_builtin_names_a_built_in_task(monkeypatch):
    import planner.data.load as load_mod

    calls = []
    monkeypatch.setattr(load_mod, "default_workload", lambda task, **kw: calls.append((task, kw)) or "wl")
    assert load_workload(data="builtin:sort", seed=3) == "wl"
    assert load_workload(layers=16) == "wl"
    assert calls == [
        ("sort", {"seed": 3, "max_examples": None, "recipe": recipe_for(None)}),
        ("maximum", {"seed": 0, "max_examples": None, "recipe": recipe_for(16)}),
    ]
    assert (recipe_for(None).layers, recipe_for(16).layers, recipe_for(80).layers) == (32, 16, 32)
    with pytest.raises(PlannerError, match=r"builtin:<task> must name one of .*'sort'.* but got 'nope'"):
        load_workload(data="builtin:nope")
    assert len(calls) == 2  # refused before any pretraining


def test_packaged_weights_are_the_default_recipes_and_intact():
    """The shipped weights: recorded as made from the default recipe, and their tensors hash to what was recorded
    (computed here from the loaded tensors, not from the file hash the loader checks)."""
    from transformers import LlamaForCausalLM

    from planner.data.pretrain import DEFAULT_RECIPE, SHIPPED, recipe_identity, shipped_model

    meta = json.loads((SHIPPED / "planner_pretrain.json").read_text())
    assert shipped_model(DEFAULT_RECIPE) == SHIPPED
    assert meta["identity"] == recipe_identity(DEFAULT_RECIPE)
    model = LlamaForCausalLM.from_pretrained(SHIPPED)
    assert weights_sha256(model) == meta["weights_sha256"]
    assert model.config.num_hidden_layers == DEFAULT_RECIPE.layers and meta["parameters"] == model.num_parameters()
    assert ensure_default_model(DEFAULT_RECIPE, progress=False) == SHIPPED
    # any other recipe (another depth: a shallower target) is pretrained, never served the packaged weights
    assert (
        shipped_model(recipe_for(4)) is None and shipped_model(dataclasses.replace(DEFAULT_RECIPE, steps=599)) is None
    )


def test_damaged_packaged_weights_are_not_used(tmp_path, monkeypatch, capsys):
    import shutil

    from planner.data.pretrain import DEFAULT_RECIPE, SHIPPED, shipped_model

    copy = tmp_path / "default_weights"
    shutil.copytree(SHIPPED, copy)
    monkeypatch.setattr(pretrain_mod, "SHIPPED", copy)
    assert shipped_model(DEFAULT_RECIPE) == copy
    with open(copy / "model.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    assert shipped_model(DEFAULT_RECIPE) is None
    assert "do not match their recorded SHA-256: pretraining instead" in capsys.readouterr().err


@pytest.mark.slow
def test_the_committed_recipe_reproduces_the_packaged_weights(tmp_path, monkeypatch):
    """Where this machine runs the library versions and CPU kernels that made the packaged weights, pretraining
    the default recipe gives the same bytes (elsewhere float reductions may round differently: skipped)."""
    from planner.data.pretrain import DEFAULT_RECIPE, ENVIRONMENT, SHIPPED, recipe_fingerprint

    meta = json.loads((SHIPPED / "planner_pretrain.json").read_text())
    here = {k: recipe_fingerprint(DEFAULT_RECIPE)[k] for k in ENVIRONMENT}
    if here != meta["produced_with"]:
        pytest.skip(f"made with {meta['produced_with']}, this machine has {here}")
    monkeypatch.setenv("PLANNER_CACHE_DIR", str(tmp_path))
    model, _ = pretrain_mod.pretrain(DEFAULT_RECIPE, progress=False)
    assert weights_sha256(model) == meta["weights_sha256"]
