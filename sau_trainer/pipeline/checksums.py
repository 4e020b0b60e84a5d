"""Checksums of a stage's files: a cached output is used only when its files are the ones it wrote.

Every file a stage writes is listed in its ``stage.json`` under ``"files"`` (``{relative path: {"size",
"sha256"}}``), computed when the stage finishes, before its directory is published. A finished stage is
verified before it is used: a file whose size or sha256 differs, or that is missing, makes the stage unfinished
(the runner recomputes it, with a log line naming the file). Not corruption:

- files removed on purpose by ``report.keep_models`` (listed in the folder's ``weights_removed.json``,
  `cleanup.py`);
- hard links (the attack stages link their source model's files): a link has its file's bytes, and a file
  listed once is checked once, whatever its link count;
- files that were not written by the stage (the marker above): only the listed files are checked.

A ``stage.json`` written before checksums existed is verified once against its files and then gets them. For
such a folder "verified" means what can be known without a record: every safetensors file's header parses and
its size is the one the header implies (a truncated file fails), every JSON file parses, and a mask file agrees
with the zeros of the weights beside it (`masks.SparsityMasks.mismatch`). Flipped bytes inside a tensor of an
old folder cannot be found this way; from then on they are.

The checksums are not part of the task's hash: an existing output directory stays valid. Verification is
memoised per process (keyed on the files' sizes and mtimes), so a run hashes each file it uses once. Measured
on the demo: see docs/guides/recipes.md ("Caching").
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from pathlib import Path

logger = logging.getLogger(__name__)

STAGE_FILE = "stage.json"
MARKER = "weights_removed.json"  # cleanup.MARKER (written after stage.json; lists the files removed on purpose)
NOT_CHECKED = (STAGE_FILE, MARKER)
CHUNK = 8 << 20


class CorruptFile(ValueError):
    """A file of a finished stage is not the one the stage wrote (or, for an old stage, cannot be read)."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _listed(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()
                  and str(p.relative_to(folder)) not in NOT_CHECKED)


def file_checksums(folder: Path) -> dict[str, dict]:
    """``{relative path: {"size", "sha256"}}`` of every file under `folder` but ``stage.json`` and the marker."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in _listed(folder)}


def removed_on_purpose(folder: Path) -> set[str]:
    """The files `report.keep_models` removed from `folder` (cleanup's marker), as relative paths."""
    try:
        doc = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return set()
    return {str(f) for f in doc.get("files", [])} if isinstance(doc, dict) else set()


def check_files(folder: Path, files: dict[str, dict]) -> None:
    """Raise `CorruptFile` naming the first listed file that is missing (and not removed on purpose) or differs."""
    folder = Path(folder)
    removed = None
    for rel, meta in files.items():
        path = folder / rel
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            if removed is None:
                removed = removed_on_purpose(folder)
            if rel in removed:
                continue
            raise CorruptFile(f"{path} is missing (stage.json lists it)") from None
        if size != meta.get("size"):
            raise CorruptFile(f"{path} has {size} bytes, stage.json recorded {meta.get('size')} (truncated or "
                              "rewritten)")
        if sha256_file(path) != meta.get("sha256"):
            raise CorruptFile(f"{path} does not match its sha256 in stage.json (changed on disk)")


# ----------------------------------------------------------------------------------------- folders without checksums
def safetensors_header(path: Path) -> dict:
    """The header of a safetensors file, after checking that the file holds every byte the header describes."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CorruptFile(f"{path}: {size} bytes, too short for a safetensors file (truncated)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise CorruptFile(f"{path}: its header claims {n} bytes but the file has {size} (truncated)")
        try:
            header = json.loads(f.read(n))
        except ValueError as err:
            raise CorruptFile(f"{path}: its safetensors header is not valid JSON ({err})") from err
    if not isinstance(header, dict):
        raise CorruptFile(f"{path}: its safetensors header is not a JSON object")
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
               and "data_offsets" in v), default=0)
    if 8 + n + end != size:
        raise CorruptFile(f"{path}: {size} bytes, its header describes {8 + n + end} (truncated or rewritten)")
    return header


def _check_masks(folder: Path) -> None:
    """The mask file of `folder` against the zeros of the weights beside it (no model is built)."""
    from ..masks import MASKS_FILE, SparsityMasks

    masks_path = folder / MASKS_FILE
    weights = sorted(folder.glob("model*.safetensors"))
    if not masks_path.is_file() or not weights:
        return
    from safetensors import safe_open

    masks = SparsityMasks.load(masks_path)
    tensors = {}
    for w in weights:
        with safe_open(str(w), framework="pt") as f:
            keys = set(f.keys())
            for name in masks.names:
                if name in keys:
                    tensors[name] = f.get_tensor(name)
    if set(tensors) != set(masks.names):
        return  # names saved differently (tied or renamed parameters): left to the stage that loads them
    masks.check_weights(tensors, str(masks_path))


def verify_legacy(folder: Path) -> None:
    """What can be verified of a finished folder without checksums (see the module docstring); raises `CorruptFile`."""
    folder = Path(folder)
    for path in _listed(folder):
        if path.suffix == ".safetensors":
            safetensors_header(path)
        elif path.suffix == ".json":
            try:
                json.loads(path.read_text())
            except (ValueError, UnicodeDecodeError) as err:
                raise CorruptFile(f"{path} is not valid JSON ({err})") from err
    try:
        _check_masks(folder)
    except CorruptFile:
        raise
    except (ValueError, OSError, RuntimeError) as err:
        raise CorruptFile(str(err)) from err


# ----------------------------------------------------------------------------------------- memo
_VERIFIED: dict[tuple, str | None] = {}


def _signature(folder: Path) -> tuple:
    out = []
    for p in sorted(Path(folder).rglob("*")):
        try:
            st = p.stat()
        except OSError:
            continue
        out.append((str(p), st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(out)


def verify_stage(folder: Path, doc: dict, record: bool = True) -> str | None:
    """None when the files of a finished stage are the ones it wrote (memoised per process), else the problem in
    one line (naming the file). A stage.json without ``"files"`` is verified with `verify_legacy` and, when it
    passes and `record` is true, rewritten with its checksums (once; a dry run records nothing)."""
    folder = Path(folder)
    key = (str(folder), _signature(folder))
    if key in _VERIFIED:
        return _VERIFIED[key]
    problem = None
    try:
        if "files" in doc:
            check_files(folder, doc["files"])
        else:
            verify_legacy(folder)
            if not record:
                return None
            _add_checksums(folder, doc)
            key = (str(folder), _signature(folder))
    except CorruptFile as err:
        problem = str(err)
    except OSError as err:
        problem = f"{err.filename or folder}: cannot be read ({err.strerror or err})"
    _VERIFIED[key] = problem
    return problem


def _add_checksums(folder: Path, doc: dict) -> None:
    """Write the checksums into an old stage.json (atomically; another run doing the same writes the same)."""
    doc = {**doc, "files": file_checksums(folder), "files_added": "verified once without checksums (headers, "
           "sizes, JSON, masks against the weights' zeros), then checksummed"}
    tmp = folder / f".{STAGE_FILE}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        os.replace(tmp, folder / STAGE_FILE)
    except OSError as err:  # a read-only output directory: verified all the same, checked again next time
        logger.debug("could not add checksums to %s: %s", folder / STAGE_FILE, err)
        tmp.unlink(missing_ok=True)
    else:
        logger.info("%s: written before checksums existed; verified and checksummed", folder / STAGE_FILE)
