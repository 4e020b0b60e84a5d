"""WMDP (Li et al. 2024, "The WMDP Benchmark", arXiv 2403.03218) with MMLU (Hendrycks et al. 2021): loading
and validation in the Hub's layout (METHODS.md section 4).

Three Hub datasets make the benchmark; here each of their (config, split) pairs is one split named
``"<config>/<split>"``, and the loader returns ``{name: rows}`` like the TOFU and MUSE loaders:

- ``cais/wmdp``: ``wmdp-bio/test``, ``wmdp-cyber/test``, ``wmdp-chem/test``; columns ``question`` (str),
  ``choices`` (4 str), ``answer`` (int 0-3);
- ``hails/mmlu_no_train`` (lm-evaluation-harness's MMLU, config ``all``): ``mmlu/test``; the same columns plus
  ``subject`` (the 57 subjects, e.g. ``abstract_algebra``);
- ``cais/wmdp-corpora``: ``cyber-forget-corpus/train``, ``cyber-retain-corpus/train``,
  ``bio-retain-corpus/train``; column ``text``. The bio forget corpus (``bio-forget-corpus/train``) is gated on
  the Hub (``cais/wmdp-bio-forget-corpus``, by request): the user supplies it as a file (see
  `BIO_FORGET_HELP`).

A local copy (``data_dir``) holds one folder per dataset: ``wmdp/``, ``mmlu/`` and ``wmdp-corpora/``, each in
the Hub's layout (``<config>/<split>-00000-of-00001.parquet``, or the same rows as ``<config>/<split>.jsonl`` /
``.json``). The corpora may also be open-unlearning's files ``wmdp-corpora/<config>.jsonl``
(``cyber-forget-corpus.jsonl``, ...). MMLU may also be one folder per subject (``mmlu/<subject>/test-...``);
the subject then comes from the folder name.

**Corpus texts: open-unlearning's quirk.** Open-unlearning (and the original RMU for every corpus but bio
forget) reads the corpus ``.jsonl`` files with the Hugging Face ``text`` builder, so each training text is
the raw JSON line, ``{"text": ...}`` syntax included (METHODS.md 4.2). That is the default here for ``.jsonl``
corpus files (``raw_jsonl_lines=True``); ``False`` takes the ``text`` field instead. Parquet and ``.json``
files have no lines: their ``text`` column is used.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

from ..splits import check_rows, parse_config_split

logger = logging.getLogger("sau_trainer.data.wmdp")  # its name before the move

WMDP_HUB_ID = "cais/wmdp"
CORPORA_HUB_ID = "cais/wmdp-corpora"
BIO_FORGET_HUB_ID = "cais/wmdp-bio-forget-corpus"
MMLU_HUB_ID = "hails/mmlu_no_train"
MMLU_HUB_CONFIG = "all"

SUBSETS = ("cyber", "bio", "chem")
DEFAULT_SUBSET = "cyber"  # open-unlearning's default data_split
# lm-evaluation-harness's descriptions name these subjects ("... (with answers) about biology.\n\n").
WMDP_SUBJECTS = {"wmdp-bio": "biology", "wmdp-cyber": "cybersecurity", "wmdp-chem": "chemistry"}
QUESTION_CONFIGS = (*WMDP_SUBJECTS, "mmlu")
CORPUS_CONFIGS = ("cyber-forget-corpus", "cyber-retain-corpus", "bio-forget-corpus", "bio-retain-corpus")
# where each config's files live inside data_dir (one folder per Hub dataset)
FOLDERS = {**{c: "wmdp" for c in WMDP_SUBJECTS}, "mmlu": "mmlu", **{c: "wmdp-corpora" for c in CORPUS_CONFIGS}}
QUESTION_COLUMNS = ("question", "choices", "answer")
N_CHOICES = 4
MMLU_SPLIT = "mmlu/test"

BIO_FORGET_HELP = (
    "The WMDP bio forget corpus is gated on the Hub ({hub}: request access there). Put it at "
    "{path} (one JSON object per line with a 'text' field, as open-unlearning's bio-forget-corpus.jsonl), "
    "or as {alt}, and pass that data_dir (data.data_dir / --data-dir). The cyber subset needs no gated file.")


def forget_split(subset: str) -> str:
    return f"{subset}-forget-corpus/train"


def retain_split(subset: str) -> str:
    return f"{subset}-retain-corpus/train"


def question_split(subset: str) -> str:
    return f"wmdp-{subset}/test"


def resolve_subset(subset: str | None) -> str:
    subset = subset or DEFAULT_SUBSET
    if subset not in SUBSETS:
        raise ValueError(f"Unknown WMDP subset {subset!r}; choose one of {list(SUBSETS)}.")
    return subset


def default_splits(subset: str) -> list[str]:
    """What training, unlearning and evaluation read for `subset` (chem has no corpora: questions only)."""
    subset = resolve_subset(subset)
    names = [question_split(subset), MMLU_SPLIT]
    if subset != "chem":
        names += [forget_split(subset), retain_split(subset)]
    return names


def parse_split(name: str) -> tuple[str, str]:
    """``"wmdp-cyber/test"`` -> ``("wmdp-cyber", "test")``, with a clear error for other names."""
    return parse_config_split(name, FOLDERS, "WMDP", "'wmdp-cyber/test', 'mmlu/test', 'cyber-forget-corpus/train'")


def is_question_split(name: str) -> bool:
    return parse_split(name)[0] in QUESTION_CONFIGS


def validate_wmdp_split(rows: list[dict], name: str, source: str) -> list[dict]:
    """Question splits: ``question`` str, ``choices`` 4 str, ``answer`` int 0-3 (MMLU also ``subject``);
    corpora: ``text`` str. Rows must be non-empty objects."""
    config, _ = parse_split(name)
    columns = QUESTION_COLUMNS + (("subject",) if config == "mmlu" else ()) if config in QUESTION_CONFIGS \
        else ("text",)
    check_rows(rows, name, source, columns, label="WMDP split")
    for i, row in enumerate(rows):
        if "text" in columns:
            if not isinstance(row["text"], str):
                raise ValueError(f"{source}: column 'text' of {name!r} must be a string (row {i}).")
            continue
        choices, answer = row["choices"], row["answer"]
        if not isinstance(row["question"], str):
            raise ValueError(f"{source}: column 'question' of {name!r} must be a string (row {i}).")
        if not isinstance(choices, list | tuple) or len(choices) != N_CHOICES or \
                not all(isinstance(c, str) for c in choices):
            raise ValueError(f"{source}: column 'choices' of {name!r} must be a list of {N_CHOICES} strings "
                             f"(row {i}: {choices!r}).")
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < N_CHOICES:
            raise ValueError(f"{source}: column 'answer' of {name!r} must be an integer 0-{N_CHOICES - 1} "
                             f"(row {i}: {answer!r}).")
    return rows


def _normalise(rows: list[dict]) -> list[dict]:
    """numpy arrays / numpy ints from parquet as plain lists and ints."""
    out = []
    for r in rows:
        r = dict(r)
        if "choices" in r and not isinstance(r["choices"], list | tuple) and hasattr(r["choices"], "tolist"):
            r["choices"] = r["choices"].tolist()
        if "choices" in r and isinstance(r["choices"], tuple):
            r["choices"] = list(r["choices"])
        if "answer" in r and hasattr(r["answer"], "item") and not isinstance(r["answer"], int):
            r["answer"] = r["answer"].item()
        out.append(r)
    return out


def local_candidates(data_dir: Path, name: str) -> list[Path]:
    """The files that may hold split `name`, in the order they are tried."""
    config, split = parse_split(name)
    folder = data_dir / FOLDERS[config]
    hub = "all" if config == "mmlu" else config
    base = folder / hub
    out = [base / f"{split}-00000-of-00001.parquet", base / f"{split}.parquet", base / f"{split}.jsonl",
           base / f"{split}.json"]
    if config in CORPUS_CONFIGS:
        out += [folder / f"{config}.jsonl"]  # open-unlearning's file names
    return out


def _read_corpus_jsonl(path: Path, raw_jsonl_lines: bool) -> list[dict]:
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {i + 1} is not JSON ({e}).") from e
        if raw_jsonl_lines:
            rows.append({"text": line})
        elif isinstance(obj, dict) and "text" in obj:
            rows.append({"text": obj["text"]})
        elif isinstance(obj, str):
            rows.append({"text": obj})
        else:
            raise ValueError(f"{path}: line {i + 1} has no 'text' field.")
    return rows


def _read(path: Path, corpus: bool, raw_jsonl_lines: bool) -> list[dict]:
    from ..tofu.data import _read_json, _read_parquet

    if path.suffix == ".parquet":
        return _normalise(_read_parquet(path))
    if corpus and path.suffix == ".jsonl":
        return _read_corpus_jsonl(path, raw_jsonl_lines)
    return _normalise(_read_json(path))


def _missing(data_dir: Path, name: str, candidates: list[Path]) -> Exception:
    config, _ = parse_split(name)
    if config == "bio-forget-corpus":
        return FileNotFoundError(BIO_FORGET_HELP.format(hub=BIO_FORGET_HUB_ID, path=candidates[-1],
                                                        alt=candidates[0]))
    return FileNotFoundError(
        f"No file for WMDP split {name!r} in {data_dir}: expected {candidates[0]} (the Hub's layout) or "
        f"{', '.join(str(p.relative_to(data_dir)) for p in candidates[1:])} under {data_dir}.")


def load_local_wmdp_split(data_dir: str | Path, name: str, raw_jsonl_lines: bool = True) -> list[dict]:
    """One split from a local copy in the Hub's layout (see the module docstring), validated."""
    data_dir = Path(data_dir)
    config, split = parse_split(name)
    candidates = local_candidates(data_dir, name)
    found = [p for p in candidates if p.is_file()][:1]
    if not found:
        base = candidates[0].parent
        found = sorted(base.glob(f"{split}-*-of-*.parquet")) if base.is_dir() else []
    rows: list[dict] = []
    if not found and config == "mmlu":  # one folder per subject
        folder = data_dir / FOLDERS[config]
        subjects = sorted(p for p in folder.iterdir() if p.is_dir() and p.name != "all") if folder.is_dir() else []
        for sub in subjects:
            files = [p for p in (sub / f"{split}-00000-of-00001.parquet", sub / f"{split}.jsonl",
                                 sub / f"{split}.json") if p.is_file()][:1]
            for f in files:
                rows += [{"subject": sub.name, **r} for r in _read(f, False, raw_jsonl_lines)]
        if rows:
            return validate_wmdp_split(rows, name, str(folder))
    if not found:
        raise _missing(data_dir, name, candidates)
    for f in found:
        rows += _read(f, config in CORPUS_CONFIGS, raw_jsonl_lines)
    return validate_wmdp_split(rows, name, str(found[0]))


