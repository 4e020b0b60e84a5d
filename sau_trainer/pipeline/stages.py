"""The stages of a recipe run: one registry (`STAGES`), each kind with its function and how the runner runs it.

A task is one unit of cached work: a stage kind, a name (its directory under ``stages/``), the settings its output
depends on, and the tasks it reads from (`tasks.Task`). The planner (`plan.plan`) turns a recipe into tasks; the
runner hashes settings and dependencies, skips tasks whose output already carries that hash, and runs the rest
with the stage functions (`stage_runs.py`, `attacks.py`).

This module was the planner and every stage function before they were split along those concepts; its names stay
importable from here.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .loading import (  # noqa: F401  (re-exported: their home before the split)
    _checkpointing_kwargs,
    _dtype,
    _pin_memory,
    _trainer_kwargs,
    _warmup_kwargs,
    load_model,
)
from .plan import _check_order, plan  # noqa: F401
from .planner import prune_id, run_name  # noqa: F401
from .planner import target_sparsity as _target_sparsity  # noqa: F401
from .planner import train_settings as _train_settings  # noqa: F401
from .stage_runs import (  # noqa: F401
    _texts,
    _write_json,
    run_attack,
    run_evaluate,
    run_prune,
    run_push,
    run_report,
    run_tokenizer,
    run_train,
    run_unlearn,
    unlearn_config,
)
from .tasks import Context, Task, data_fingerprint, default_splits, load_data, split_uses  # noqa: F401
from .tasks import file_digest as _file_digest  # noqa: F401
from .tasks import model_fingerprint as _model_fingerprint  # noqa: F401


@dataclass(frozen=True)
class Stage:
    """A stage kind: its function, whether every process runs it (data parallel), whether it is cached."""

    fn: Callable[[Context, Task, Path], dict]
    distributed: bool
    cached: bool
    help: str


STAGES: dict[str, Stage] = {
    "tokenizer": Stage(run_tokenizer, False, True, "train a tokenizer on the benchmark (models built from scratch)"),
    "train": Stage(run_train, True, True, "finetune the target / retain model"),
    "prune": Stage(run_prune, False, True, "prune a model"),
    "unlearn": Stage(run_unlearn, True, True, "unlearn the forget set (one grid point)"),
    "attack": Stage(run_attack, True, True, "an attacked copy of an unlearned model (quantized / relearned)"),
    "evaluate": Stage(run_evaluate, False, True, "TOFU evaluation -> results.json"),
    "report": Stage(run_report, False, False, "report.json, report.md, tradeoff.png (always rewritten)"),
    "push": Stage(run_push, False, True, "upload to the Hugging Face Hub"),
}


def copy_tree(src: Path, dst: Path) -> None:
    """Copy a directory with hard links where possible (a model is not duplicated on disk)."""
    def link_or_copy(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)
    shutil.copytree(src, dst, copy_function=link_or_copy, dirs_exist_ok=True)


__all__ = ["STAGES", "Context", "Stage", "Task", "copy_tree", "data_fingerprint", "default_splits", "load_data",
           "load_model", "plan", "prune_id", "run_name", "split_uses", "unlearn_config"]
