"""The default model: a small Llama pretrained on the built-in corpus once, then cached.

The cache entry is an ordinary Hugging Face model directory (config, safetensors weights,
tokenizer) under ``$PLANNER_CACHE_DIR`` (default ``~/.cache/planner``), named by a hash of
everything that decides the weights: the recipe (thread count included), the tokenizer, a
sample of the corpus, the torch and transformers versions and PyTorch's CPU kernel family
(AVX2 and AVX-512 kernels round differently: measured, different weights), so any change
retrains and one name always means one set of weights.
Pretraining always runs on the recipe's fixed thread count (1), never on what the machine's
load or core count suggests: a float reduction split over a different number of threads sums
in a different order, and the weights (and every proxy score after them) would differ under
one name.
A file lock keeps two processes from pretraining the same entry at once, and the finished
directory appears by an atomic rename, so a reader never sees half of it.

The default recipe's weights ship with the package (``planner/data/default_weights``, 4.8 MB, made by
``studies/make_default_weights.py`` with this very recipe): a first run loads them instead of
pretraining. They are used only where the recipe they record (architecture, schedule, seed, tokenizer,
corpus; not the library versions that produced them) is the one asked for and the file's SHA-256 matches;
anywhere else the recipe runs as above.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from planner.cachedir import build_once, cache_root, quiet_transformers, say, weights_sha256
from planner.data.tasks import corpus_text
from planner.data.tokenizer import CHARS, SPECIALS, VOCAB_SIZE, CharTokenizer
from planner.errors import PlannerError
from planner.threads import torch_threads

SHIPPED = Path(__file__).parent / "default_weights"  # the default recipe's weights, package data
RECIPE_VERSION = 2  # bump when the training loop changes in a way the fields below do not show
CORPUS_SAMPLE_CHARS = 4096  # corpus text hashed into the cache key


@dataclass(frozen=True)
class PretrainRecipe:
    """Architecture and schedule of the default model's pretraining (all of it is in the cache key)."""

    # as deep as the target (recipe_for): the few active layers a budget allows (γ <= 3 of Llama-3-8B's 32 at
    # 24 GB, <= 12 at 40 GB) keep their own levels, where an 8-layer proxy rounded γ <= 6 to γ <= 2
    # (reports/deep_proxy_gamma.txt)
    layers: int = 32
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 128
    seq_len: int = 64
    batch_size: int = 32
    steps: int = 600
    lr: float = 3e-3
    warmup: int = 60
    weight_decay: float = 0.01
    seed: int = 0
    threads: int = 1  # PyTorch intra-op threads: fixed, so the weights do not depend on the machine's cores or load

    def __post_init__(self):
        if not isinstance(self.threads, int) or self.threads < 1:
            raise PlannerError(f"pretraining threads must be an integer >= 1 (a fixed count), but got {self.threads!r}")

    def config(self):
        from transformers import LlamaConfig  # transformers: deferred until a model is built (seconds on top of torch)

        return LlamaConfig(
            vocab_size=VOCAB_SIZE,
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            max_position_embeddings=max(256, 2 * self.seq_len),
            tie_word_embeddings=False,
            use_cache=False,
            bos_token_id=SPECIALS.index("<bos>"),
            eos_token_id=SPECIALS.index("<eos>"),
            pad_token_id=SPECIALS.index("<pad>"),
        )


DEFAULT_RECIPE = PretrainRecipe()
MAX_LAYERS = 32  # deeper targets map γ by depth (planner.tune.proxy.mapping); pretraining takes ~6.5 CPU-s per layer


def recipe_for(target_layers: int | None) -> PretrainRecipe:
    """The default model's recipe for a target of ``target_layers`` decoder layers: as deep, at most :data:`MAX_LAYERS`."""
    if target_layers is None:
        return DEFAULT_RECIPE
    if not isinstance(target_layers, int) or target_layers < 1:
        raise PlannerError(f"the target's decoder layers must be an integer >= 1, but got {target_layers!r}")
    return dataclasses.replace(DEFAULT_RECIPE, layers=min(target_layers, MAX_LAYERS))


runs = 0  # pretrainings done by this process (the cache should keep it at most 1)


def recipe_fingerprint(recipe: PretrainRecipe) -> dict:
    """Everything that decides the pretrained weights (the cache key hashes it)."""
    import transformers  # transformers: deferred until a model is built (seconds on top of torch)

    return {
        "recipe": dataclasses.asdict(recipe),
        "version": RECIPE_VERSION,
        "specials": list(SPECIALS),
        "chars": CHARS,
        "corpus": corpus_text(random.Random(0), CORPUS_SAMPLE_CHARS),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_kernels": torch.backends.cpu.get_cpu_capability(),
    }


ENVIRONMENT = ("torch", "transformers", "cpu_kernels")  # what produced the weights, not what the recipe is


