"""The stage functions: each takes (ctx, task, out_dir), writes its output into out_dir (a temporary directory that
the runner renames into place once the function returns) and returns a JSON-able dict saved in stage.json as
``info``. `stages.STAGES` lists them with how each is run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .loading import _dtype, _trainer_kwargs, load_model
from .schema import TrainSection
from .task_settings import EvaluateSettings, UnlearnSettings
from .tasks import Context, Task


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def _texts(ctx: Context, split: str) -> list[str]:
    """Calibration texts of a split, as the benchmark defines them (TOFU: prompt + answer)."""
    return ctx.bench.calibration_texts(ctx.benchmark, split, ctx.tokenizer())


def run_tokenizer(ctx: Context, task: Task, out: Path) -> dict:
    """A byte-level BPE trained on every string of the benchmark (for a model built from scratch)."""
    from ..data.tokenizer import train_tokenizer

    texts = ctx.bench.tokenizer_texts(ctx.benchmark)
    tok = train_tokenizer(texts, vocab_size=task.settings["vocab_size"])
    tok.save_pretrained(out)
    return {"vocab_size": len(tok)}


def run_train(ctx: Context, task: Task, out: Path) -> dict:
    """Finetune the target or retain model on its splits (data parallel under accelerate)."""
    import torch

    from ..finetuning import finetune
    from ..modeling import build_llama

    s = task.settings
    sec = TrainSection(**s["train"])
    tok = ctx.tokenizer()
    m = ctx.recipe.model
    if m.shape is not None:
        model = build_llama(m.shape, tok, seed=m.init_seed)
        if m.dtype not in ("float32", "auto"):
            model.to(_dtype(m.dtype))
    else:
        model = load_model(ctx, m.name_or_path)
    if sec.gradient_checkpointing:
        model.config.use_cache = False
    rows = ctx.rows(s["splits"])
    kwargs = _trainer_kwargs(sec, ctx)
    kwargs.setdefault("disable_tqdm", not ctx.is_main)
    finetune(model, tok, rows, str(out), num_train_epochs=kwargs.pop("num_train_epochs"),
             learning_rate=sec.learning_rate,
             per_device_train_batch_size=kwargs.pop("per_device_train_batch_size"), max_length=sec.max_length,
             seed=sec.seed, **kwargs)
    if ctx.is_main:
        tok.save_pretrained(out)
        model.config.use_cache = True
        model.config.save_pretrained(out)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"rows": len(rows), "splits": s["splits"], "num_processes": ctx.num_processes}


def run_prune(ctx: Context, task: Task, out: Path) -> dict:
    """Prune a saved model (magnitude / wanda / sparsegpt) and save it with sparsity.json and masks. With
    ``offload`` the model stays in CPU memory and each decoder layer is pruned on the device, then moved back."""
    from ..pruning import PRUNERS, load_texts, prune_model, save_sparse_model

    s = task.settings
    tok = ctx.tokenizer()
    offload = bool(s.get("offload"))
    model = load_model(ctx, s["source"], None if offload else ctx.device)
    calibration = None
    if PRUNERS[s["method"]].statistic is not None:  # a calibrated pruner (wanda, sparsegpt, a plugin's)
        calibration = (load_texts(s["calibration_path"]) if s["calibration_path"]
                       else _texts(ctx, s["calibration_split"]))
    result = prune_model(model, s["method"], s["sparsity"], s["structure"], calibration=calibration, tokenizer=tok,
                         num_samples=s["num_samples"], seq_len=s["seq_len"], batch_size=s["batch_size"],
                         device=ctx.device if offload else None, progress=ctx.is_main)
    save_sparse_model(model, tok, out, result)
    return {"measured_sparsity": result.sparsity}


def unlearn_config(ctx: Context, s: dict, out: Path | str):
    """The `SAUConfig` of one unlearning grid point (task settings `s`): the section's trainer settings, its
    ``sau_topk``/``sau_alpha``, every SAUConfig field under ``unlearn.args`` (set there or directly in the
    section, e.g. ``low_precision_weights``, ``compensated_optimizer``) and the grid axes."""
    from ..config import SAUConfig

    point = UnlearnSettings.of(s)
    kwargs = _trainer_kwargs(point.trainer, ctx)
    kwargs.setdefault("disable_tqdm", not ctx.is_main)
    kwargs.setdefault("max_length", point.trainer.max_length)
    return SAUConfig(output_dir=str(out), objective=point.objective, sau=point.sau, learning_rate=point.learning_rate,
                     seed=point.seed, data_seed=point.seed, sau_topk=point.sau_topk, sau_alpha=point.sau_alpha,
                     **kwargs)


def run_unlearn(ctx: Context, task: Task, out: Path) -> dict:
    """One grid point: `SAUTrainer` on the dense or pruned model (data parallel under accelerate)."""
    import torch

    from ..masks import MASKS_FILE, SparsityMasks
    from ..pruning import SPARSITY_FILE, measured_sparsity
    from ..trainer import SAUTrainer

    s = task.settings
    src = ctx.model_source(s["source"])
    tok = ctx.tokenizer()
    model = load_model(ctx, src)
    sparse = os.path.isfile(os.path.join(src, MASKS_FILE))
    masks = SparsityMasks.load(src, model) if sparse else SparsityMasks.dense(model)
    if sparse:  # from the cache: masks that disagree with the weights' zeros are an error, never "fixed"
        from ..masks import prunable_parameters

        masks.check_weights(prunable_parameters(model), os.path.join(src, MASKS_FILE))
    args = unlearn_config(ctx, s, out)
    if args.gradient_checkpointing:
        model.config.use_cache = False
    from ..benchmarks.tofu.evaluation import model_max_length

    limit = model_max_length(model)  # text benchmarks are cut into chunks of max_length tokens, within the model's
    chunk = args.max_length if limit is None else min(args.max_length, limit - 1)  # limit (BOS included)
    forget_rows = ctx.bench.unlearning_rows(ctx.benchmark, s["forget_split"], tok, chunk)
    retain_rows = ctx.bench.unlearning_rows(ctx.benchmark, s["retain_split"], tok, chunk)
    callbacks = []
    if s.get("trajectory"):  # unlearn.eval_steps: the benchmark evaluated during unlearning (pipeline/trajectories.py)
        from .trajectories import evaluation_callback

        callbacks.append(evaluation_callback(ctx, task, tok))
    trainer = SAUTrainer(model, args, forget_dataset=forget_rows, retain_dataset=retain_rows, processing_class=tok,
                         sparsity_masks=masks, callbacks=callbacks or None)
    trainer.train()
    trainer.save_model(str(out))
    info = {"measured_sparsity": measured_sparsity(trainer.model), "target_sparsity": masks.sparsity(),
            "num_processes": ctx.num_processes, "global_step": trainer.state.global_step}
    if callbacks:
        info["trajectory"] = callbacks[0].trajectory
        info["eval_seconds"] = sum(callbacks[0].eval_seconds)
    if ctx.is_main:
        if callbacks:
            from .trajectories import write_trajectory

            write_trajectory(out, callbacks[0].trajectory)
        model.config.use_cache = True
        model.config.save_pretrained(out)
        from ..modeling import strip_remote_code

        strip_remote_code(str(out))  # never points at remote code (`pruning.save_sparse_model` does the same)
        meta = {}
        if os.path.isfile(os.path.join(src, SPARSITY_FILE)):
            meta = json.loads(Path(src, SPARSITY_FILE).read_text())
        meta.update(measured_sparsity_weights=info["measured_sparsity"],
                    per_matrix_sparsity=masks.per_matrix_sparsity(),
                    unlearning={k: s[k] for k in ("objective", "sau", "learning_rate", "seed")})
        if trainer.moving_mask is not None:  # the saved masks are the final, moved ones (same counts per unit)
            meta["mask_moved"] = trainer.moving_mask.summary(trainer.sparsity_masks)
        if sparse:
            _write_json(out / SPARSITY_FILE, meta)
    del trainer, model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return info


def run_evaluate(ctx: Context, task: Task, out: Path) -> dict:
    """The benchmark's evaluation of one model; the metrics against the retain model (forget quality, privleak)
    also against its pruned twin."""
    from ..evaluation.results import attach_forget_quality, build_results, reference_metrics, save_results
    from ..pruning import measured_sparsity

    s = task.settings
    if s.get("attack"):  # an attacked copy (quantized, relearned): pipeline/robustness.py
        from .attacks import run_attack_evaluate

        return run_attack_evaluate(ctx, task, out)
    src = ctx.model_source(s["source"])
    tok = ctx.tokenizer()
    device_map = ctx.recipe.evaluate.device_map  # a placement, not in the hash (pipeline.robustness)
    model = load_model(ctx, src, None if device_map else ctx.device, device_map=device_map)
    sparsity = measured_sparsity(model)
    retain = ctx.task_dir(task.dep("retain_eval")) if "retain_eval" in task.deps else None
    evaluation = ctx.bench.evaluate(model, tok, ctx.benchmark, **ctx.bench.data_options(ctx.recipe.data),
                                    retain_results=retain, show_progress=ctx.is_main,
                                    **EvaluateSettings.of(s).evaluate_kwargs())
    if s.get("is_retain"):
        evaluation = attach_forget_quality(evaluation, evaluation)  # the reference against itself: FQ 1, privleak 0
    results = build_results(evaluation, {"name": task.meta.get("name"), "path": src,
                                         "measured_sparsity": sparsity}, s)
    if "pruned_retain_eval" in task.deps:
        for key, value in reference_metrics(results, ctx.task_dir(task.dep("pruned_retain_eval"))).items():
            results["summary"][f"{key}_pruned_retain"] = value
    save_results(results, out)
    return {"measured_sparsity": sparsity, "summary": results["summary"]}


def run_push(ctx: Context, task: Task, out: Path) -> dict:
    """Upload the chosen unlearned sparse model with its metadata and model card."""
    from ..hub import PushError, prepare_push_folder, upload

    s = task.settings
    folder = prepare_push_folder(ctx.task_dir(task.dep("model")), out / "upload",
                                 results=ctx.task_dir(task.dep("eval")), recipe=ctx.recipe, run_name=s["run"],
                                 repo_id=s["hub_model_id"])
    try:
        url = upload(folder, s["hub_model_id"], private=s["private"],
                     commit_message=s["commit_message"] or f"sau-trainer: {s['run']}")
    except PushError as err:
        cause = err.__cause__
        raise PushError(
            f"push to {s['hub_model_id']!r} failed ({type(cause).__name__}: {cause}). Every other output in "
            f"{ctx.output_dir} is kept. Log in (`hf auth login` or HF_TOKEN), check the network and that "
            "HF_HUB_OFFLINE is unset, then re-run the same command (only the push runs again) or "
            f"`sau-trainer push {ctx.output_dir} --repo-id {s['hub_model_id']} --run {s['run']}`."
        ) from cause
    return {"url": url, "repo_id": s["hub_model_id"], "run": s["run"]}


def run_attack(ctx: Context, task: Task, out: Path) -> dict:
    """An attacked copy of an unlearned model (evaluate.robustness): see pipeline/robustness.py."""
    from .attacks import run_attack as attack

    return attack(ctx, task, out)


def run_report(ctx: Context, task: Task, out: Path) -> dict:
    """report.json, report.md and tradeoff.png at the top of the output directory: the finished evaluations,
    the names of those not finished yet (a run with ``--tasks``, or other runs still at work) and those whose
    model diverged (`diverged.py`)."""
    from . import diverged
    from .report import write_report
    from .stage_records import is_done, stage_status

    evals = [t for t in ctx.tasks.values() if t.kind == "evaluate"]
    done = [t for t in evals if is_done(ctx.task_dir(t.name), t)]
    failed = diverged.report_rows([t for t in evals if t not in done], ctx.tasks,
                                  lambda t: stage_status(ctx.task_dir(t.name), t))
    names = {r["name"] for r in failed}
    pending = [t.name for t in evals if t not in done and t.meta.get("name", t.name) not in names]
    return write_report(ctx, done, pending=pending, diverged=failed)
