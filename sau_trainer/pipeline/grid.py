"""The unlearning grid's points, and the partial points a recipe leaves out of it (``unlearn.exclude``).

A recipe's unlearning grid is every combination of its axes: the starting model (``model``: dense, or sparse with
each pruning ``method`` and, for unstructured pruning, ``sparsity``), ``objective``, ``sau``, ``learning_rate``
(per objective when ``unlearn.objective_args`` gives one), ``seed`` and every `SAUConfig` field given as a list.
``unlearn.exclude`` lists partial points, as CI build matrices do (``exclude: [{model: dense, sau: true}]``): a
run whose axes have all the values of one entry is not planned, so no task, no evaluation and no "pending" row
exists for it, and every other task keeps its hash (the exclusion itself enters no task's settings).

This module is the one place that walks the grid (the planner and the recipe check both use `grid_runs`); it reads
the recipe's sections and the per-objective grids the schema computes, and imports no other pipeline module.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# the axes every grid has, in the order they are listed; a recipe's SAUConfig axes follow, alphabetically
BASE_AXES = ("model", "objective", "sau", "learning_rate", "seed", "method", "sparsity")


@dataclass(frozen=True)
class Start:
    """The model a run starts from: ``dense`` (the finetuned model) or a pruned one (its prune id)."""

    name: str
    pid: str | None
    target_sparsity: float
    ref: str | None
    axes: dict


@dataclass(frozen=True)
class Run:
    """One point of the unlearning grid: where it starts and its value on every axis."""

    start: Start
    objective: str
    sau: bool
    grid: dict  # the SAUConfig axes' values of the point
    settings: dict  # the point's unlearn settings (each SAUConfig list replaced by the point's value)
    learning_rate: float
    seed: int

    @property
    def axes(self) -> dict:
        return {**self.start.axes, "objective": self.objective, "sau": self.sau,
                "learning_rate": self.learning_rate, "seed": self.seed, **self.grid}


def start_axes(method: str | None = None, sparsity: float | None = None, structure: str = "unstructured") -> dict:
    """The axes of a starting model: ``{"model": "dense"}``, or sparse with its method (and unstructured sparsity)."""
    if method is None:
        return {"model": "dense"}
    return {"model": "sparse", "method": method, **({"sparsity": sparsity} if structure == "unstructured" else {})}


def grid_runs(u, starts: list[Start], grids: dict[str, tuple[list, list | None]],
              exclude: list[dict] | None = None) -> Iterator[Run]:
    """Every run of the grid in the planner's order (start, objective, sau, SAUConfig axes, learning rate, seed),
    without those `exclude` matches. `grids`: per objective, its ``(grid_points, learning rates or None)``."""
    for start in starts:
        for obj in u.objective:
            if obj not in grids:
                continue
            points, obj_lrs = grids[obj]
            for sau in u.sau:
                for values, settings in points:
                    for lr in obj_lrs or u.learning_rate:
                        for seed in u.seed:
                            run = Run(start, obj, sau, values, settings, lr, seed)
                            if not (exclude and excluded(run.axes, exclude)):
                                yield run


def same_value(given: Any, value: Any) -> bool:
    """Whether a value written in the recipe is the grid's value (``1e-3`` read by YAML as text, 1 for 1.0, but a
    bool is only a bool)."""
    if isinstance(value, bool) or isinstance(given, bool):
        return given is value
    if isinstance(value, float) and isinstance(given, int | float | str):
        try:
            return math.isclose(float(given), value, rel_tol=1e-12, abs_tol=0.0)
        except ValueError:
            return False
    return given == value


def excluded(axes: dict, exclude: list[dict]) -> bool:
    """Whether a run with these axis values matches an entry of `exclude` (every key of the entry, with its value)."""
    return any(isinstance(entry, dict) and entry and all(key in axes and same_value(given, axes[key])
                                                         for key, given in entry.items())
               for entry in exclude)


def _show(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "true" if value is True else "false" if value is False else "null"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def exclusion_problems(exclude: list, runs: list[dict], where: str = "unlearn.exclude") -> list[str]:
    """Every problem of `exclude` against the axis values of every run of the grid (`runs`), one line each: an
    entry that is not a mapping or is empty, a key that is not an axis of the grid, a value the axis does not take,
    an entry that matches no run, and entries that leave no run at all."""
    axes: dict[str, list] = {}
    for run in runs:
        for key, value in run.items():
            seen = axes.setdefault(key, [])
            if not any(same_value(value, v) and type(value) is type(v) for v in seen):
                seen.append(value)
    names = [k for k in BASE_AXES if k in axes] + sorted(k for k in axes if k not in BASE_AXES)
    problems = []
    for i, entry in enumerate(exclude):
        at = f"{where}[{i}]"
        if not isinstance(entry, dict) or not entry:
            problems.append(f"{at}: expected a mapping of grid axes to values, e.g. {{model: dense, sau: true}}, "
                            f"got {entry!r} (an empty one would leave out every run)")
            continue
        fine = True
        for key, given in entry.items():
            if key not in axes:
                fine = False
                match = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
                hint = f"did you mean '{at}.{match[0]}'? " if match else ""
                problems.append(f"unknown key '{at}.{key}' (not an axis of this recipe's grid); {hint}"
                                f"the grid's axes: {', '.join(names)}")
            elif not any(same_value(given, v) for v in axes[key]):
                fine = False
                shown = [_show(v) for v in axes[key]]
                match = difflib.get_close_matches(_show(given), shown, n=1, cutoff=0.5)
                problems.append(f"{at}.{key}: {given!r} is not one of the grid's values {', '.join(shown)}"
                                + (f"; did you mean {match[0]!r}?" if match else ""))
        if fine and not any(excluded(run, [entry]) for run in runs):
            together = ", ".join(f"{k}: {_show(v)}" for k, v in entry.items())
            problems.append(f"{at}: no run of the grid has {together} together (e.g. method and sparsity are "
                            "axes of sparse runs only, a learning rate of unlearn.objective_args its objective's "
                            "only); it would leave out nothing")
    if runs and not problems and all(excluded(run, exclude) for run in runs):
        problems.append(f"{where}: leaves out every run of the grid; set unlearn.enabled: false to run none")
    return problems


def recipe_starts(recipe) -> list[Start]:
    """The starting models of the recipe's unlearning runs, by their axes (the recipe check's view: no model refs)."""
    u, p = recipe.unlearn, recipe.prune
    starts = [Start("dense", None, 0.0, None, start_axes())] if "dense" in u.model else []
    if "sparse" in u.model and p.enabled:
        for method in p.method:
            for sp in (p.sparsity if p.structure == "unstructured" else [None]):
                starts.append(Start(method, method, 0.0, None, start_axes(method, sp, p.structure)))
    return starts


def check_exclude(recipe, grids: dict[str, tuple[list, list | None]], errors: list[str]) -> None:
    """``unlearn.exclude`` checked against the recipe's grid (every problem at once, appended to `errors`)."""
    u = recipe.unlearn
    if not u.exclude or not u.enabled:
        return
    errors += exclusion_problems(u.exclude, [run.axes for run in grid_runs(u, recipe_starts(recipe), grids)])
