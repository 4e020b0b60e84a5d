"""The cached stage runner: skip what is done, run the rest, never leave half an output behind.

Every task writes into a temporary directory next to its final one; ``stage.json`` (settings, hash,
versions) is written last and the directory is renamed into place, so a directory with a
``stage.json`` whose hash matches is a finished output, and anything else is redone. Under
``accelerate launch`` every process walks the same task list: data-parallel stages (training,
unlearning) run on all of them, the others on the main process while the rest wait.

Several runs may share one output directory (a grid spread over jobs, ``--tasks GLOB``): each task is run
under a lock (`locks.py`) by one process; the others wait for it and reuse its output. Each task's
``stage.json`` counts its ``executions`` in this output directory.

A finished task is used only when its files are the ones it wrote (`checksums.py`: ``stage.json`` lists every
file with its sha256); a task whose model is not finite is recorded as diverged, not finished (`diverged.py`).
"""

from __future__ import annotations

import errno
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

from . import checksums, cleanup, diverged, locks, scheduling
from .plan import plan
from .schema import Recipe, RecipeError, recipe_to_yaml
from .stage_records import (  # noqa: F401  (re-exported: their home before the planner's split)
    STAGE_FILE,
    STAGE_FORMAT,
    is_diverged,
    is_done,
    read_stage,
    stage_status,
)
from .stages import STAGES
from .tasks import Context, Task

logger = logging.getLogger(__name__)

PIPELINE_VERSION = 1


class StageFailed(RuntimeError):
    """A stage raised; finished stages are kept and a re-run resumes after them."""


class RunsDiverged(StageFailed):
    """Raised at the end of a run in which tasks diverged (`diverged.py`): every other task ran."""

    def __init__(self, message: str, summary: RunSummary):
        super().__init__(message)
        self.summary = summary


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
    diverged: list[str] = field(default_factory=list)  # tasks that diverged in this run
    diverged_before: list[str] = field(default_factory=list)  # recorded as diverged by an earlier run (not retried)
    blocked: dict = field(default_factory=dict)  # task -> the diverged task it reads (not run)


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


def _write_stage_json(out: Path, task: Task, info: dict, elapsed: float, executions: int = 1,
                      reason: str | None = None) -> None:
    """stage.json (last, atomically): with `reason`, the task is recorded as diverged, else as finished. Either
    way it lists the checksums of every file in `out` (`checksums.py`; not part of the hash)."""
    from .. import __version__

    doc = {"format": STAGE_FORMAT, "version": PIPELINE_VERSION, "sau_trainer": __version__, "kind": task.kind,
           "name": task.name, "hash": task.hash, "settings": task.settings, "deps": task.deps,
           "elapsed_s": round(elapsed, 3), "executions": executions, "info": info}
    if reason is not None:
        doc.update(status=diverged.STATUS, reason=reason)
    doc["files"] = checksums.file_checksums(out)
    tmp = out / f".{STAGE_FILE}.tmp"
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    os.replace(tmp, out / STAGE_FILE)


