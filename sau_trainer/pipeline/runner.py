"""The cached stage runner: skip what is done, run the rest, never leave half an output behind.

Every task writes into a temporary directory next to its final one; ``stage.json`` (settings, hash,
versions) is written last and the directory is renamed into place, so a directory with a
``stage.json`` whose hash matches is a finished output, and anything else is redone. Under
``accelerate launch`` every process walks the same task list: data-parallel stages (training,
unlearning) run on all of them, the others on the main process while the rest wait.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from .schema import Recipe, recipe_to_yaml
from .stages import STAGES, Context, Task, plan

logger = logging.getLogger(__name__)

STAGE_FILE = "stage.json"
STAGE_FORMAT = "sau-trainer/stage"
PIPELINE_VERSION = 1


class StageFailed(RuntimeError):
    """A stage raised; finished stages are kept and a re-run resumes after them."""


@dataclass
class RunSummary:
    """What a run did: tasks skipped (cached), run, and the one that failed (if any)."""

    output_dir: Path
    skipped: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    failed: str | None = None
    error: str | None = None


def task_hash(task: Task, dep_hashes: dict[str, str]) -> str:
    """sha256 of the stage kind, its settings, its dependencies' hashes and the versions."""
    import torch
    import transformers

    from .. import __version__

    doc = {"kind": task.kind, "settings": task.settings, "deps": {k: dep_hashes[v] for k, v in task.deps.items()},
           "pipeline_version": PIPELINE_VERSION, "sau_trainer": __version__,
           "torch": torch.__version__, "transformers": transformers.__version__}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:20]


def hash_tasks(tasks: list[Task]) -> None:
    hashes: dict[str, str] = {}
    for t in tasks:
        t.hash = task_hash(t, hashes)
        hashes[t.name] = t.hash


def read_stage(path: Path) -> dict | None:
    """The stage.json of a finished task directory, or None."""
    try:
        doc = json.loads((path / STAGE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return doc if doc.get("format") == STAGE_FORMAT else None


def is_done(path: Path, task: Task) -> bool:
    doc = read_stage(path)
    return doc is not None and doc.get("hash") == task.hash


def _tmp_dir(final: Path) -> Path:
    return final.parent / f".{final.name}.tmp"


def _publish(tmp: Path, final: Path) -> None:
    """Move a finished temporary directory into place (replacing an older output atomically enough)."""
    if final.exists():
        old = final.parent / f".{final.name}.old"
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def _write_stage_json(out: Path, task: Task, info: dict, elapsed: float) -> None:
    from .. import __version__

    doc = {"format": STAGE_FORMAT, "version": PIPELINE_VERSION, "sau_trainer": __version__, "kind": task.kind,
           "name": task.name, "hash": task.hash, "settings": task.settings, "deps": task.deps,
           "elapsed_s": round(elapsed, 3), "info": info}
    (out / STAGE_FILE).write_text(json.dumps(doc, indent=2, default=str) + "\n")


def _partial_state(recipe: Recipe):
    """accelerate's process state. Without a GPU, `cpu=True` makes a torchrun / accelerate launch group
    a gloo MULTI_CPU group (otherwise every process would think it is alone)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(seconds=recipe.distributed_timeout_s))


def _sync_ok(state, ok: bool, error: str | None) -> tuple[bool, str | None]:
    """Main process tells every process whether its stage succeeded (so nobody waits forever)."""
    if state is None or state.num_processes == 1:
        return ok, error
    from accelerate.utils import broadcast_object_list

    box = [(ok, error)]
    broadcast_object_list(box, from_process=0)
    return box[0]


def run_recipe(recipe: Recipe, output_dir: str | os.PathLike, force: bool = False,
               state=None) -> RunSummary:
    """Run every task of `recipe` into `output_dir`, skipping finished ones (all of them again with `force`)."""
    out = Path(output_dir)
    if recipe.torch_threads:
        import torch

        torch.set_num_threads(recipe.torch_threads)
    state = state if state is not None else _partial_state(recipe)
    ctx = Context(recipe, out, {}, state)
    tasks = plan(recipe, lambda: ctx.benchmark)  # the data is loaded once, and only if needed
    hash_tasks(tasks)
    ctx.tasks = {t.name: t for t in tasks}
    summary = RunSummary(out)
    if ctx.is_main:
        (out / "stages").mkdir(parents=True, exist_ok=True)
        tmp = out / "recipe.yaml.tmp"
        tmp.write_text(recipe_to_yaml(recipe))
        os.replace(tmp, out / "recipe.yaml")
    state.wait_for_everyone()
    todo = {t.name for t in tasks if force or not STAGES[t.kind].cached or not is_done(ctx.task_dir(t.name), t)}
    logger.info("%s: %d tasks, %d cached, %d to run -> %s (%d process%s, %s)", recipe.name, len(tasks),
                len(tasks) - len(todo), len(todo), out, ctx.num_processes, "es" if ctx.num_processes > 1 else "",
                getattr(state, "distributed_type", "single"))
    for i, task in enumerate(tasks, 1):
        stage = STAGES[task.kind]
        final = ctx.task_dir(task.name)
        if task.name not in todo:
            summary.skipped.append(task.name)
            logger.debug("[%d/%d] %s: cached (%s)", i, len(tasks), task.name, task.hash)
            continue
        logger.info("[%d/%d] %s %s ...", i, len(tasks), task.kind, task.name)
        start = time.perf_counter()
        runs_here = stage.distributed or ctx.is_main
        ok, error = True, None
        tmp = _tmp_dir(final)
        if ctx.is_main:
            if tmp.exists():
                shutil.rmtree(tmp)  # left over from a killed run: never reused
            tmp.mkdir(parents=True)
        if stage.distributed:
            state.wait_for_everyone()
        if runs_here:
            try:
                info = stage.fn(ctx, task, tmp) or {}
            except Exception as err:  # noqa: BLE001 - reported below, finished work is kept
                if not ctx.is_main:
                    raise  # a data-parallel stage failed here: the launcher stops the other processes
                ok, error = False, f"{type(err).__name__}: {err}"
                logger.exception("stage %s failed", task.name)
                if stage.distributed and state.num_processes > 1:
                    raise StageFailed(f"stage {task.name} failed: {error}") from err  # others may be mid-step
        if stage.distributed and state.num_processes > 1:
            state.wait_for_everyone()
        if ctx.is_main and ok:
            elapsed = time.perf_counter() - start
            if stage.cached:
                _write_stage_json(tmp, task, info, elapsed)
                _publish(tmp, final)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
            logger.info("[%d/%d] %s done in %.1f s", i, len(tasks), task.name, elapsed)
        ok, error = _sync_ok(state, ok, error)
        if not ok:
            summary.failed, summary.error = task.name, error
            if ctx.is_main and tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
            raise StageFailed(f"stage {task.name} failed: {error}. Finished stages are kept in {out / 'stages'}; "
                              "run the same command again to resume after them.")
        summary.ran.append(task.name)
    return summary
