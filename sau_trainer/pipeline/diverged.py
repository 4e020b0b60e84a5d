"""Diverged runs: a stage whose model is not finite is recorded as diverged, never as finished.

A training stage (train, unlearn, an attack that trains) can diverge: the trainer stops with
`sau_trainer.TrainingDiverged` (a non-finite loss or gradient norm), or, whatever stopped it, the saved weights hold
NaN or infinity. Either way the runner records the task as *diverged*: its ``stage.json`` says
``"status": "diverged"`` with the reason, its weight files are removed (they are not a model), and nothing that
reads it runs (its evaluation, attacks, a push). The other tasks run; the report has a row per evaluation that
could not run, ``{"name", "status": "diverged", "task", "reason"}`` under ``"diverged"`` in report.json and a
"Diverged runs" table in report.md; the run exits 1 at the end with one line.

A diverged task is a result, kept like a finished one: a re-run does not retry it (the same settings and seed
diverge again) and does not fail because of it (exit 0, with a warning naming it), so a job array that is re-run
after a divergence goes on. To retry it: change its settings (a lower learning rate is a new task), delete
``stages/<task>``, or use ``--force``.
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

STATUS = "diverged"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
NOT_WEIGHTS = ("sparsity_masks.safetensors",)  # masks are bits, never non-finite


class WeightsNotFinite(RuntimeError):
    """A stage wrote a model whose weights are not all finite."""


def is_divergence(err: BaseException) -> bool:
    """The trainer's `TrainingDiverged` (whatever wraps it) or `WeightsNotFinite`."""
    from ..divergence import TrainingDiverged

    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, (TrainingDiverged, WeightsNotFinite)):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def nonfinite_weights(folder: Path) -> str | None:
    """None when every floating-point tensor of the safetensors files in `folder` is finite, else which is not
    (the first file and tensor, and how many values of the folder are not finite)."""
    import torch
    from safetensors import safe_open

    first, bad, total = None, 0, 0
    for path in sorted(Path(folder).rglob("*.safetensors")):
        if path.name in NOT_WEIGHTS:
            continue
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                t = f.get_tensor(key)
                if not t.is_floating_point():
                    continue
                n = int((~torch.isfinite(t)).sum())
                if n:
                    bad += n
                    first = first or f"{path.name}: {key} has {n} of {t.numel()} values not finite"
                total += t.numel()
    if not bad:
        return None
    return f"the saved weights are not finite ({bad} of {total} values; first: {first})"


def drop_weights(folder: Path) -> None:
    """Remove the weight files of a diverged model (NaN weights are not a model; the logs and config stay)."""
    for p in Path(folder).rglob("*"):
        if p.is_file() and p.suffix in WEIGHT_SUFFIXES and p.name not in NOT_WEIGHTS:
            p.unlink()


def reason_of(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def cause(task, tasks: dict, status_of) -> tuple[str, str] | None:
    """``(diverged task, reason)`` when `task` or a task it reads (transitively) is recorded as diverged, else
    None. `status_of(task)`: the recorded ``(status, reason)`` of a task with its current hash, or None."""
    todo, seen = [task], set()
    while todo:
        t = todo.pop()
        if t.name in seen:
            continue
        seen.add(t.name)
        status = status_of(t)
        if status is not None and status[0] == STATUS:
            return t.name, status[1]
        todo += [tasks[d] for d in t.deps.values() if d in tasks]
    return None


def report_rows(eval_tasks, tasks: dict, status_of) -> list[dict]:
    """One row per evaluation that cannot run because its model (or one it derives from) diverged."""
    rows = []
    for t in eval_tasks:
        found = cause(t, tasks, status_of)
        if found is not None:
            rows.append({"name": t.meta.get("name", t.name), "status": STATUS, "task": found[0], "reason": found[1]})
    return rows


def markdown_section(rows: list[dict]) -> str:
    if not rows:
        return ""
    lines = ["", "## Diverged runs", "",
             f"{len(rows)} model(s) diverged in training (not finite): they have no evaluation and are in no table, "
             "curve or comparison above. A re-run does not retry them; a lower learning rate is a new run.", "",
             "| name | status | diverged task | reason |", "|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['status']} | `{r['task']}` | {r['reason'].replace('|', '/')} |" for r in rows]
    return "\n".join(lines) + "\n"
