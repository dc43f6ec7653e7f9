"""The configuration keys each trainer reads, taken from its own source (fixtures/trainer-fields.json).

axolotl, LMFlow and LLaMA-Factory are not installable here, so their keys were read from their
source at the commits ``trainer_rules`` cites, with Python's ``ast`` (no trainer code runs): every
annotated field of the classes each trainer parses its configuration into, with their bases.
Regenerate from checkouts at those commits with::

    python tests/trainer_fields.py AXOLOTL_DIR LMFLOW_DIR LLAMAFACTORY_DIR

Classes the trainers take from transformers (LMFlow's ``FinetunerArguments`` extends
``TrainingArguments``, LLaMA-Factory's ``TrainingArguments`` extends ``Seq2SeqTrainingArguments``)
are named here and read from the installed transformers by the tests.
"""

from __future__ import annotations

import ast
import json
import sys
from functools import lru_cache
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "trainer-fields.json"

SOURCES = {
    "axolotl": {
        "commit": "067b021",
        "files": "src/axolotl/utils/schemas/**/*.py",
        "outside": ["BaseModel"],
        "config": ["AxolotlInputConfig"],
        "datasets": ["SFTDataset"],
        "prompt_type": ["UserDefinedPrompterType"],
    },
    # examples/finetune.py: HfArgumentParser((ModelArguments, DatasetArguments, FinetunerArguments))
    "lmflow": {
        "commit": "f3597db",
        "files": "src/lmflow/args.py",
        "outside": ["TrainingArguments"],
        "config": ["ModelArguments", "DatasetArguments", "FinetunerArguments"],
        "external": "TrainingArguments",
    },
    # src/llamafactory/hparams/parser.py _TRAIN_ARGS; training_args.py: BaseTrainingArguments = Seq2SeqTrainingArguments
    "llamafactory": {
        "commit": "ff6d4d1",
        "files": "src/llamafactory/hparams/*.py",
        "outside": ["BaseTrainingArguments"],
        "config": [
            "ModelArguments",
            "DataArguments",
            "TrainingArguments",
            "FinetuningArguments",
            "GeneratingArguments",
        ],
        "external": "Seq2SeqTrainingArguments",
    },
}
NOT_FIELDS = {"model_config"}  # pydantic's settings, not a key

# LLaMA-Factory ff6d4d1, src/llamafactory/data/parser.py: DatasetAttr.formatting and DatasetAttr.join, the keys a
# dataset_info.json entry's "columns" and "tags" may hold (a dict's keys, not class fields: listed here by hand)
LLAMAFACTORY_FORMATTINGS = {"alpaca", "sharegpt", "openai"}
LLAMAFACTORY_COLUMNS = {
    "prompt",
    "query",
    "response",
    "history",
    "messages",
    "system",
    "tools",
    "images",
    "videos",
    "audios",
    "chosen",
    "rejected",
    "kto_tag",
}
LLAMAFACTORY_TAGS = {
    "role_tag",
    "content_tag",
    "user_tag",
    "assistant_tag",
    "observation_tag",
    "function_tag",
    "system_tag",
}


def _classes(files) -> dict[str, tuple[list[str], list[str]]]:
    """{class name: (base names, field names and pydantic aliases)} of the top-level classes in ``files``."""
    out: dict[str, tuple[list[str], list[str]]] = {}
    for path in files:
        for node in ast.parse(Path(path).read_text()).body:
            if not isinstance(node, ast.ClassDef):
                continue
            fields = []
            for st in node.body:
                if not (isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name)):
                    continue
                if (
                    st.target.id.startswith("_")
                    or st.target.id in NOT_FIELDS
                    or "ClassVar" in ast.unparse(st.annotation)
                ):
                    continue
                keywords = st.value.keywords if isinstance(st.value, ast.Call) else []
                if any(
                    kw.arg == "init" and isinstance(kw.value, ast.Constant) and kw.value.value is False
                    for kw in keywords
                ):
                    continue  # field(init=False): HfArgumentParser takes no argument for it
                fields.append(st.target.id)
                fields += [
                    kw.value.value
                    for kw in keywords  # Field(alias=...): the key under its alias too
                    if kw.arg in ("alias", "validation_alias") and isinstance(kw.value, ast.Constant)
                ]
            assert node.name not in out, f"two classes named {node.name}"
            out[node.name] = ([ast.unparse(b) for b in node.bases], fields)
    return out


def _fields(name: str, classes, outside: set[str]) -> set[str]:
    """The fields of class ``name`` and of its bases; bases defined elsewhere are added to ``outside``."""
    bases, fields = classes[name]
    out = set(fields)
    for base in bases:
        if base in classes:
            out |= _fields(base, classes, outside)
        else:
            outside.add(base)
    return out


def extract(trainer: str, root: Path) -> dict:
    src = SOURCES[trainer]
    classes = _classes(sorted(root.glob(src["files"])))
    out = {"source": f"{trainer} {src['commit']}: {src['files']}"}
    for key in ("config", "datasets", "prompt_type"):
        if key in src:
            outside: set[str] = set()
            out[key] = sorted(set().union(*(_fields(c, classes, outside) for c in src[key])))
            assert outside <= set(src["outside"]), f"{trainer}: bases not in the source: {sorted(outside)}"
    if "external" in src:
        out["transformers"] = src["external"]
    return out


@lru_cache(maxsize=None)
def load() -> dict:
    return json.loads(FIXTURE.read_text())


def config_keys(trainer: str) -> set[str]:
    """Every top-level key ``trainer`` parses, transformers' own argument classes included."""
    entry = load()[trainer]
    keys = set(entry["config"])
    if "transformers" in entry:
        import dataclasses

        import transformers

        keys |= {f.name for f in dataclasses.fields(getattr(transformers, entry["transformers"]))}
    return keys


if __name__ == "__main__":
    roots = dict(zip(SOURCES, map(Path, sys.argv[1:])))
    if len(roots) != len(SOURCES):
        sys.exit(f"usage: python {sys.argv[0]} AXOLOTL_DIR LMFLOW_DIR LLAMAFACTORY_DIR")
    FIXTURE.write_text(json.dumps({t: extract(t, root) for t, root in roots.items()}, indent=1) + "\n")
    print(f"wrote {FIXTURE}")
