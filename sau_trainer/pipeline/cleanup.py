"""`report.keep_models`: removing the weights of unlearned models once nothing reads them, as a run's last step.

A grid writes one model per run (the demo: 120 of them, most of its 225 MB), and after its evaluation
nothing reads most of them. The policy:

- ``all``: keep every model;
- ``sparse``: keep the unlearned sparse models (the grid's product), remove the dense unlearned ones and
  the derived copies (quantized or relearned attacks, unlearned-then-pruned models);
- ``none`` (the default): remove all of these.

Never removed: the reference models (finetuned, retain, pruned: every run starts from them), the model a
push uploads (a later ``sau-trainer push`` reads it again), and any model a task of the plan still has to
read (an unfinished evaluation, attack or push, whoever runs it: several ``--tasks`` runs may share the
output directory). Only weight files go (``*.safetensors``, ``*.bin``, ``*.pt``); the masks, SAU's state
(``G``, ``W``), ``sparsity.json``, the config, the tokenizer, ``stage.json`` and the results stay, so the
report and the model card are unchanged. A marker file lists what was removed. When a later run needs such a model again
(an attack added to the recipe, a push, ``keep_models`` widened), the runner recomputes it
(`needed_again`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

logger = logging.getLogger(__name__)

KEEP_MODELS = ("all", "sparse", "none")
MARKER = "weights_removed.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# Kept: the masks M (masks.MASKS_FILE) and SAU's G and W (sau.STATE_FILE), small and public (SPEC 9), and the
# training arguments (not weights).
KEPT_FILES = ("sparsity_masks.safetensors", "sau_state.safetensors", "training_args.bin")
DERIVED_KINDS = ("unlearn", "attack")  # tasks whose model is an unlearned model or a copy of one


def weights_removed(task_dir: Path) -> bool:
    return (Path(task_dir) / MARKER).is_file()


def _removable(task, tasks: dict) -> bool:
    """An unlearned model or a copy of one (attack, or a prune of an unlearned model); references never are."""
    if task.kind in DERIVED_KINDS:
        return True
    return task.kind == "prune" and any(tasks[d].kind in DERIVED_KINDS for d in task.deps.values() if d in tasks)


def _kept_by_policy(task, task_dir: Path, policy: str) -> bool:
    if policy == "all":
        return True
    if policy == "sparse":  # an unlearned sparse model writes sparsity.json (a dense one does not)
        return task.kind == "unlearn" and (Path(task_dir) / "sparsity.json").is_file()
    return False


def _pushed(tasks: Iterable) -> set[str]:
    return {d for t in tasks if t.kind == "push" for d in t.deps.values()}


def _dependents(tasks: Iterable) -> dict[str, list]:
    out: dict[str, list] = {}
    for t in tasks:
        for d in set(t.deps.values()):
            out.setdefault(d, []).append(t)
    return out


def needed_again(tasks: list, todo: set[str], task_dir: Callable[[str], Path], policy: str) -> set[str]:
    """Finished tasks whose weights were removed and that must run again: a task to run reads them (directly or
    through another one run again), a push reads them, or the policy now keeps them."""
    by_name = {t.name: t for t in tasks}
    pushed = _pushed(tasks)
    again = {t.name for t in tasks if t.name not in todo and weights_removed(task_dir(t.name))
             and (t.name in pushed or _kept_by_policy(t, task_dir(t.name), policy))}
    frontier = set(todo) | again
    while frontier:
        new = {d for name in frontier for d in by_name[name].deps.values()
               if d in by_name and d not in todo and d not in again and weights_removed(task_dir(d))}
        again |= new
        frontier = new
    return again


def remove_unneeded_weights(tasks: list, task_dir: Callable[[str], Path], is_done: Callable, policy: str) -> dict:
    """Remove the weight files of every finished model that `policy` does not keep and nothing still reads.
    Returns ``{"models": count, "bytes": freed}``."""
    if policy == "all":
        return {"models": 0, "bytes": 0}
    by_name = {t.name: t for t in tasks}
    dependents = _dependents(tasks)
    pushed = _pushed(tasks)
    models, freed = 0, 0
    for t in tasks:
        folder = Path(task_dir(t.name))
        if (not _removable(t, by_name) or t.name in pushed or weights_removed(folder) or not is_done(t)
                or _kept_by_policy(t, folder, policy)):
            continue
        if not all(is_done(d) for d in dependents.get(t.name, [])):
            continue  # an evaluation, attack or push still has to read it (here or in another --tasks run)
        files = [p for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES
                 and p.name not in KEPT_FILES]
        if not files:
            continue
        size = sum(p.stat().st_size for p in files)
        (folder / MARKER).write_text(json.dumps({
            "keep_models": policy, "bytes": size,
            "files": sorted(str(p.relative_to(folder)) for p in files),
            "why": "report.keep_models: nothing reads this model any more; a run that needs it recomputes it"},
            indent=1) + "\n")
        for p in files:
            p.unlink()
        models, freed = models + 1, freed + size
    if models:
        logger.info("report.keep_models=%s: removed the weights of %d unlearned models (%.1f MB); masks, results "
                    "and the model card inputs are kept (report.keep_models=all keeps every model).",
                    policy, models, freed / 1e6)
    return {"models": models, "bytes": freed}
