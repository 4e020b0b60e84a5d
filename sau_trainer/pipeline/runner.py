"""The cached stage runner: skip what is done, run the rest, never leave half an output behind.

Every task writes into a temporary directory next to its final one; ``stage.json`` (settings, hash,
versions) is written last and the directory is renamed into place, so a directory with a
``stage.json`` whose hash matches is a finished output, and anything else is redone. Under
``accelerate launch`` every process walks the same task list: data-parallel stages (training,
unlearning) run on all of them, the others on the main process while the rest wait.

Several runs may share one output directory (a grid spread over jobs, ``--tasks GLOB``): each task is run
under a lock (`locks.py`) by one process; the others wait for it and reuse its output. Each task's
``stage.json`` counts its ``executions`` in this output directory.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from . import cleanup, locks
from .schema import Recipe, RecipeError, recipe_to_yaml
from .stages import STAGES, Context, Task, plan

logger = logging.getLogger(__name__)

STAGE_FILE = "stage.json"
STAGE_FORMAT = "sau-trainer/stage"
PIPELINE_VERSION = 1


class StageFailed(RuntimeError):
    """A stage raised; finished stages are kept and a re-run resumes after them."""


@dataclass
class RunSummary:
    """What a run did: tasks skipped (cached, or finished meanwhile by another process sharing the output
    directory: also in `reused`), run, left out by `--tasks` (`not_selected`), and the one that failed."""

    output_dir: Path
    skipped: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    failed: str | None = None
    error: str | None = None
    reused: list[str] = field(default_factory=list)
    not_selected: list[str] = field(default_factory=list)
    removed: dict = field(default_factory=dict)  # report.keep_models: {"models", "bytes"} of weights removed


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


def parse_patterns(patterns: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """``--tasks`` values: several patterns, each possibly comma-separated."""
    if patterns is None:
        return []
    items = [patterns] if isinstance(patterns, str) else list(patterns)
    return [p.strip() for item in items for p in str(item).split(",") if p.strip()]


def select_tasks(tasks: list[Task], patterns: list[str]) -> set[str]:
    """Names of the tasks matching any of `patterns` (fnmatch on the names ``--dry-run`` lists), with every task
    they depend on, and the report (which reports what has finished and lists the rest: its dependencies are
    not pulled in). A pattern that matches nothing is an error that shows some task names."""
    by_name = {t.name: t for t in tasks}
    chosen: set[str] = set()
    for pattern in patterns:
        hits = [t.name for t in tasks if fnmatch.fnmatchcase(t.name, pattern)]
        if not hits:
            kinds: dict[str, str] = {}
            for t in tasks:
                kinds.setdefault(t.kind, t.name)
            examples = ", ".join(kinds.values())
            raise RecipeError(f"--tasks {pattern!r} matches none of the recipe's {len(tasks)} tasks; task names look "
                              f"like {examples} (`sau-trainer run RECIPE --dry-run` lists them all; quote the "
                              "pattern so that the shell does not expand it)")
        chosen.update(hits)
    todo = list(chosen)
    while todo:
        task = by_name[todo.pop()]
        if task.kind == "report":
            continue
        for dep in task.deps.values():
            if dep not in chosen:
                chosen.add(dep)
                todo.append(dep)
    chosen.update(t.name for t in tasks if t.kind == "report")
    return chosen


def executions_path(output_dir: Path, name: str) -> Path:
    """The counter of a task's executions in this output directory (outside ``stages/``; survives crashes)."""
    return Path(output_dir) / ".sau-trainer" / "executions" / name


def _count_execution(output_dir: Path, name: str, final: Path) -> int:
    """Count one more execution of the task (called under its lock, before it runs)."""
    path = executions_path(output_dir, name)
    try:
        before = int(path.read_text().strip())
    except (OSError, ValueError):
        doc = read_stage(final)
        before = int(doc.get("executions", 1)) if doc else 0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{before + 1}\n")
    os.replace(tmp, path)
    return before + 1


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


def _write_stage_json(out: Path, task: Task, info: dict, elapsed: float, executions: int = 1) -> None:
    from .. import __version__

    doc = {"format": STAGE_FORMAT, "version": PIPELINE_VERSION, "sau_trainer": __version__, "kind": task.kind,
           "name": task.name, "hash": task.hash, "settings": task.settings, "deps": task.deps,
           "elapsed_s": round(elapsed, 3), "executions": executions, "info": info}
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


def _sync_decision(state, run: bool) -> bool:
    """Main process tells every process whether it holds the task's lock (run) or reuses another's output."""
    if state is None or state.num_processes == 1:
        return run
    from accelerate.utils import broadcast_object_list

    box = [run]
    broadcast_object_list(box, from_process=0)
    return bool(box[0])