def load_hub_wmdp_split(name: str) -> list[dict]:
    """One split from the Hub (`WMDP_HUB_ID`, `MMLU_HUB_ID`, `CORPORA_HUB_ID`; the gated bio forget corpus
    needs access and a login), validated."""
    import datasets

    config, split = parse_split(name)
    if config == "mmlu":
        repo, hub_config = MMLU_HUB_ID, MMLU_HUB_CONFIG
    elif config == "bio-forget-corpus":
        repo, hub_config = BIO_FORGET_HUB_ID, None
    elif config in CORPUS_CONFIGS:
        repo, hub_config = CORPORA_HUB_ID, config
    else:
        repo, hub_config = WMDP_HUB_ID, config
    try:
        ds = datasets.load_dataset(repo, hub_config, split=split)
    except Exception as e:  # offline, gated, unknown split, ...: say what to do instead
        extra = (" " + BIO_FORGET_HELP.format(hub=BIO_FORGET_HUB_ID, path="DATA_DIR/wmdp-corpora/bio-forget-corpus.jsonl",
                                              alt="DATA_DIR/wmdp-corpora/bio-forget-corpus/train.jsonl")
                 if config == "bio-forget-corpus" else "")
        raise RuntimeError(f"Could not load {repo} config {hub_config!r} split {split!r} from the Hub "
                           f"({type(e).__name__}: {e}). Offline? Download the datasets and pass data_dir "
                           "(--data-dir) pointing at the folder that holds wmdp/, mmlu/ and wmdp-corpora/." + extra) from e
    return validate_wmdp_split(_normalise(ds.to_list()), name, f"{repo}/{name}")


def load_wmdp(splits: Iterable[str] | None = None, data_dir: str | Path | None = None, subset: str | None = None,
              raw_jsonl_lines: bool = True) -> dict[str, list[dict]]:
    """WMDP splits (default: `default_splits(subset)`) from `data_dir` if given, else from the Hub."""
    names = list(splits) if splits is not None else default_splits(resolve_subset(subset))
    for n in names:
        parse_split(n)
    if data_dir is not None:
        return {n: load_local_wmdp_split(data_dir, n, raw_jsonl_lines) for n in names}
    return {n: load_hub_wmdp_split(n) for n in names}
