"""LLaMA-Factory's reading of planner's data: the ``dataset_info.json`` entry that describes it, and where its
sharegpt reading and parsed chat template differ from planner's (the ``llamafactory`` target writes both).

Rules read in LLaMA-Factory's code (commit ff6d4d1):
- ``data/parser.py`` ``get_dataset_list``: ``dataset`` names an entry of ``dataset_dir/dataset_info.json``
  (``file_name`` joined to ``dataset_dir``, so an absolute path stays itself; ``hf_hub_url``);
  ``formatting: alpaca`` with ``columns`` ``prompt``/``query``/``response`` (a non-empty query is
  appended to the prompt on its own line); ``stage: pt`` trains on all of the ``prompt`` column,
  packing records into ``cutoff_len`` blocks unless ``packing: false`` (``data/processor/pretrain.py``).
  ``data/template.py``: the ``empty`` template writes the prompt, then the answer (no EOS).
- chat data, ``data/parser.py`` ``DatasetAttr.join``: ``formatting: sharegpt`` with ``columns: {messages: ...}`` and
  ``tags`` (``role_tag``, ``content_tag``, ``user_tag``, ``assistant_tag``, ``system_tag``; defaults from/value/
  human/gpt/system); ``data/converter.py`` ``SharegptDatasetConverter``: a first turn with the system tag becomes the
  system prompt, the other turns must alternate user (even positions) and assistant (odd), an even number of them,
  else the record is skipped ("Invalid role tag", "Invalid message count"); the last turn is the response.
  ``data/processor/supervised.py`` ``SupervisedDatasetProcessor._encode_data_example``: every assistant turn has a
  loss unless ``mask_history`` ("train on the last turn only"). ``data/template.py``
  ``get_template_and_fix_tokenizer``: without ``template`` the tokenizer's chat template is parsed into one slot per
  role (``parse_template``; the ``empty`` template where the tokenizer has none).
"""

from __future__ import annotations

from pathlib import Path

from planner.export.data import DataRef

INFO_FILE = "dataset_info.json"  # LLaMA-Factory's DATA_CONFIG, read from dataset_dir
DATASET = "planner_data"


SHAREGPT_TAGS = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "system_tag": "system",
}  # planner's messages keys and roles in sharegpt's tags


def chat_loss(data: DataRef) -> list[str]:
    """What LLaMA-Factory's sharegpt reading and parsed template do otherwise than planner with ``data``'s messages."""
    lost = [
        "data: LLaMA-Factory renders the turns with the tokenizer's chat template parsed into one fixed form per role "
        "(data/template.py parse_template), where planner applies the template itself: a template that writes a turn "
        "differently by its position (a default system prompt, markers on the last turn) can differ"
    ]
    if "irregular" in data.chat:
        lost.append(
            "data: LLaMA-Factory's sharegpt reader skips records whose turns are not user and assistant in "
            "alternation after one leading system turn; planner trains on them"
        )
    return lost


def dataset_info(data: DataRef) -> dict:
    """The ``dataset_info.json`` entry for ``data``: alpaca columns from planner's record fields."""
    source = {"hf_hub_url": data.path} if data.format == "datasets" else {"file_name": str(Path(data.path))}
    if data.is_chat:
        return {
            DATASET: {
                **source,
                "formatting": "sharegpt",
                "columns": {"messages": data.fields["messages"]},
                "tags": dict(SHAREGPT_TAGS),
            }
        }
    if data.is_text:
        columns = {"prompt": data.fields["text"]}
    else:
        columns = {"prompt": data.fields["prompt"], "response": data.fields["answer"]}
        if "input" in data.fields:
            columns["query"] = data.fields["input"]
    return {DATASET: {**source, "formatting": "alpaca", "columns": columns}}