def run_recipe(recipe: Recipe, output_dir: str | os.PathLike, force: bool = False,
               state=None, tasks: str | list[str] | None = None) -> RunSummary:
    """Run every task of `recipe` into `output_dir`, skipping finished ones (all of them again with `force`).

    `tasks`: fnmatch patterns (a list, or one string with commas) of the task names to run, e.g.
    ``"models/*-s1"``; the tasks they depend on run too (or are reused when finished), the report always runs
    and lists what has not finished. Other runs may work on the same `output_dir` at the same time: a task is
    run by whoever takes its lock first, and the others wait and reuse its output (`locks.py`).
    """
    out = Path(output_dir)
    if recipe.torch_threads:
        import torch

        torch.set_num_threads(recipe.torch_threads)
    state = state if state is not None else _partial_state(recipe)
    ctx = Context(recipe, out, {}, state)
    planned = plan(recipe, lambda: ctx.benchmark)  # the data is loaded once, and only if needed
    hash_tasks(planned)
    ctx.tasks = {t.name: t for t in planned}
    patterns = parse_patterns(tasks)
    selected = select_tasks(planned, patterns) if patterns else {t.name for t in planned}
    summary = RunSummary(out)
    if ctx.is_main:
        (out / "stages").mkdir(parents=True, exist_ok=True)
        tmp = out / f"recipe.yaml.{os.getpid()}.tmp"
        tmp.write_text(recipe_to_yaml(recipe))
        os.replace(tmp, out / "recipe.yaml")
    state.wait_for_everyone()

    again: set[str] = set()  # finished, but their weights were removed (report.keep_models) and are needed again

    def finished(t: Task) -> bool:
        return (STAGES[t.kind].cached and not force and is_done(ctx.task_dir(t.name), t)
                and not (t.name in again and cleanup.weights_removed(ctx.task_dir(t.name))))

    todo = {t.name for t in planned if t.name in selected and not finished(t)}
    again |= cleanup.needed_again(planned, todo, ctx.task_dir, recipe.report.keep_models)
    todo |= again
    selected |= again  # under --tasks too: a selected task reads them
    logger.info("%s: %d tasks%s, %d cached, %d to run -> %s (%d process%s, %s)", recipe.name, len(planned),
                f" ({len(selected)} selected by --tasks {','.join(patterns)})" if patterns else "",
                len(selected) - len(todo), len(todo), out, ctx.num_processes,
                "es" if ctx.num_processes > 1 else "", getattr(state, "distributed_type", "single"))
    for i, task in enumerate(planned, 1):
        stage = STAGES[task.kind]
        final = ctx.task_dir(task.name)
        if task.name not in selected:
            summary.not_selected.append(task.name)
            continue
        if task.name not in todo:
            summary.skipped.append(task.name)
            logger.debug("[%d/%d] %s: cached (%s)", i, len(planned), task.name, task.hash)
            continue
        lock = None
        if ctx.is_main:  # one lock per task across every run sharing the output directory
            lock = locks.acquire(locks.lock_path(final), lambda t=task: finished(t), name=task.name)
        if not _sync_decision(state, lock is not None or not ctx.is_main):
            summary.skipped.append(task.name)
            summary.reused.append(task.name)
            logger.info("[%d/%d] %s: finished by another run, reused", i, len(planned), task.name)
            continue
        try:
            _run_task(ctx, state, stage, task, final, f"[{i}/{len(planned)}]", summary)
        finally:
            if lock is not None:
                lock.release()
        summary.ran.append(task.name)
    if ctx.is_main:  # the last step: nothing of this run reads a model any more
        summary.removed = cleanup.remove_unneeded_weights(
            planned, ctx.task_dir, lambda t: is_done(ctx.task_dir(t.name), t), recipe.report.keep_models)
    return summary


def _run_task(ctx: Context, state, stage, task: Task, final: Path, where: str, summary: RunSummary) -> None:
    """Run one task (this process holds its lock, or follows the main process that does) and publish its output."""
    out = ctx.output_dir
    logger.info("%s %s %s ...", where, task.kind, task.name)
    start = time.perf_counter()
    runs_here = stage.distributed or ctx.is_main
    ok, error, info = True, None, {}
    tmp = _tmp_dir(final)
    executions = 0
    if ctx.is_main:
        if tmp.exists():
            shutil.rmtree(tmp)  # left over from a killed run: never reused
        tmp.mkdir(parents=True)
        if stage.cached:
            executions = _count_execution(out, task.name, final)
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
            _write_stage_json(tmp, task, info, elapsed, executions)
            _publish(tmp, final)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info("%s %s done in %.1f s", where, task.name, elapsed)
    ok, error = _sync_ok(state, ok, error)
    if not ok:
        summary.failed, summary.error = task.name, error
        if ctx.is_main and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        raise StageFailed(f"stage {task.name} failed: {error}. Finished stages are kept in {out / 'stages'}; "
                          "run the same command again to resume after them.")
