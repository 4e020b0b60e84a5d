"""MUSE (Shi et al. 2024, arXiv 2407.06460): loading, validation and the text encodings of its protocol.

MUSE has two subsets on the Hub, ``muse-bench/MUSE-News`` (BBC articles) and ``muse-bench/MUSE-Books``
(Harry Potter). Each is a set of configs (``raw``, ``verbmem``, ``knowmem``, ``privleak``, ...), each
with its own splits and columns. Here a split is named ``"<config>/<split>"`` (``"raw/forget"``,
``"knowmem/forget_qa_icl"``), and the loader returns ``{name: rows}`` like the TOFU loader, validated per
split so that a missing file, split or column is named with the file that was expected.

Text encodings follow open-unlearning (METHODS.md section 0):
- **training text** (`chunk_texts`): all texts of a split joined with ``"\\n\\n"``, tokenised without
  special tokens, cut into ``floor(N / L) + 1`` consecutive chunks of ``L`` tokens (the last may be
  short; an empty last one is dropped), each with BOS; position 0 is not supervised. open-unlearning
  decodes each chunk and tokenises it again; here the text is tokenised once (see `chunk_texts`);
- **completions** (`encode_completion`): ``prefix`` with BOS, then ``prefix + (" " if insert_space) +
  text``, cut to ``|prefix tokens| + max_length``, labels -100 over the prefix tokens (at least BOS).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ...data.qa import IGNORE_INDEX
from ..splits import check_rows, parse_config_split

logger = logging.getLogger("sau_trainer.data.muse")  # its name before the move

MUSE_HUB_IDS = {"news": "muse-bench/MUSE-News", "books": "muse-bench/MUSE-Books"}
SUBSETS = tuple(MUSE_HUB_IDS)

# The columns of every config (METHODS.md section 3.1); each split of a config has its config's columns.
CONFIG_COLUMNS: dict[str, tuple[str, ...]] = {
    "raw": ("text",),
    "verbmem": ("prompt", "gt"),
    "knowmem": ("question", "answer"),
    "privleak": ("text",),
    "scal": ("text",),
    "sust": ("text",),
    "train": ("text",),
}
# What training, unlearning and evaluation read (scal, sust and train are loaded only when asked for).
TRAINING_SPLITS = ("raw/forget", "raw/retain1", "raw/retain2", "raw/holdout")
EVALUATION_SPLITS = (
    "verbmem/forget",
    "knowmem/forget_qa", "knowmem/forget_qa_icl", "knowmem/retain_qa", "knowmem/retain_qa_icl",
    "privleak/forget", "privleak/holdout",
)
DEFAULT_SPLITS = TRAINING_SPLITS + EVALUATION_SPLITS


def parse_split(name: str) -> tuple[str, str]:
    """``"knowmem/forget_qa"`` -> ``("knowmem", "forget_qa")``, with a clear error for other names."""
    return parse_config_split(name, CONFIG_COLUMNS, "MUSE", "'raw/forget', 'knowmem/forget_qa'")


def required_columns(name: str) -> tuple[str, ...]:
    """The columns a MUSE split must have (extra columns are allowed)."""
    return CONFIG_COLUMNS[parse_split(name)[0]]


def validate_muse_split(rows: list[dict], name: str, source: str) -> list[dict]:
    """`rows` non-empty, each an object with the config's columns as strings."""
    columns = required_columns(name)
    check_rows(rows, name, source, columns, label="MUSE split")
    for i, row in enumerate(rows):
        for col in columns:
            if not isinstance(row[col], str):
                raise ValueError(f"{source}: column {col!r} of {name!r} must be a string (row {i}: {row[col]!r}).")
    return rows


def local_candidates(data_dir: Path, name: str) -> list[Path]:
    """The files that may hold split `name` in the Hub's layout, in the order they are tried."""
    config, split = parse_split(name)
    base = data_dir / config
    return [base / f"{split}-00000-of-00001.parquet", base / f"{split}.parquet", base / f"{split}.jsonl",
            base / f"{split}.json"]


def load_local_muse_split(data_dir: str | Path, name: str) -> list[dict]:
    """One MUSE split from a local copy of the Hub dataset (parquet, or the same rows as json/jsonl)."""
    from ..tofu.data import _read_json, _read_parquet

    data_dir = Path(data_dir)
    candidates = local_candidates(data_dir, name)
    found = [p for p in candidates if p.is_file()]
    if not found:  # sharded parquet: <config>/<split>-00000-of-000NN.parquet
        config, split = parse_split(name)
        found = sorted((data_dir / config).glob(f"{split}-*-of-*.parquet")) if (data_dir / config).is_dir() else []
        if not found:
            raise FileNotFoundError(
                f"No file for MUSE split {name!r} in {data_dir}: expected {candidates[0]} (the Hub's layout) or "
                f"{', '.join(p.name for p in candidates[1:])} in {candidates[0].parent}.")
    else:
        found = found[:1]
    rows: list[dict] = []
    for f in found:
        rows += _read_parquet(f) if f.suffix == ".parquet" else _read_json(f)
    return validate_muse_split(rows, name, str(found[0]))