def recipe_identity(recipe: PretrainRecipe) -> dict:
    """The recipe without the environment that runs it: what shipped weights must have been made from."""
    fp = recipe_fingerprint(recipe)
    corpus = fp.pop("corpus")
    identity = {k: v for k, v in fp.items() if k not in ENVIRONMENT}
    identity["corpus_sha256"] = hashlib.sha256(corpus.encode()).hexdigest()
    return identity


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shipped_model(recipe: PretrainRecipe) -> Path | None:
    """The packaged weights when they were made from ``recipe`` and are intact, else None."""
    meta_path = SHIPPED / "planner_pretrain.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("identity") != recipe_identity(recipe):
        return None
    weights = SHIPPED / "model.safetensors"
    if not weights.is_file() or file_sha256(weights) != meta.get("file_sha256"):
        say(f"the packaged default weights at {SHIPPED} do not match their recorded SHA-256: pretraining instead")
        return None
    return SHIPPED


def cache_key(recipe: PretrainRecipe) -> str:
    """Hash of :func:`recipe_fingerprint`: changes whenever any part of the recipe changes."""
    blob = json.dumps(recipe_fingerprint(recipe), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_dir(recipe: PretrainRecipe = DEFAULT_RECIPE) -> Path:
    return cache_root() / f"default-llama-{cache_key(recipe)}"


def pretrain(recipe: PretrainRecipe = DEFAULT_RECIPE, *, progress: bool = True):
    """Train the default model from scratch on the built-in corpus; returns (model, stats)."""
    global runs
    runs += 1
    # the recipe's thread count, whatever the caller set: the weights must not depend on it
    with torch_threads(recipe.threads):
        return _pretrain(recipe, progress)


def _pretrain(recipe: PretrainRecipe, progress: bool):
    from transformers import LlamaForCausalLM  # transformers: deferred until a model is built (seconds on top of torch)

    tok = CharTokenizer()
    torch.manual_seed(recipe.seed)
    model = LlamaForCausalLM(recipe.config()).train()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay, betas=(0.9, 0.98))

    def lr_at(step):  # linear warmup, cosine decay to 10%
        if step < recipe.warmup:
            return (step + 1) / recipe.warmup
        t = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(t * torch.pi)).item())

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    rng = random.Random(recipe.seed)
    if progress:
        say(
            f"first use: pretraining the built-in default model once (Llama, {recipe.layers} layers, hidden "
            f"{recipe.hidden}, {n_params / 1e6:.2f}M parameters, {recipe.steps} steps of {recipe.batch_size}x{recipe.seq_len} "
            f"characters of built-in text on {torch.get_num_threads()} CPU thread(s)); later runs load it from {cache_root()}"
        )
    t0, cpu0, losses, shown = time.perf_counter(), time.process_time(), [], 0.0
    for step in range(recipe.steps):
        # each row: <bos> + a window of newline-separated corpus lines
        rows = [tok.encode(corpus_text(rng, recipe.seq_len - 1), bos=True) for _ in range(recipe.batch_size)]
        ids = torch.tensor(rows)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach().item())
        elapsed = time.perf_counter() - t0
        if progress and (elapsed - shown > 10 or step + 1 == recipe.steps):
            shown = elapsed
            eta = elapsed / (step + 1) * (recipe.steps - step - 1)
            say(
                f"  pretraining step {step + 1}/{recipe.steps}, loss {sum(losses[-50:]) / len(losses[-50:]):.3f}, "
                f"{elapsed:.0f}s elapsed, ~{eta:.0f}s left"
            )
    # CPU seconds as well: on a shared machine the wall time says more about the other jobs
    stats = {
        "seconds": round(time.perf_counter() - t0, 2),
        "cpu_seconds": round(time.process_time() - cpu0, 2),
        "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
        "first_loss": round(losses[0], 4),
        "parameters": n_params,
        "threads": torch.get_num_threads(),
    }
    model.config.use_cache = False
    return model.eval(), stats


def _complete(path: Path) -> bool:
    return (path / "planner_pretrain.json").is_file() and (path / "config.json").is_file()


def ensure_default_model(
    recipe: PretrainRecipe = DEFAULT_RECIPE, *, progress: bool = True, shipped: bool = True
) -> Path:
    """The default model directory: the packaged weights where they are ``recipe``'s (``shipped``), else the
    cached pretraining, pretraining first when it is not there yet."""
    if shipped and (path := shipped_model(recipe)) is not None:
        return path
    final = cache_dir(recipe)

    def build(tmp: Path) -> None:
        model, stats = pretrain(recipe, progress=progress)
        with quiet_transformers():
            model.save_pretrained(tmp)
        CharTokenizer().to_hf().save_pretrained(tmp)
        fingerprint = {k: v for k, v in recipe_fingerprint(recipe).items() if k != "corpus"}
        meta = {**fingerprint, "key": cache_key(recipe), "weights_sha256": weights_sha256(model), **stats}
        (tmp / "planner_pretrain.json").write_text(json.dumps(meta, indent=2))
        if progress:
            say(
                f"  pretrained in {stats['seconds']:.0f}s (loss {stats['first_loss']:.2f} -> {stats['final_loss']:.2f}); cached at {final}"
            )

    return build_once(final, _complete, build)
