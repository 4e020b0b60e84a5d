"""Robustness of forgetting in a recipe run: the attack stages, their planning and their place in the report.

``evaluate.robustness`` lists attacks (`sau_trainer.robustness.parse_attack`); each one makes an attacked copy
of every unlearned model, a cached stage of its own (``models/<run>@<attack>``; pruning attacks are prune
stages named ``models/<run>+<pruning>``, the names the unlearn-then-prune check always used), and evaluates it
with the run's own benchmark protocol (``eval/<run>@<attack>``). Adding an attack to a finished run computes
only the attack: the attack settings enter no other task's hash. ``unlearn.then_prune`` means the prune
attacks of the recipe's own pruning settings on the dense runs, listed as their own report rows as before.

Each report row of an unlearning run gains ``"robustness": {"<attack>": {...summary...}}`` with the attacked
model's summary under the same metric names (``{"skipped": "<reason>"}`` where bitsandbytes cannot run).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

from ..robustness import Attack, parse_attack
from .robustness_report import (  # noqa: F401  (re-exported: the attacks' place in the report lives there)
    markdown_section,
    matched_runs,
    plot_robustness,
    robustness_table,
)

logger = logging.getLogger(__name__)

SKIPPED_FILE = "skipped.json"
RELEARN_FILE = "relearn.json"
# EvaluateSection fields that configure the attacks: they enter only the attack tasks' hashes
ROBUSTNESS_KEYS = ("robustness", "relearn_fraction", "relearn_epochs", "relearn_learning_rate", "relearn_seed",
                   "relearn_keep_sparsity", "relearn_judge_on_relearned_rows")


def evaluation_settings(e) -> dict:
    """``asdict(evaluate)`` without the attack settings (so adding an attack changes no evaluation's hash)."""
    return {k: v for k, v in asdict(e).items() if k not in ROBUSTNESS_KEYS and k != "device_map"}


def attacks_of(recipe) -> list[Attack]:
    return [parse_attack(name) for name in (recipe.evaluate.robustness or [])]


def check(recipe, errors: list[str]) -> None:
    """Recipe checks of ``evaluate.robustness`` and the relearning settings (called by the schema)."""
    e = recipe.evaluate
    names = e.robustness or []
    if len(set(names)) != len(names):
        errors.append(f"evaluate.robustness: repeated entries in {names!r}")
    for i, name in enumerate(names):
        try:
            parse_attack(name)
        except ValueError as err:
            errors.append(f"evaluate.robustness[{i}]: {err}")
    if names and e.device_map is not None:
        errors.append(f"evaluate.device_map={e.device_map!r} with evaluate.robustness: attacked models are loaded on "
                      "one device, not spread; remove one of the two (run the attacks in a recipe without device_map)")
    if not 0 < e.relearn_fraction <= 1:
        errors.append(f"evaluate.relearn_fraction: must be in (0, 1], got {e.relearn_fraction!r}")
    if e.relearn_epochs <= 0:
        errors.append(f"evaluate.relearn_epochs: must be > 0, got {e.relearn_epochs!r}")
    if e.relearn_learning_rate is not None and not e.relearn_learning_rate > 0:
        errors.append(f"evaluate.relearn_learning_rate: must be > 0 or null (the run's own), "
                      f"got {e.relearn_learning_rate!r}")


# ----------------------------------------------------------------------------------------- planning
def plan_attacks(recipe, runs: list[dict], prunings: list[tuple], *, add, planned: dict, src_settings, tok_deps: dict,
                 prune_settings_for, unlearn_settings_for, unlearn_forget: str, fp: dict) -> list[dict]:
    """The attack tasks of every unlearning run (added with `add`) and their report rows.

    `runs` are the planner's unlearning runs; `prune_settings_for(method, sparsity, structure, ref)` gives a
    prune task's settings; `unlearn_settings_for(run)` a run's unlearn section settings. Returns rows for
    the evaluation loop: then-prune rows (``unlearn_then_prune``) and attacked copies (``attack_of``/``attack``).
    """
    from ..data.benchmarks import get_benchmark

    e = recipe.evaluate
    attacks = attacks_of(recipe)
    bnb = None
    rows: list[dict] = []
    by_name: dict[str, dict] = {}
    then_prune = [Attack(f"prune-{pid}", "prune", "", method=method, sparsity=sp, structure=recipe.prune.structure)
                  for pid, method, sp, _ in prunings] if recipe.unlearn.then_prune else []
    chunked = get_benchmark(recipe.data.benchmark).protocol != "tofu"
    for run in runs:
        ref = f"task:models/{run['name']}"
        todo = [(a, False) for a in attacks]
        if run["model"] == "dense":
            todo += [(a, True) for a in then_prune]
        for attack, is_then_prune in todo:
            if attack.kind == "prune":
                name = f"{run['name']}+{attack.prune_id}"
                settings = prune_settings_for(attack.method, attack.sparsity, attack.structure, ref)
                kind = "prune"
            else:
                name = f"{run['name']}@{attack.name}"
                settings = {**src_settings(ref), "attack": attack.name, "dtype": recipe.model.dtype}
                kind = "attack"
                if attack.kind == "quant":
                    settings["bits"], settings["group_size"] = attack.bits, 128
                elif attack.kind == "bnb":
                    if bnb is None:
                        from ..robustness import bnb_status

                        bnb = bnb_status()
                    settings["backend"] = bnb[1] if bnb[0] else None  # installing bitsandbytes recomputes it
                else:
                    settings.update({"unlearn": unlearn_settings_for(run),
                                     "learning_rate": e.relearn_learning_rate or run["learning_rate"],
                                     "fraction": e.relearn_fraction, "epochs": e.relearn_epochs,
                                     "seed": e.relearn_seed, "forget_split": unlearn_forget, "data": fp,
                                     "chunked": chunked,
                                     "keep_sparsity": bool(e.relearn_keep_sparsity and run["model"] == "sparse")})
            task_name = f"models/{name}"
            if task_name in planned:
                if planned[task_name].settings != settings:
                    from .schema import RecipeError

                    raise RecipeError(f"evaluate.robustness: {attack.name} and the recipe's pruning settings both "
                                      f"name {task_name!r} with different settings; use one of them")
            else:
                from .stages import Task

                planned[task_name] = add(Task(kind, task_name, settings, {"model": f"models/{run['name']}", **tok_deps}))
            row = by_name.get(name)
            if row is None:
                row = {**run, "name": name, "attack_of": run["name"], "attack": attack.name}
                if attack.kind == "prune":
                    pid = attack.prune_id
                    row.update(pruning=_prune_label(attack), prune_id=pid if pid in {p[0] for p in prunings} else None,
                               target_sparsity=_target(attack))
                if attack.kind == "relearn":
                    row["relearn_heldout"] = not e.relearn_judge_on_relearned_rows
                by_name[name] = row
                rows.append(row)
            if is_then_prune:
                row["unlearn_then_prune"] = True
    return rows


def _prune_label(attack: Attack) -> str:
    return attack.method if attack.structure == "unstructured" else f"{attack.method} {attack.structure}"


def _target(attack: Attack) -> float:
    from .stages import _target_sparsity

    return _target_sparsity(attack.sparsity, attack.structure)


# ----------------------------------------------------------------------------------------- stages
def run_attack(ctx, task, out: Path) -> dict:
    """Make the attacked copy of one unlearned model: quantized (torch or bitsandbytes) or relearned."""
    import torch

    from .stages import load_model

    s = task.settings
    attack = parse_attack(s["attack"])
    if attack.kind != "relearn" and not ctx.is_main:  # under accelerate launch only relearning is data parallel
        return {}
    if attack.kind == "bnb" and s.get("backend") is None:  # planned without a usable bitsandbytes
        from ..robustness import bnb_status

        reason = bnb_status()[1]
        logger.warning("%s skipped: %s", task.name, reason)
        (out / SKIPPED_FILE).write_text(json.dumps({"attack": attack.name, "reason": reason}) + "\n")
        return {"skipped": reason}
    tok = ctx.tokenizer()
    if attack.kind in ("quant", "bnb"):
        from ..robustness import quantize_model

        model = load_model(ctx, s["source"], ctx.device)
        info = quantize_model(model, attack)
    else:
        model = load_model(ctx, s["source"])  # the Trainer places it (one process or data parallel)
        info = _relearn(ctx, task, model, tok, out)
    from ..pruning import measured_sparsity

    info["measured_sparsity"] = measured_sparsity(model)
    if ctx.is_main:
        model.config.use_cache = True
        model.save_pretrained(out)
        tok.save_pretrained(out)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return info


def _relearn(ctx, task, model, tok, out: Path) -> dict:
    """Plain finetuning (`sau_trainer.finetune`) on a seeded part of the forget set, at the run's learning rate."""
    import dataclasses

    from transformers import TrainingArguments

    from ..finetuning import finetune
    from ..robustness import relearn_selection
    from .schema import FINETUNE_PRECISION_FIELDS, TrainerSettings
    from .stages import _trainer_kwargs

    s = task.settings
    u = s["unlearn"]
    sec = TrainerSettings(**{k: u[k] for k in TrainerSettings.__dataclass_fields__})
    split = s["forget_split"]
    forget = ctx.split(split)
    picked = relearn_selection(forget, s["fraction"], s["seed"])
    chosen = [forget[i] for i in picked]
    if s.get("chunked"):
        from ..evaluation.tofu import model_max_length

        limit = model_max_length(model)
        chunk = sec.max_length if limit is None else min(sec.max_length, limit - 1)
        rows = ctx.bench.unlearning_rows({split: chosen}, split, tok, chunk)
    else:
        rows = ctx.bench.unlearning_rows({split: chosen}, split)
    kwargs = _trainer_kwargs(sec, ctx)
    allowed = {f.name for f in dataclasses.fields(TrainingArguments)} | set(FINETUNE_PRECISION_FIELDS)
    kwargs = {k: v for k, v in kwargs.items() if k in allowed}  # SAUConfig-only fields are the unlearning's
    for key in ("num_train_epochs", "per_device_train_batch_size", "learning_rate", "seed", "data_seed",
                "output_dir", "max_length"):
        kwargs.pop(key, None)
    kwargs.setdefault("disable_tqdm", True)
    trainer_cls = None
    if s.get("keep_sparsity"):
        from transformers import Trainer

        from ..sparsity import sparsity_preserving

        trainer_cls = sparsity_preserving(Trainer)  # the masks are the unlearned model's exact zeros
    finetune(model, tok, rows, str(out / "_trainer"), num_train_epochs=s["epochs"], learning_rate=s["learning_rate"],
             per_device_train_batch_size=sec.per_device_train_batch_size, max_length=sec.max_length, seed=s["seed"],
             save=False, trainer_cls=trainer_cls, **kwargs)
    if ctx.is_main:
        import shutil

        shutil.rmtree(out / "_trainer", ignore_errors=True)
        (out / RELEARN_FILE).write_text(json.dumps({"split": split, "indices": picked, "rows": chosen,
                                                    "training_rows": len(rows)}, indent=1) + "\n")
    return {"relearned_rows": len(chosen), "of": len(forget), "training_rows": len(rows),
            "learning_rate": s["learning_rate"], "epochs": s["epochs"]}


def run_attack_evaluate(ctx, task, out: Path) -> dict:
    """The benchmark's evaluation of an attacked copy; a relearned copy is judged without its relearned rows
    (unless the recipe says otherwise), and the retain reference is cut to the same forget questions."""
    from ..evaluation.results import (
        attach_forget_quality,
        build_results,
        has_truth_ratios,
        load_results,
        reference_metrics,
        save_results,
    )
    from ..pruning import measured_sparsity
    from ..robustness import heldout_splits, restrict_per_example
    from .stages import load_model

    s = task.settings
    src = Path(ctx.model_source(s["source"]))
    if (src / SKIPPED_FILE).is_file():
        reason = json.loads((src / SKIPPED_FILE).read_text())["reason"]
        results = build_results({"summary": {}, "per_example": {}}, {"name": task.meta.get("name"), "path": str(src),
                                                                     "measured_sparsity": None, "skipped": reason}, s)
        results["skipped"] = reason
        save_results(results, out)
        return {"skipped": reason}
    tok = ctx.tokenizer()
    data = ctx.benchmark
    dropped: dict[str, int] = {}
    relearn = src / RELEARN_FILE
    if s.get("relearn_heldout") and relearn.is_file():
        data, dropped = heldout_splits(data, json.loads(relearn.read_text())["rows"])
    retain = load_results(ctx.task_dir(task.dep("retain_eval"))) if "retain_eval" in task.deps else None
    pruned_retain = (load_results(ctx.task_dir(task.dep("pruned_retain_eval")))
                     if "pruned_retain_eval" in task.deps else None)
    model = load_model(ctx, str(src), ctx.device)
    sparsity = measured_sparsity(model)
    e = s["evaluate"]
    evaluation = ctx.bench.evaluate(model, tok, data, forget_split=s["forget_split"], batch_size=e["batch_size"],
                                    max_new_tokens=e["max_new_tokens"], max_length=e["max_length"],
                                    retain_results=None, show_progress=ctx.is_main, compat=e.get("compat"),
                                    question_key=e.get("question_key", "question"),
                                    **({"max_prompt_tokens": e["max_prompt_tokens"]} if e.get("max_prompt_tokens")
                                       else {}))
    if dropped and has_truth_ratios(evaluation):
        kept = set(evaluation["per_example"]["forget"]["question"])
        retain = retain and restrict_per_example(retain, kept)
        pruned_retain = pruned_retain and restrict_per_example(pruned_retain, kept)
    evaluation = attach_forget_quality(evaluation, retain)
    results = build_results(evaluation, {"name": task.meta.get("name"), "path": str(src),
                                         "measured_sparsity": sparsity}, s)
    if pruned_retain is not None:
        for key, value in reference_metrics(results, pruned_retain).items():
            results["summary"][f"{key}_pruned_retain"] = value
    results["judged_without_relearned_rows"] = dropped
    save_results(results, out)
    return {"measured_sparsity": sparsity, "summary": results["summary"], "dropped_rows": dropped}


# ----------------------------------------------------------------------------------------- report
def fold_attacks(rows: list[dict]) -> list[dict]:
    """Attach every attacked copy's metrics to its run (``row["robustness"][attack]``); keep then-prune rows as
    rows of their own (the unlearn-then-prune check), drop the other attacked copies from the row list."""
    by_name = {r["name"]: r for r in rows if not r.get("attack_of")}
    out = []
    for r in rows:
        target = by_name.get(r.get("attack_of"))
        if target is not None:
            entry = {"skipped": r["skipped"]} if r.get("skipped") else dict(r["metrics"])
            target.setdefault("robustness", {})[r["attack"]] = entry
        if not r.get("attack_of") or r.get("unlearn_then_prune"):
            out.append(r)
    return out


__all__ = ["ROBUSTNESS_KEYS", "attacks_of", "check", "evaluation_settings", "fold_attacks", "markdown_section",
           "matched_runs", "plan_attacks", "plot_robustness", "robustness_table", "run_attack", "run_attack_evaluate"]
