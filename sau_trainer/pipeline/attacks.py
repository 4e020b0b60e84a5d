"""The attack stages of ``evaluate.robustness`` and the unlearn-then-prune check: their planning (one attacked copy
of every unlearned model, each a cached task) and the stage functions that make and evaluate the copies. What the
attacks are and their place in the report: `pipeline/robustness.py`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..robustness import Attack, parse_attack
from .loading import _trainer_kwargs, load_model
from .planner import Planner, target_sparsity
from .recipe_io import RecipeError
from .robustness import RELEARN_FILE, SKIPPED_FILE, attacks_of
from .task_settings import EvaluateSettings, trainer_settings
from .tasks import Task

logger = logging.getLogger("sau_trainer.pipeline.robustness")  # its messages' name before the split


def plan_attacks(pl: Planner, runs: list[dict], *, unlearn_forget: str, point_settings: dict[str, dict]) -> list[dict]:
    """The attack tasks of every unlearning run (added to the planner `pl`) and their report rows.

    `runs` are the planner's unlearning runs; `point_settings` maps a run's name to its unlearn section settings
    (a relearning attack trains with them). Returns rows for the evaluation loop: then-prune rows
    (``unlearn_then_prune``) and attacked copies (``attack_of``/``attack``).
    """
    from ..benchmarks.registry import get_benchmark

    recipe = pl.recipe
    e = recipe.evaluate
    attacks = attacks_of(recipe)
    bnb = None
    rows: list[dict] = []
    by_name: dict[str, dict] = {}
    then_prune = [Attack(f"prune-{p.pid}", "prune", "", method=p.method, sparsity=p.sparsity,
                         structure=recipe.prune.structure) for p in pl.prunings] if recipe.unlearn.then_prune else []
    chunked = get_benchmark(recipe.data.benchmark).protocol != "tofu"
    for run in runs:
        ref = f"task:models/{run['name']}"
        todo = [(a, False) for a in attacks]
        if run["model"] == "dense":
            todo += [(a, True) for a in then_prune]
        for attack, is_then_prune in todo:
            if attack.kind == "prune":
                name = f"{run['name']}+{attack.prune_id}"
                settings = pl.prune_settings(attack.method, attack.sparsity, ref, attack.structure)
                kind = "prune"
            else:
                name = f"{run['name']}@{attack.name}"
                settings = {**pl.src_settings(ref), "attack": attack.name, "dtype": recipe.model.dtype}
                kind = "attack"
                if attack.kind == "quant":
                    settings["bits"], settings["group_size"] = attack.bits, 128
                elif attack.kind == "bnb":
                    if bnb is None:
                        from ..robustness import bnb_status

                        bnb = bnb_status()
                    settings["backend"] = bnb[1] if bnb[0] else None  # installing bitsandbytes recomputes it
                else:
                    settings.update({"unlearn": point_settings[run["name"]],
                                     "learning_rate": e.relearn_learning_rate or run["learning_rate"],
                                     "fraction": e.relearn_fraction, "epochs": e.relearn_epochs,
                                     "seed": e.relearn_seed, "forget_split": unlearn_forget, "data": pl.fp,
                                     "chunked": chunked,
                                     "keep_sparsity": bool(e.relearn_keep_sparsity and run["model"] == "sparse")})
            task_name = f"models/{name}"
            if task_name in pl.by_name:
                if pl.by_name[task_name].settings != settings:
                    raise RecipeError(f"evaluate.robustness: {attack.name} and the recipe's pruning settings both "
                                      f"name {task_name!r} with different settings; use one of them")
            else:
                pl.add(Task(kind, task_name, settings, {"model": f"models/{run['name']}", **pl.tok_deps}))
            row = by_name.get(name)
            if row is None:
                row = {**run, "name": name, "attack_of": run["name"], "attack": attack.name}
                if attack.kind == "prune":
                    pid = attack.prune_id
                    row.update(pruning=_prune_label(attack), prune_id=pid if pid in {p.pid for p in pl.prunings} else None,
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
    return target_sparsity(attack.sparsity, attack.structure)


# ----------------------------------------------------------------------------------------- stages
def run_attack(ctx, task, out: Path) -> dict:
    """Make the attacked copy of one unlearned model: quantized (torch or bitsandbytes) or relearned."""
    import torch

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
    from .schema import FINETUNE_PRECISION_FIELDS

    s = task.settings
    u = s["unlearn"]
    sec = trainer_settings(u)
    split = s["forget_split"]
    forget = ctx.split(split)
    picked = relearn_selection(forget, s["fraction"], s["seed"])
    chosen = [forget[i] for i in picked]
    if s.get("chunked"):
        from ..benchmarks.tofu.evaluation import model_max_length

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
    evaluation = ctx.bench.evaluate(model, tok, data, **ctx.bench.data_options(ctx.recipe.data),
                                    retain_results=None, show_progress=ctx.is_main,
                                    **EvaluateSettings.of(s).evaluate_kwargs())
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


__all__ = ["plan_attacks", "run_attack", "run_attack_evaluate"]
