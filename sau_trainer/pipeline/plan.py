"""The planner: a recipe -> the list of its tasks, in an order that respects their dependencies.

One step per kind of work, each adding its tasks to the shared `Planner`:
`plan_models` (the target and retain models), `plan_pruning`, `plan_unlearning` (the grid, then the attacks of
`attacks.plan_attacks`), `plan_evaluations` (the references first, then every run), `plan_report`, `plan_push`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

from .grid import Start, grid_runs, start_axes
from .planner import Planner, Pruning, prune_id, run_name, target_sparsity, train_settings
from .recipe_io import RecipeError
from .schema import Recipe, TrainSection, objective_grids
from .tasks import Task, default_splits


def plan(recipe: Recipe, load: Callable[[], dict] | None = None) -> list[Task]:
    """The tasks of a recipe in an order that respects their dependencies (`load` gives the data if needed)."""
    from .trajectories import retain_eval_first, trajectory_settings

    pl = Planner.start(recipe, load)
    plan_models(pl)
    plan_pruning(pl)
    traj = trajectory_settings(recipe)  # unlearn.eval_steps; None (off): no key, existing hashes unchanged
    runs = plan_unlearning(pl, traj)
    plan_evaluations(pl, runs)
    plan_report(pl)
    plan_push(pl, runs)
    if traj:
        retain_eval_first(pl.tasks)
    _check_order(pl.tasks)
    return pl.tasks


def plan_models(pl: Planner) -> None:
    """The target and retain models: a train task each, or an external model (``refs``: ``task:NAME`` or a
    model reference; None for a retain model neither trained nor given)."""
    recipe = pl.recipe
    for role, sec_name, row_name in (("target", "train_target", "finetuned"), ("retain", "train_retain", "retain")):
        sec: TrainSection = getattr(recipe, sec_name)
        if sec.enabled:
            splits = sec.splits or default_splits(recipe, role)
            pl.add(Task("train", f"models/{row_name}", {"model": pl.model_spec, "data": pl.fp,
                                                       **train_settings(sec, splits)}, dict(pl.tok_deps)))
            pl.refs[role] = f"task:models/{row_name}"
        else:
            pl.refs[role] = recipe.model.name_or_path if role == "target" else sec.model


def prunings_of(recipe: Recipe) -> list[Pruning]:
    """``prune.method`` x ``prune.sparsity`` (one per method for N:M), each once; two sparsities that round to the
    same output name are an error."""
    p = recipe.prune
    out: list[Pruning] = []
    if not p.enabled:
        return out
    structure = p.structure
    for method in p.method:
        for sp in (p.sparsity if structure == "unstructured" else [None]):
            pid = prune_id(method, sp or 0.0, structure)
            same = [x for x in out if x.pid == pid]
            if same and same[0].sparsity != sp:
                raise RecipeError(f"prune.sparsity: {same[0].sparsity} and {sp} share the output name {pid!r}; "
                                  "use sparsities that differ by at least one percent")
            if not same:
                label = method if structure == "unstructured" else f"{method} {structure}"
                out.append(Pruning(pid, method, sp, target_sparsity(sp, structure), label))
    return out


def plan_pruning(pl: Planner) -> None:
    """A prune task per pruning of the target model (and of the retain model with ``prune.prune_retain``)."""
    pl.prunings = prunings_of(pl.recipe)
    for pr in pl.prunings:
        for role, prefix in (("target", "finetuned"), ("retain", "retain")):
            ref = pl.refs[role]
            if role == "retain" and not (pl.recipe.prune.prune_retain and ref):
                continue
            pl.add(Task("prune", f"models/{prefix}+{pr.pid}", pl.prune_settings(pr.method, pr.sparsity, ref),
                        {**pl.deps_of(ref), **pl.tok_deps}))


def plan_unlearning(pl: Planner, traj: dict | None) -> list[dict]:
    """Every point of model x objective x sau x SAUConfig axes x learning rate x seed (less ``unlearn.exclude``'s),
    then the attacks on them; returns the runs' report rows."""
    from ..benchmarks.registry import get_benchmark
    from ..objectives import definitions as objective_definitions
    from .attacks import plan_attacks

    recipe = pl.recipe
    d, u, m = recipe.data, recipe.unlearn, recipe.model
    bench = get_benchmark(d.benchmark)
    unlearn_forget, retain_split = bench.unlearning_splits(retain_split=u.retain_split, subset=d.subset,
                                                           **bench.data_options(d))
    if not u.enabled:
        return []
    refs = pl.refs
    starts = [Start("dense", None, 0.0, refs["target"], start_axes())] if "dense" in u.model else []
    if "sparse" in u.model:
        starts += [Start(pr.pid, pr.pid, pr.target_sparsity, f"task:models/finetuned+{pr.pid}",
                         start_axes(pr.method, pr.sparsity, recipe.prune.structure)) for pr in pl.prunings]
    labels = {pr.pid: pr.label for pr in pl.prunings}
    runs: list[dict] = []
    point_settings: dict[str, dict] = {}  # run name -> its unlearn settings (the extra axes set to its values)
    for r in grid_runs(u, starts, objective_grids(u), u.exclude):
        ref, pid = r.start.ref, r.start.pid
        name = run_name(r.start.name, r.objective, r.sau, r.learning_rate, r.seed, r.grid)
        settings = {**pl.src_settings(ref), "objective": r.objective, "sau": r.sau, "learning_rate": r.learning_rate,
                    "seed": r.seed, "unlearn": r.settings, "forget_split": unlearn_forget, "retain_split": retain_split,
                    "dtype": m.dtype, "data": pl.fp}
        if defs := objective_definitions(r.objective, r.settings.get("args") or {}):
            settings["definitions"] = defs  # changed definitions: a new hash, recomputed
        if traj:
            settings["trajectory"] = traj
        pl.add(Task("unlearn", f"models/{name}", settings,
                    {**pl.deps_of(ref, "source"), **pl.tok_deps,
                     **({"retain_eval": "eval/retain"} if traj and refs["retain"] else {})}))
        point_settings[name] = r.settings
        runs.append(dict(name=name, model="sparse" if pid else "dense", pruning=labels.get(pid), prune_id=pid,
                         target_sparsity=r.start.target_sparsity, objective=r.objective, sau=r.sau,
                         learning_rate=r.learning_rate, seed=r.seed, **({"grid": r.grid} if r.grid else {})))
    # robustness attacks (evaluate.robustness) and the unlearn-then-prune check: pipeline/attacks.py
    return runs + plan_attacks(pl, runs, unlearn_forget=unlearn_forget, point_settings=point_settings)


def _reference_rows(pl: Planner) -> list[dict]:
    """The evaluations every run is compared with: the retain model (and its pruned twins), the target model (and
    its prunings)."""
    recipe, refs = pl.recipe, pl.refs
    rows = []
    if refs["retain"]:
        rows.append(dict(name="retain", model="retain", pruning=None, target_sparsity=0.0, ref=refs["retain"],
                         seed=recipe.train_retain.seed))
        if recipe.prune.prune_retain:
            rows += [dict(name=f"retain+{pr.pid}", model="retain", pruning=pr.label, prune_id=pr.pid,
                          target_sparsity=pr.target_sparsity, ref=f"task:models/retain+{pr.pid}",
                          seed=recipe.train_retain.seed) for pr in pl.prunings]
    tseed = recipe.train_target.seed
    rows.append(dict(name="finetuned", model="finetuned", pruning=None, target_sparsity=0.0, ref=refs["target"],
                     seed=tseed))
    rows += [dict(name=f"finetuned+{pr.pid}", model="finetuned", pruning=pr.label, prune_id=pr.pid,
                  target_sparsity=pr.target_sparsity, ref=f"task:models/finetuned+{pr.pid}", seed=tseed)
             for pr in pl.prunings]
    return [dict(r, reference=True, objective=None, sau=False, learning_rate=None) for r in rows]


_META_KEYS = ("name", "model", "pruning", "target_sparsity", "objective", "sau", "learning_rate", "seed", "reference")


def plan_evaluations(pl: Planner, runs: list[dict]) -> None:
    """One evaluate task per reference and per run (attacked copies included); the retain references first,
    since forget quality is measured against them."""
    from ..benchmarks.registry import get_benchmark
    from ..evaluation.compat import DEFINITIONS_VERSION
    from .robustness import evaluation_settings

    recipe = pl.recipe
    d = recipe.data
    e_settings = {"evaluate": evaluation_settings(recipe.evaluate), "forget_split": d.forget_split, "data": pl.fp,
                  "loading": pl.loading, "protocol": get_benchmark(d.benchmark).protocol, "membership_inference": 1,
                  "definitions": DEFINITIONS_VERSION}
    rows = _reference_rows(pl) + [dict(r, reference=False, ref=f"task:models/{r['name']}") for r in runs]
    has_retain_eval = bool(pl.refs["retain"])
    prune_retain = recipe.prune.prune_retain
    for row in rows:
        deps = {**pl.deps_of(row["ref"], "model"), **pl.tok_deps}
        settings = {**pl.src_settings(row["ref"]), **e_settings}
        if row["name"] == "retain":
            settings["is_retain"] = True
        elif has_retain_eval:
            deps["retain_eval"] = "eval/retain"
        pid = row.get("prune_id")
        if pid and prune_retain and has_retain_eval and row["name"] != f"retain+{pid}":
            deps["pruned_retain_eval"] = f"eval/retain+{pid}"
        meta = {k: row.get(k) for k in _META_KEYS}
        meta["unlearn_then_prune"] = bool(row.get("unlearn_then_prune"))
        if row.get("grid"):
            meta["grid"] = row["grid"]
        meta["model_dir"] = row["ref"]
        if row.get("attack_of"):
            meta.update(attack_of=row["attack_of"], attack=row["attack"])
            if not row["attack"].startswith("prune-"):  # a pruned copy is evaluated like any pruned model
                settings["attack"] = row["attack"]
                if "relearn_heldout" in row:
                    settings["relearn_heldout"] = row["relearn_heldout"]
        pl.add(Task("evaluate", f"eval/{row['name']}", settings, deps, meta))


def plan_report(pl: Planner) -> None:
    """The report task, reading every evaluation (its settings: the report section, less ``keep_models``)."""
    report = {k: v for k, v in asdict(pl.recipe.report).items() if k != "keep_models"}
    pl.add(Task("report", "report", {"report": report}, {t.name: t.name for t in pl.tasks if t.kind == "evaluate"}))


def plan_push(pl: Planner, runs: list[dict]) -> None:
    """The push task of ``push.push_to_hub``: the chosen sparse run (``push.run``, else the first SAU one)."""
    h = pl.recipe.push
    if not h.push_to_hub:
        return
    sparse_runs = [r for r in runs if r["model"] == "sparse"]
    chosen = h.run or next((r["name"] for r in sparse_runs if r["sau"]), sparse_runs[0]["name"])
    if chosen not in [r["name"] for r in sparse_runs]:
        from .schema import _closest

        raise RecipeError(f"push.run: {chosen!r} is not a sparse run of the grid; "
                          f"{_closest(chosen, [r['name'] for r in sparse_runs])}")
    pl.add(Task("push", "push", {"run": chosen, "hub_model_id": h.hub_model_id, "private": h.private,
                                 "commit_message": h.commit_message},
                {"model": f"models/{chosen}", "eval": f"eval/{chosen}", "report": "report"}))


def _check_order(tasks: list[Task]) -> None:
    seen: set[str] = set()
    for t in tasks:
        if t.name in seen:
            raise RuntimeError(f"two tasks named {t.name!r}")  # pragma: no cover - a planner bug
        missing = [d for d in t.deps.values() if d not in seen]
        if missing:
            raise RuntimeError(f"task {t.name} depends on {missing}, planned later")  # pragma: no cover
        seen.add(t.name)


__all__ = ["plan", "plan_evaluations", "plan_models", "plan_pruning", "plan_push", "plan_report", "plan_unlearning",
           "prunings_of"]
