"""Loading TOFU (from the Hub or a local directory); the benchmark registry is `sau_trainer.benchmarks`.

Every split is returned as a list of row dicts and validated against the columns that
SPEC section 5 gives it, so a malformed file fails at load time with the file and the
column named, never later inside the evaluator.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ...data.synthetic import GENERAL_COLUMNS, PERTURBED_COLUMNS, QA_COLUMNS, generate_benchmark, split_names
from ..splits import check_rows

logger = logging.getLogger("sau_trainer.data.tofu")  # its name before the move

TOFU_HUB_ID = "locuslab/TOFU"
GENERAL_SPLITS = ("real_authors_perturbed", "world_facts_perturbed")
FORGET_SPLITS = ("forget01", "forget05", "forget10")
LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet")


def required_columns(split: str) -> tuple[str, ...]:
    """The columns a split must have (SPEC section 5); extra columns are allowed."""
    if split in GENERAL_SPLITS:
        return GENERAL_COLUMNS
    if split.endswith("_perturbed"):
        return PERTURBED_COLUMNS
    return QA_COLUMNS


def evaluation_splits(forget_split: str = "forget10") -> tuple[str, str, str, str]:
    """The four splits the TOFU protocol reads for `forget_split`: forget, retain, real authors, world facts."""
    if forget_split not in FORGET_SPLITS:
        raise ValueError(f"Unknown forget split {forget_split!r}; choose one of {list(FORGET_SPLITS)}.")
    return (f"{forget_split}_perturbed", "retain_perturbed", *GENERAL_SPLITS)


def validate_split(rows: list[dict], split: str, source: str) -> list[dict]:
    """Checks that `rows` is non-empty and has the split's columns with the right types."""
    columns = required_columns(split)
    check_rows(rows, split, source, columns)
    for i, row in enumerate(rows):
        for col in columns:
            value = row[col]
            if col == "perturbed_answer":
                if (not isinstance(value, list | tuple) or not value
                        or not all(isinstance(v, str) for v in value)):
                    raise ValueError(
                        f"{source}: column 'perturbed_answer' of {split!r} must be a non-empty list of strings "
                        f"(row {i}: {value!r})."
                    )
            elif not isinstance(value, str):
                raise ValueError(f"{source}: column {col!r} of {split!r} must be a string (row {i}: {value!r}).")
    return rows


def _read_json(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e}).") from None
        return list(data)
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {n} is not valid JSON ({e}).") from None
    return rows


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def _find_local(data_dir: Path, split: str) -> list[Path]:
    """``{split}.json|.jsonl|.parquet``, or the Hub's parquet export ``{split}/*.parquet`` (any depth)."""
    for suffix in LOCAL_SUFFIXES:
        path = data_dir / f"{split}{suffix}"
        if path.is_file():
            return [path]
    sub = data_dir / split
    if sub.is_dir():
        files = sorted(sub.rglob("*.parquet"))
        if files:
            return files
    return []


def load_local_split(data_dir: str | Path, split: str) -> list[dict]:
    """One split from a local directory of files named after the splits, validated."""
    data_dir = Path(data_dir)
    files = _find_local(data_dir, split)
    if not files:
        raise FileNotFoundError(
            f"No file for split {split!r} in {data_dir}: expected {split}.json, {split}.jsonl, {split}.parquet "
            f"or {split}/*.parquet."
        )
    rows: list[dict] = []
    for f in files:
        rows += _read_parquet(f) if f.suffix == ".parquet" else _read_json(f)
    source = str(files[0]) if len(files) == 1 else f"{data_dir / split}/*.parquet"
    return validate_split(rows, split, source)


def load_hub_split(split: str, repo_id: str = TOFU_HUB_ID) -> list[dict]:
    """One split from the Hub (`repo_id`, config named after the split), validated."""
    import datasets

    try:
        ds = datasets.load_dataset(repo_id, split, split="train")
    except Exception as e:  # offline, unknown config, ...: say what to do instead
        raise RuntimeError(f"Could not load {repo_id} config {split!r} from the Hub ({type(e).__name__}: {e}). "
                           "Offline? Download the split files and pass data_dir (--data-dir).") from e
    return validate_split(ds.to_list(), split, f"{repo_id}/{split}")


def load_tofu(splits: Iterable[str] | None = None, data_dir: str | Path | None = None,
              repo_id: str = TOFU_HUB_ID) -> dict[str, list[dict]]:
    """TOFU splits (default: all) from `data_dir` if given, else from the Hub."""
    names = list(splits) if splits is not None else split_names()
    if data_dir is not None:
        return {s: load_local_split(data_dir, s) for s in names}
    return {s: load_hub_split(s, repo_id) for s in names}


def _load_synthetic(splits: Iterable[str] | None, data_dir: str | Path | None, preset: str, seed: int,
                    **_: Any) -> dict[str, list[dict]]:
    if data_dir is not None:
        # Files written by `write_benchmark` have the TOFU layout; read them like TOFU's.
        return load_tofu(splits, data_dir)
    bench = generate_benchmark(preset, seed)
    names = list(splits) if splits is not None else list(bench)
    unknown = [s for s in names if s not in bench]
    if unknown:
        raise ValueError(f"The synthetic benchmark has no split(s) {unknown}; it has {list(bench)}.")
    return {s: bench[s] for s in names}


def holdout_split(forget_split: str = "forget10") -> str:
    """The holdout split matching `forget_split` (``forget10`` -> ``holdout10``): the non-members of the
    membership-inference attacks."""
    if forget_split not in FORGET_SPLITS:
        raise ValueError(f"Unknown forget split {forget_split!r}; choose one of {list(FORGET_SPLITS)}.")
    return f"holdout{forget_split[-2:]}"

