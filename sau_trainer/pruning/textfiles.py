"""Reading local text sets (calibration and evaluation data) without the network."""

from __future__ import annotations

import json
import os


def load_texts(path: str | os.PathLike, text_field: str = "text", split: str | None = None) -> list[str]:
    """Texts from a local file or directory.

    - ``.txt``/``.md``: one text per non-empty line.
    - ``.jsonl``: one JSON object per line, its `text_field` (or a bare JSON string per line).
    - ``.json``: a list of strings or of objects with `text_field`.
    - a directory saved by ``datasets`` (``save_to_disk``): its `text_field` column (a DatasetDict
      uses `split`, default ``train`` or its only split);
    - any other directory: every ``.txt``/``.jsonl``/``.json`` file in it, in name order.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path!r} does not exist. Calibration/evaluation data must be a local text/jsonl/json file or a "
            "local dataset directory (nothing is downloaded)."
        )
    if os.path.isdir(path):
        if any(os.path.exists(os.path.join(path, f)) for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
            return _from_saved_dataset(path, text_field, split)
        files = sorted(f for f in os.listdir(path) if f.endswith((".txt", ".md", ".jsonl", ".json")))
        if not files:
            raise ValueError(f"The directory {path!r} holds no dataset and no .txt/.jsonl/.json file.")
        return [t for f in files for t in load_texts(os.path.join(path, f), text_field)]
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            return [_field(json.loads(line), text_field, path) for line in f if line.strip()]
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if isinstance(data, dict) and text_field in data and isinstance(data[text_field], list):
            data = data[text_field]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of texts or of objects with {text_field!r}.")
        return [_field(r, text_field, path) for r in data]
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def _field(record, text_field: str, path: str) -> str:
    if isinstance(record, str):
        return record
    if isinstance(record, dict) and isinstance(record.get(text_field), str):
        return record[text_field]
    raise ValueError(f"{path}: a record has no string field {text_field!r} (use --text-field to pick another).")


def _from_saved_dataset(path: str, text_field: str, split: str | None) -> list[str]:
    import datasets

    ds = datasets.load_from_disk(path)
    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            split = "train" if "train" in ds else (next(iter(ds)) if len(ds) == 1 else None)
        if split not in ds:
            raise ValueError(f"{path} has splits {list(ds)}; choose one with split=... (--split).")
        ds = ds[split]
    if text_field not in ds.column_names:
        raise ValueError(f"{path} has columns {ds.column_names} but no {text_field!r} (use --text-field).")
    return list(ds[text_field])