def _partial_state(recipe: Recipe):
    """accelerate's process state. Without a GPU, `cpu=True` makes a torchrun / accelerate launch group
    a gloo MULTI_CPU group (otherwise every process would think it is alone)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(seconds=recipe.distributed_timeout_s))


def _sync_ok(state, ok: bool, error: str | None, reason: str | None = None) -> tuple[bool, str | None, str | None]:
    """Main process tells every process whether its stage succeeded, or diverged (so nobody waits forever)."""
    if state is None or state.num_processes == 1:
        return ok, error, reason
    from accelerate.utils import broadcast_object_list

    box = [(ok, error, reason)]
    broadcast_object_list(box, from_process=0)
    return box[0]


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
        try:
            (out / "stages").mkdir(parents=True, exist_ok=True)
            tmp = out / f"recipe.yaml.{os.getpid()}.tmp"
            tmp.write_text(recipe_to_yaml(recipe))
            os.replace(tmp, out / "recipe.yaml")
        except OSError as err:  # /proc/x, a read-only or full disk: before any work, one line
            raise RecipeError(f"output directory {out}: cannot write into it ({err.strerror or err}"
                              f"{f': {err.filename}' if err.filename else ''}); give a writable directory "
                              "(--output-dir or the recipe's output_dir).") from err
    state.wait_for_everyone()

    again: set[str] = set()  # finished, but their weights were removed (report.keep_models) and are needed again

    def finished(t: Task) -> bool:
        return (STAGES[t.kind].cached and not force and is_done(ctx.task_dir(t.name), t)
                and not (t.name in again and cleanup.weights_removed(ctx.task_dir(t.name))))

    def recorded_diverged(t: Task) -> bool:
        return STAGES[t.kind].cached and not force and is_diverged(ctx.task_dir(t.name), t)

    todo = {t.name for t in planned if t.name in selected and not finished(t) and not recorded_diverged(t)}
    again |= cleanup.needed_again(planned, todo, ctx.task_dir, recipe.report.keep_models)
    todo |= again
    selected |= again  # under --tasks too: a selected task reads them
    logger.info("%s: %d tasks%s, %d cached, %d to run -> %s (%d process%s, %s)", recipe.name, len(planned),
                f" ({len(selected)} selected by --tasks {','.join(patterns)})" if patterns else "",
                len(selected) - len(todo), len(todo), out, ctx.num_processes,
                "es" if ctx.num_processes > 1 else "", getattr(state, "distributed_type", "single"))
    bad: dict[str, str] = {}  # diverged tasks and the tasks that read them -> the diverged task

    def blocker_of(task: Task) -> str | None:
        return next((bad[d] for d in task.deps.values() if d in bad), None) if task.kind != "report" else None

    def needs_claim(task: Task) -> bool:
        return task.name in selected and task.name in todo and blocker_of(task) is None

    def claim(task: Task):  # one lock per task across every run sharing the output directory
        return locks.claim(locks.lock_path(ctx.task_dir(task.name)),
                           lambda: finished(task) or recorded_diverged(task))

    steps = scheduling.steps(state, ctx.is_main, planned, needs_claim, claim)
    for i, (task, got) in enumerate(steps, 1):
        stage = STAGES[task.kind]
        final = ctx.task_dir(task.name)
        if task.name not in selected:
            summary.not_selected.append(task.name)
            continue
        blocker = blocker_of(task)
        if blocker is not None:  # reads a diverged model: cannot run (the report says so)
            bad[task.name] = blocker
            summary.blocked[task.name] = blocker
            logger.info("[%d/%d] %s: not run, %s diverged", i, len(planned), task.name, blocker)
            continue
        if got == scheduling.NO_CLAIM:
            if recorded_diverged(task):
                bad[task.name] = task.name
                summary.diverged_before.append(task.name)
                logger.warning("[%d/%d] %s: diverged in an earlier run (not retried; delete %s or lower its "
                               "learning rate to retry it)", i, len(planned), task.name, final)
                continue
            summary.skipped.append(task.name)
            logger.debug("[%d/%d] %s: cached (%s)", i, len(planned), task.name, task.hash)
            continue
        lock = got if isinstance(got, locks.TaskLock) else None
        if got is None:  # finished by another process (under its lock)
            if recorded_diverged(task):
                bad[task.name] = task.name
                summary.diverged_before.append(task.name)
                logger.warning("[%d/%d] %s: diverged in another run", i, len(planned), task.name)
                continue
            summary.skipped.append(task.name)
            summary.reused.append(task.name)
            logger.info("[%d/%d] %s: finished by another run, reused", i, len(planned), task.name)
            continue
        try:
            reason = _run_task(ctx, state, stage, task, final, f"[{i}/{len(planned)}]", summary)
        finally:
            if lock is not None:
                lock.release()
        summary.ran.append(task.name)
        if reason is not None:
            bad[task.name] = task.name
            summary.diverged.append(task.name)
    if ctx.is_main:  # the last step: nothing of this run reads a model any more
        summary.removed = cleanup.remove_unneeded_weights(
            planned, ctx.task_dir, lambda t: is_done(ctx.task_dir(t.name), t), recipe.report.keep_models)
    if summary.diverged_before and not summary.diverged:
        logger.warning("%d task(s) diverged in an earlier run and were not retried: %s (see report.md)",
                       len(summary.diverged_before), ", ".join(summary.diverged_before))
    if summary.diverged:
        n = len(summary.diverged)
        raise RunsDiverged(
            f"{n} task(s) diverged (a non-finite loss or weights): {', '.join(summary.diverged)}; every other task "
            f"ran and {out / 'report.md'} lists them under 'Diverged runs'. Lower their learning rate (a new run) or "
            "keep them as a result: a re-run does not retry them and exits 0.", summary)
    return summary


def _run_task(ctx: Context, state, stage, task: Task, final: Path, where: str, summary: RunSummary) -> str | None:
    """Run one task (this process holds its lock, or follows the main process that does) and publish its output.
    Returns None when it finished, the reason when it diverged (recorded as such, `diverged.py`)."""
    out = ctx.output_dir
    logger.info("%s %s %s ...", where, task.kind, task.name)
    start = time.perf_counter()
    runs_here = stage.distributed or ctx.is_main
    ok, error, info, reason = True, None, {}, None
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
            if diverged.is_divergence(err) and stage.cached:  # raised by the trainer on every process alike
                reason = diverged.reason_of(err)
            elif not ctx.is_main:
                raise  # a data-parallel stage failed here: the launcher stops the other processes
            else:
                ok, error = False, f"{type(err).__name__}: {err}"
                if getattr(err, "clean", False):  # a user's mistake said in one line (modeling.CheckpointError)
                    logger.error("stage %s failed: %s", task.name, error)
                else:
                    logger.exception("stage %s failed", task.name)
                if stage.distributed and state.num_processes > 1:
                    raise StageFailed(f"stage {task.name} failed: {error}") from err  # others may be mid-step
    if stage.distributed and state.num_processes > 1:
        state.wait_for_everyone()
    if ctx.is_main and ok:
        elapsed = time.perf_counter() - start
        try:
            if stage.cached:
                if reason is None:
                    reason = diverged.nonfinite_weights(tmp)
                if reason is not None:
                    diverged.drop_weights(tmp)
                    info = {**info, "diverged": reason}
                _write_stage_json(tmp, task, info, elapsed, executions, reason)
                _publish(tmp, final)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError as err:
            ok, error = False, _disk_error(err, task)
        else:
            if reason is not None:
                logger.error("%s %s diverged: %s (recorded as diverged; the other tasks go on)", where, task.name,
                             reason)
            else:
                logger.info("%s %s done in %.1f s", where, task.name, elapsed)
    ok, error, reason = _sync_ok(state, ok, error, reason)
    if not ok:
        summary.failed, summary.error = task.name, error
        if ctx.is_main and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        raise StageFailed(f"stage {task.name} failed: {error}. Finished stages are kept in {out / 'stages'}; "
                          "run the same command again to resume after them.") from None
    return reason


def _disk_error(err: OSError, task: Task) -> str:
    """One line for a failure to write a task's record or to publish it (a full disk, a quota, a read-only
    filesystem); the task's output is dropped and redone by the next run."""
    what = f"{err.strerror or err}" + (f": {err.filename}" if err.filename else "")
    hint = " (the disk is full: free some space)" if err.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return f"OSError: could not write the output of {task.name} ({what}){hint}"
