"""The record of a finished (or diverged) task: its ``stage.json``, read back to decide whether a task's output can
be reused. The runner writes it; the runner and the report stage read it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from . import checksums, diverged
from .tasks import Task

logger = logging.getLogger("sau_trainer.pipeline.runner")  # the runner's messages, as before the split

STAGE_FILE = "stage.json"
STAGE_FORMAT = "sau-trainer/stage"


def read_stage(path: Path) -> dict | None:
    """The stage.json of a finished task directory, or None."""
    try:
        doc = json.loads((path / STAGE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return doc if doc.get("format") == STAGE_FORMAT else None


_REPORTED: set[tuple[str, str]] = set()


def is_done(path: Path, task: Task, record: bool = True) -> bool:
    """Finished with the task's hash, and its files are the ones it wrote (`checksums.verify_stage`; a stage
    whose files differ is unfinished, logged once per process with the file it names). `record`: an old
    stage.json that passes is given its checksums (a dry run passes False: it writes nothing)."""
    doc = read_stage(path)
    if doc is None or doc.get("hash") != task.hash or doc.get("status", "finished") != "finished":
        return False
    problem = checksums.verify_stage(path, doc, record)
    if problem is not None:
        if (str(path), problem) not in _REPORTED:
            _REPORTED.add((str(path), problem))
            logger.warning("%s: not used: %s; recomputing it", task.name, problem)
        return False
    return True


def stage_status(path: Path, task: Task) -> tuple[str, str] | None:
    """``(status, reason)`` recorded for the task with its current hash (``finished``: as `is_done` sees it,
    ``diverged``: `diverged.py`), or None."""
    doc = read_stage(path)
    if doc is None or doc.get("hash") != task.hash:
        return None
    status = doc.get("status", "finished")
    if status == "finished":
        return ("finished", "") if is_done(path, task) else None
    return status, str(doc.get("reason", ""))


def is_diverged(path: Path, task: Task) -> bool:
    """Recorded as diverged with the task's current hash (reads stage.json only; verifies no files)."""
    doc = read_stage(path)
    return doc is not None and doc.get("hash") == task.hash and doc.get("status") == diverged.STATUS


__all__ = ["STAGE_FILE", "STAGE_FORMAT", "is_diverged", "is_done", "read_stage", "stage_status"]