def load_hub_muse_split(name: str, repo_id: str) -> list[dict]:
    """One MUSE split from the Hub (config and split as in `name`), validated."""
    import datasets

    config, split = parse_split(name)
    try:
        ds = datasets.load_dataset(repo_id, config, split=split)
    except Exception as e:  # offline, unknown split, ...: say what to do instead
        raise RuntimeError(f"Could not load {repo_id} config {config!r} split {split!r} from the Hub "
                           f"({type(e).__name__}: {e}). Offline? Download the dataset and pass data_dir "
                           "(--data-dir) pointing at the folder that holds raw/, verbmem/, knowmem/, privleak/.") from e
    return validate_muse_split(ds.to_list(), name, f"{repo_id}/{name}")


def resolve_subset(subset: str | None) -> str:
    """``news`` (the default) or ``books``."""
    subset = subset or "news"
    if subset not in MUSE_HUB_IDS:
        raise ValueError(f"Unknown MUSE subset {subset!r}; choose one of {list(SUBSETS)}.")
    return subset


def load_muse(splits: Iterable[str] | None = None, data_dir: str | Path | None = None, subset: str | None = None,
              repo_id: str | None = None) -> dict[str, list[dict]]:
    """MUSE splits (default: `DEFAULT_SPLITS`) from `data_dir` if given, else from the Hub.

    From `data_dir`, every missing split is named in one error, and the files are checked against `subset`
    (`muse_subsets.check_subset`: MUSE-News files read as ``books``, or the other way round, are refused)."""
    subset = resolve_subset(subset)
    names = list(splits) if splits is not None else list(DEFAULT_SPLITS)
    for n in names:
        parse_split(n)
    if data_dir is not None:
        out, missing = {}, []
        for n in names:
            try:
                out[n] = load_local_muse_split(data_dir, n)
            except FileNotFoundError:
                missing.append(n)
        if len(missing) == 1:
            load_local_muse_split(data_dir, missing[0])  # raises its own message (the file it expected)
        if missing:
            expected = ", ".join(str(local_candidates(Path(data_dir), n)[0]) for n in missing)
            raise FileNotFoundError(
                f"No files for {len(missing)} MUSE splits in {data_dir}: {', '.join(map(repr, missing))}. Expected "
                f"{expected} (the Hub's layout; <split>.parquet, .jsonl or .json in the config's folder also work).")
        from .subsets import check_subset

        check_subset(data_dir, subset, out)
        return out
    repo_id = repo_id or MUSE_HUB_IDS[subset]
    return {n: load_hub_muse_split(n, repo_id) for n in names}


# ----------------------------------------------------------------------------------------- encodings
def _bos(tokenizer: Any) -> list[int]:
    bos = getattr(tokenizer, "bos_token_id", None)
    return [bos] if bos is not None else []


def chunk_texts(texts: Sequence[str], tokenizer: Any, max_length: int) -> list[dict]:
    """Training rows as open-unlearning's ``PretrainingDataset`` cuts them (see the module docstring).

    Returns pre-tokenised rows (``input_ids``, ``labels``, ``attention_mask``) that `tokenize_rows` passes
    through. The joined text is tokenised once and each chunk is its own token ids, with BOS when the tokenizer
    has one: a chunk is at most `max_length` tokens of text (one more with BOS). open-unlearning decodes each
    chunk and tokenises the text again, which costs a decode and an encode per chunk (33-109 s for 1.07M tokens
    of MUSE-News) and can change the tokens at a chunk's edges; the ids here are exactly the text's tokens.
    Empty chunks (text whose token count is a multiple of `max_length`) are dropped.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}.")
    if not texts:
        raise ValueError("chunk_texts needs at least one text.")
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    bos = _bos(tokenizer)
    rows = []
    for start in range(0, len(ids), max_length):
        enc = bos + ids[start : start + max_length]
        rows.append({"input_ids": enc, "labels": [IGNORE_INDEX] + enc[1:], "attention_mask": [1] * len(enc)})
    return rows


def encode_completion(tokenizer: Any, prefix: str, text: str, max_length: int | None = None,
                      insert_space: bool = False) -> dict[str, list[int]]:
    """``BOS + prefix (+ " ") + text`` with labels only on the tokens after the prefix (open-unlearning's
    ``CompletionDataset``): the prefix is tokenised alone to find its length, the full string as a whole."""
    prefix_ids = _bos(tokenizer) + tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else _bos(tokenizer)
    full = prefix + (" " if insert_space else "") + text
    ids = _bos(tokenizer) + tokenizer(full, add_special_tokens=False)["input_ids"]
    n_prefix = max(len(prefix_ids), 1)
    if max_length is not None:
        ids = ids[: n_prefix + max_length]
    labels = [IGNORE_INDEX] * min(n_prefix, len(ids)) + ids[n_prefix:]
    return {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)}
