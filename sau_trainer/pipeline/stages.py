"""The stages of a recipe run (one registry) and the planner that turns a recipe into a list of tasks.

A task is one unit of cached work: a stage kind, a name (its directory under ``stages/``), the
settings its output depends on, and the tasks it reads from. The runner hashes settings and
dependencies, skips tasks whose output already carries that hash, and runs the rest.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .grid import Start, grid_runs, start_axes
from .schema import (
    Recipe,
    RecipeError,
    TrainerSettings,
    TrainSection,
    grid_name,
    objective_grids,
)

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- tasks
@dataclass
class Task:
    """One cached unit of work. `meta` describes the task for the report and is not hashed."""

    kind: str
    name: str
    settings: dict
    deps: dict[str, str] = field(default_factory=dict)  # role -> task name
    meta: dict = field(default_factory=dict)
    hash: str = ""

    def dep(self, role: str) -> str:
        return self.deps[role]


@dataclass
class Context:
    """What every stage can read: the recipe, the output directory, the data, the process state."""

    recipe: Recipe
    output_dir: Path
    tasks: dict[str, Task]
    state: Any = None  # accelerate.PartialState
    _benchmark: dict | None = None
    _tokenizer: Any = None

    def task_dir(self, name: str) -> Path:
        return self.output_dir / "stages" / name

    @property
    def is_main(self) -> bool:
        return self.state is None or self.state.is_main_process

    @property
    def num_processes(self) -> int:
        return 1 if self.state is None else self.state.num_processes

    @property
    def device(self):
        import torch

        return torch.device("cpu") if self.state is None else self.state.device

    @property
    def benchmark(self) -> dict[str, list[dict]]:
        if self._benchmark is None:
            self._benchmark = load_data(self.recipe)
        return self._benchmark

    @property
    def bench(self):
        """The recipe's entry of the benchmark registry (`sau_trainer.data.benchmarks.BENCHMARKS`)."""
        from ..data.benchmarks import get_benchmark

        return get_benchmark(self.recipe.data.benchmark)

    def rows(self, splits: list[str]) -> list[dict]:
        """Training rows of `splits` (question/answer or text rows, as the benchmark defines them)."""
        return self.bench.training_rows(self.benchmark, splits)

    def split(self, name: str) -> list[dict]:
        if name not in self.benchmark:
            raise KeyError(f"The benchmark has no split {name!r}; it has {sorted(self.benchmark)}.")
        return self.benchmark[name]

    def model_source(self, ref: str) -> str:
        """A model reference (``task:NAME`` or a Hub id / path) as something `from_pretrained` reads."""
        if ref.startswith("task:"):
            return str(self.task_dir(ref[5:]))
        return ref

    def tokenizer(self):
        """The tokenizer shared by every model of the run (trained on the data, or the model's own)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            m = self.recipe.model
            source = str(self.task_dir("tokenizer")) if m.shape is not None else (m.tokenizer or m.name_or_path)
            tok = AutoTokenizer.from_pretrained(source)
            if tok.pad_token is None and tok.eos_token is not None:
                tok.pad_token = tok.eos_token
            self._tokenizer = tok
        return self._tokenizer


def split_uses(recipe: Recipe) -> dict[str, str] | None:
    """The TOFU- or MUSE-style splits the recipe's stages read, each with what reads it (None: load every split, as
    for a generated benchmark, a TOFU tokenizer trained on every string, or a WMDP-style benchmark)."""
    from ..data.benchmarks import get_benchmark
    from ..pruning.registry import PRUNERS

    d, m = recipe.data, recipe.model
    bench = get_benchmark(d.benchmark)
    if bench.protocol not in ("tofu", "muse") or (bench.generated and d.data_dir is None) or (
            m.shape is not None and bench.protocol == "tofu"):
        return None
    uses: dict[str, str] = {}
    if m.shape is not None:  # MUSE-style: the tokenizer learns every raw text (tokenizer_texts)
        from ..data.muse import TRAINING_SPLITS

        for split in TRAINING_SPLITS:
            uses.setdefault(split, "the tokenizer (model.shape: trained on every raw text)")
    for role, sec in (("target", recipe.train_target), ("retain", recipe.train_retain)):
        if sec.enabled:
            for split in sec.splits or default_splits(recipe, role):
                uses.setdefault(split, f"training the {role} model (train_{role}.splits)")
    p = recipe.prune
    if p.enabled and p.calibration_path is None and any(PRUNERS[x].statistic is not None for x in p.method):
        for split in bench.calibration_splits(p.calibration_split):
            uses.setdefault(split, "pruning calibration (prune.calibration_split)")
    if recipe.unlearn.enabled:
        forget, retain = bench.unlearning_splits(d.forget_split, recipe.unlearn.retain_split, d.subset)
        uses.setdefault(forget, "unlearning (the forget set)")
        uses.setdefault(retain, "unlearning (the retain set, unlearn.retain_split)")
    *evaluated, holdout = bench.evaluation_splits(d.forget_split, d.subset)
    for split in evaluated:
        uses.setdefault(split, "the evaluation")
    uses.setdefault(holdout, "membership inference in the evaluation (the non-members)")
    return uses


def load_data(recipe: Recipe) -> dict[str, list[dict]]:
    """The splits of the recipe's benchmark that its stages read (see `split_uses`; every split when unknown)."""
    from ..data.benchmarks import load_benchmark

    d = recipe.data
    uses = split_uses(recipe)
    offline_hint = "" if d.data_dir is not None else " Offline? Point data.data_dir at a local copy."
    kwargs = dict(data_dir=d.data_dir, preset=d.preset, seed=d.seed, subset=d.subset)
    if uses is None:
        try:
            return load_benchmark(d.benchmark, **kwargs)
        except Exception as err:  # noqa: BLE001 - say which setting to change, before any work
            hint = "" if "data_dir" in str(err) else offline_hint
            raise RecipeError(f"data: could not load the {d.benchmark} benchmark ({type(err).__name__}: {err})"
                              f"{hint}") from err
    data, missing = {}, []
    for split, use in uses.items():
        try:
            data.update(load_benchmark(d.benchmark, splits=[split], **kwargs))
        except Exception as err:  # noqa: BLE001
            if isinstance(err, FileNotFoundError):  # every missing split is named at once
                missing.append((split, use, err))
                continue
            hint = "" if "data_dir" in str(err) else offline_hint
            raise RecipeError(f"data: could not load split {split!r} of the {d.benchmark} benchmark, read by {use} "
                              f"({type(err).__name__}: {err}){hint}") from err
    if missing:
        hint = "" if all("data_dir" in str(e) for _, _, e in missing) else offline_hint
        parts = [f"split {split!r}, read by {use} ({type(err).__name__}: {err})" for split, use, err in missing]
        head = "could not load " + ("" if len(missing) == 1 else f"{len(missing)} splits: ")
        raise RecipeError(f"data: {head}" + "; ".join(parts) + f" (the {d.benchmark} benchmark){hint}")
    return data


def data_fingerprint(recipe: Recipe, load: Callable[[], dict] | None = None) -> dict:
    """What identifies the data in a hash: the synthetic generator's inputs, or the rows themselves."""
    from ..data.benchmarks import get_benchmark
    from ..evaluation.results import data_fingerprint as rows_digest

    d = recipe.data
    bench = get_benchmark(d.benchmark)
    if bench.generated and d.data_dir is None:
        return {"benchmark": d.benchmark, "preset": d.preset, "seed": d.seed,
                "generator": _file_digest(bench.generator_file())}
    data = load() if load is not None else load_data(recipe)
    out = {"benchmark": d.benchmark, "data_dir": d.data_dir, "rows": rows_digest(data)}
    if d.subset is not None:
        out["subset"] = d.subset
    return out


def _file_digest(path: str) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _model_fingerprint(ref: str) -> dict:
    """A Hub id as it is; a local directory with its files' names, sizes and mtimes."""
    out: dict[str, Any] = {"ref": ref}
    if os.path.isdir(ref):
        from ..evaluation.results import model_fingerprint

        out["files"] = model_fingerprint(ref)
    return out


# ----------------------------------------------------------------------------------------- helpers
def _warmup_kwargs(steps: float) -> dict:
    """Warm-up keywords: a float below 1 is a fraction of all steps. transformers 5.x takes it as
    `warmup_steps` (and has no `warmup_ratio`); 4.x needs an int `warmup_steps` and takes the fraction as
    `warmup_ratio`. Both round the fraction up to whole steps."""
    import transformers

    if steps >= 1 or steps == 0:
        return {"warmup_steps": int(steps)}
    if int(transformers.__version__.split(".")[0]) < 5:
        return {"warmup_steps": 0, "warmup_ratio": steps}
    return {"warmup_steps": steps}


def _pin_memory() -> bool:
    from ..finetuning import pin_memory_default

    return pin_memory_default()


def _checkpointing_kwargs(on: bool) -> dict:
    """The checkpointing flag under its name in the installed transformers: 5.x renamed TrainingArguments'
    ``gradient_checkpointing`` to ``activation_checkpointing`` and warns (FutureWarning) whenever the old one is
    given, False included; 4.57 knows only the old one."""
    from dataclasses import fields

    from transformers import TrainingArguments

    new = "activation_checkpointing" in {f.name for f in fields(TrainingArguments)}
    return {"activation_checkpointing" if new else "gradient_checkpointing": on}


def _trainer_kwargs(sec: TrainerSettings, ctx: Context) -> dict:
    """TrainingArguments keywords from a section (gradient accumulation from the effective batch size)."""
    import torch

    num_processes = ctx.num_processes
    ga = sec.gradient_accumulation_steps
    if sec.effective_batch_size is not None:
        per_step = sec.per_device_train_batch_size * num_processes
        if sec.effective_batch_size % per_step:
            raise ValueError(f"effective_batch_size={sec.effective_batch_size} is not a multiple of "
                             f"per_device_train_batch_size x processes = {per_step}.")
        ga = sec.effective_batch_size // per_step
    kwargs = dict(
        num_train_epochs=sec.num_train_epochs, per_device_train_batch_size=sec.per_device_train_batch_size,
        gradient_accumulation_steps=ga, lr_scheduler_type=sec.lr_scheduler_type,
        **_warmup_kwargs(sec.warmup_steps),
        weight_decay=sec.weight_decay, optim=sec.optim, bf16=sec.bf16,
        **_checkpointing_kwargs(sec.gradient_checkpointing), logging_steps=sec.logging_steps,
        save_strategy="no", report_to=[], ddp_timeout=ctx.recipe.distributed_timeout_s,
        dataloader_pin_memory=_pin_memory(),  # no pinned memory (and no warning) without an accelerator
    )
    if num_processes > 1 and not torch.cuda.is_available():
        kwargs["use_cpu"] = True  # else TrainingArguments rebuilds a non-distributed state on a CPU-only group
    kwargs.update(sec.args)
    return kwargs


def _dtype(name: str):
    import torch

    return "auto" if name == "auto" else getattr(torch, name)


def load_model(ctx: Context, ref: str, device=None, device_map: str | None = None):
    """A causal LM from a task directory or a Hub id / path, in the recipe's dtype: on `device`, or placed by
    accelerate with `device_map` (e.g. ``"auto"``: spread over the visible GPUs, then the CPU; `device` unused)."""
    from ..modeling import load_causal_lm  # a pickle checkpoint torch refuses: one clear line

    m = ctx.recipe.model
    kwargs: dict[str, Any] = {"dtype": _dtype(m.dtype)}
    if m.attn_implementation:
        kwargs["attn_implementation"] = m.attn_implementation
    if device_map is not None:
        return load_causal_lm(ctx.model_source(ref), device_map=device_map, **kwargs)
    model = load_causal_lm(ctx.model_source(ref), **kwargs)
    if device is not None:
        model.to(device)
    return model


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def _texts(ctx: Context, split: str) -> list[str]:
    """Calibration texts of a split, as the benchmark defines them (TOFU: prompt + answer)."""
    return ctx.bench.calibration_texts(ctx.benchmark, split, ctx.tokenizer())


# ----------------------------------------------------------------------------------------- stage functions
# Each takes (ctx, task, out_dir) and writes its output into out_dir (a temporary directory that the runner
# renames into place once the function returns). It returns a JSON-able dict saved in stage.json as `info`.

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
    from ..pruning import load_texts, prune_model, save_sparse_model

    s = task.settings
    tok = ctx.tokenizer()
    offload = bool(s.get("offload"))
    model = load_model(ctx, s["source"], None if offload else ctx.device)
    calibration = None
    if s["method"] != "magnitude":
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

    u = s["unlearn"]
    sec = TrainerSettings(**{k: u[k] for k in TrainerSettings.__dataclass_fields__})
    kwargs = _trainer_kwargs(sec, ctx)
    kwargs.setdefault("disable_tqdm", not ctx.is_main)
    kwargs.setdefault("max_length", sec.max_length)
    return SAUConfig(output_dir=str(out), objective=s["objective"], sau=s["sau"], learning_rate=s["learning_rate"],
                     seed=s["seed"], data_seed=s["seed"], sau_topk=u["sau_topk"], sau_alpha=u["sau_alpha"],
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
    from ..evaluation.tofu import model_max_length

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
        from .robustness import run_attack_evaluate

        return run_attack_evaluate(ctx, task, out)
    src = ctx.model_source(s["source"])
    tok = ctx.tokenizer()
    device_map = ctx.recipe.evaluate.device_map  # a placement, not in the hash (pipeline.robustness)
    model = load_model(ctx, src, None if device_map else ctx.device, device_map=device_map)
    sparsity = measured_sparsity(model)
    retain = ctx.task_dir(task.dep("retain_eval")) if "retain_eval" in task.deps else None
    e = s["evaluate"]
    evaluation = ctx.bench.evaluate(model, tok, ctx.benchmark, forget_split=s["forget_split"],
                                    batch_size=e["batch_size"], max_new_tokens=e["max_new_tokens"],
                                    max_length=e["max_length"], retain_results=retain, show_progress=ctx.is_main,
                                    compat=e.get("compat"), question_key=e.get("question_key", "question"),
                                    **({"max_prompt_tokens": e["max_prompt_tokens"]} if e.get("max_prompt_tokens")
                                       else {}))
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
    from .robustness import run_attack as attack

    return attack(ctx, task, out)


def run_report(ctx: Context, task: Task, out: Path) -> dict:
    """report.json, report.md and tradeoff.png at the top of the output directory: the finished evaluations,
    the names of those not finished yet (a run with ``--tasks``, or other runs still at work) and those whose
    model diverged (`diverged.py`)."""
    from . import diverged
    from .report import write_report
    from .runner import is_done, stage_status

    evals = [t for t in ctx.tasks.values() if t.kind == "evaluate"]
    done = [t for t in evals if is_done(ctx.task_dir(t.name), t)]
    failed = diverged.report_rows([t for t in evals if t not in done], ctx.tasks,
                                  lambda t: stage_status(ctx.task_dir(t.name), t))
    names = {r["name"] for r in failed}
    pending = [t.name for t in evals if t not in done and t.meta.get("name", t.name) not in names]
    return write_report(ctx, done, pending=pending, diverged=failed)


@dataclass(frozen=True)
class Stage:
    """A stage kind: its function, whether every process runs it (data parallel), whether it is cached."""

    fn: Callable[[Context, Task, Path], dict]
    distributed: bool
    cached: bool
    help: str


STAGES: dict[str, Stage] = {
    "tokenizer": Stage(run_tokenizer, False, True, "train a tokenizer on the benchmark (models built from scratch)"),
    "train": Stage(run_train, True, True, "finetune the target / retain model"),
    "prune": Stage(run_prune, False, True, "prune a model"),
    "unlearn": Stage(run_unlearn, True, True, "unlearn the forget set (one grid point)"),
    "attack": Stage(run_attack, True, True, "an attacked copy of an unlearned model (quantized / relearned)"),
    "evaluate": Stage(run_evaluate, False, True, "TOFU evaluation -> results.json"),
    "report": Stage(run_report, False, False, "report.json, report.md, tradeoff.png (always rewritten)"),
    "push": Stage(run_push, False, True, "upload to the Hugging Face Hub"),
}


# ----------------------------------------------------------------------------------------- planning
def prune_id(method: str, sparsity: float, structure: str) -> str:
    """``magnitude-50`` (unstructured 50%) or ``wanda-2of4`` (2:4)."""
    if structure != "unstructured":
        return f"{method}-{structure.replace(':', 'of')}"
    return f"{method}-{round(sparsity * 100):g}"


def _target_sparsity(sparsity: float, structure: str) -> float:
    from ..pruning.nm import parse_structure, resolve_sparsity

    return float(resolve_sparsity(sparsity, parse_structure(structure)))


def run_name(start: str, objective: str, sau: bool, lr: float, seed: int, grid: dict | None = None) -> str:
    """``<start>-<objective>-<plain|sau>[-<field>=<value>...]-lr<lr>-s<seed>`` (`grid`: the extra axes' values)."""
    return f"{start}-{objective}-{'sau' if sau else 'plain'}{grid_name(grid or {})}-lr{lr:g}-s{seed}"


def _train_settings(sec: TrainSection, splits: list[str]) -> dict:
    return {"train": asdict(sec), "splits": splits}


def default_splits(recipe: Recipe, role: str) -> list[str]:
    """The benchmark's training splits of the ``target`` or ``retain`` model."""
    from ..data.benchmarks import get_benchmark

    return get_benchmark(recipe.data.benchmark).train_splits(role, recipe.data.forget_split, recipe.data.subset)


def plan(recipe: Recipe, load: Callable[[], dict] | None = None) -> list[Task]:
    """The tasks of a recipe in an order that respects their dependencies (`load` gives the data if needed)."""
    from ..plugins import plugin_fingerprints

    tasks: list[Task] = []
    fp = data_fingerprint(recipe, load)
    m, d = recipe.model, recipe.data

    def add(task: Task) -> Task:
        if recipe.plugins and task.kind in ("prune", "unlearn", "attack"):  # only then: existing hashes unchanged
            task.settings["plugins"] = plugin_fingerprints(recipe.plugins)  # a changed plugin recomputes
        tasks.append(task)
        return task

    model_spec = asdict(m)
    if m.shape is not None:
        add(Task("tokenizer", "tokenizer", {"data": fp, "vocab_size": m.vocab_size}))
        model_spec["init_code"] = _file_digest(__import__("sau_trainer.modeling", fromlist=["x"]).__file__)
    else:
        model_spec["source"] = _model_fingerprint(m.name_or_path)
    tok_deps = {"tokenizer": "tokenizer"} if m.shape is not None else {}

    # target and retain models: a task name ("task:models/finetuned") or an external reference
    refs: dict[str, str | None] = {}
    for role, sec_name, row_name in (("target", "train_target", "finetuned"), ("retain", "train_retain", "retain")):
        sec: TrainSection = getattr(recipe, sec_name)
        if sec.enabled:
            splits = sec.splits or default_splits(recipe, role)
            add(Task("train", f"models/{row_name}", {"model": model_spec, "data": fp,
                                                    **_train_settings(sec, splits)}, dict(tok_deps)))
            refs[role] = f"task:models/{row_name}"
        else:
            refs[role] = m.name_or_path if role == "target" else sec.model

    def deps_of(ref: str | None, role: str = "model") -> dict[str, str]:
        return {role: ref[5:]} if ref and ref.startswith("task:") else {}

    loading = {k: model_spec.get(k) for k in ("dtype", "attn_implementation", "tokenizer")}

    def src_settings(ref: str) -> dict:
        """The source of a task (a task reference, hashed through its dependency, or an external model) and
        how it is loaded (dtype, attention, tokenizer), which every stage that loads it depends on."""
        src = {"source": ref} if ref.startswith("task:") else {"source": ref, "fingerprint": _model_fingerprint(ref)}
        return {**src, "loading": loading}

    p, u, e = recipe.prune, recipe.unlearn, recipe.evaluate
    prunings = []
    if p.enabled:
        structure = p.structure
        for method in p.method:
            for sp in (p.sparsity if structure == "unstructured" else [None]):
                pid = prune_id(method, sp or 0.0, structure)
                same = [x for x in prunings if x[0] == pid]
                if same and same[0][2] != sp:
                    raise RecipeError(f"prune.sparsity: {same[0][2]} and {sp} share the output name {pid!r}; "
                                      "use sparsities that differ by at least one percent")
                if not same:
                    prunings.append((pid, method, sp, _target_sparsity(sp, structure)))
    labels = {pid: method if p.structure == "unstructured" else f"{method} {p.structure}"
              for pid, method, _, _ in prunings}

    def prune_settings(method: str, sp: float | None, ref: str) -> dict:
        return {**src_settings(ref), "method": method,
                "sparsity": sp, "structure": p.structure, "calibration_split": p.calibration_split,
                "calibration_path": p.calibration_path, "num_samples": p.num_samples, "seq_len": p.seq_len,
                "batch_size": p.batch_size, "dtype": m.dtype, "data": fp,
                **({"offload": True} if p.offload else {})}  # only when set: existing caches stay valid

    for pid, method, sp, _ in prunings:
        add(Task("prune", f"models/finetuned+{pid}", prune_settings(method, sp, refs["target"]),
                 {**deps_of(refs["target"]), **tok_deps}))
        if p.prune_retain and refs["retain"]:
            add(Task("prune", f"models/retain+{pid}", prune_settings(method, sp, refs["retain"]),
                     {**deps_of(refs["retain"]), **tok_deps}))
    # unlearning grid
    from ..data.benchmarks import get_benchmark
    from ..objectives import definitions as objective_definitions

    bench = get_benchmark(d.benchmark)
    forget_split = d.forget_split
    unlearn_forget, retain_split = bench.unlearning_splits(forget_split, u.retain_split, d.subset)
    from .trajectories import retain_eval_first, trajectory_settings

    traj = trajectory_settings(recipe)  # unlearn.eval_steps; None (off): no key, existing hashes unchanged
    runs = []  # (row name, task name, start, pid, target sparsity, objective, sau, lr, seed)
    point_settings: dict[str, dict] = {}  # run name -> its unlearn settings (the extra axes set to its values)
    if u.enabled:
        starts = [Start("dense", None, 0.0, refs["target"], start_axes())] if "dense" in u.model else []
        if "sparse" in u.model:
            starts += [Start(pid, pid, ts, f"task:models/finetuned+{pid}", start_axes(method, sp, p.structure))
                       for pid, method, sp, ts in prunings]
        # every point of model x objective x sau x SAUConfig axes x learning rate x seed, less unlearn.exclude's
        for r in grid_runs(u, starts, objective_grids(u), u.exclude):
            obj, sau, lr, seed, grid, point, ref, pid = (r.objective, r.sau, r.learning_rate, r.seed, r.grid,
                                                         r.settings, r.start.ref, r.start.pid)
            name = run_name(r.start.name, obj, sau, lr, seed, grid)
            settings = {**src_settings(ref), "objective": obj, "sau": sau, "learning_rate": lr, "seed": seed,
                        "unlearn": point, "forget_split": unlearn_forget, "retain_split": retain_split,
                        "dtype": m.dtype, "data": fp}
            if defs := objective_definitions(obj, point.get("args") or {}):
                settings["definitions"] = defs  # changed definitions: a new hash, recomputed
            if traj:
                settings["trajectory"] = traj
            add(Task("unlearn", f"models/{name}", settings,
                     {**deps_of(ref, "source"), **tok_deps,
                      **({"retain_eval": "eval/retain"} if traj and refs["retain"] else {})}))
            point_settings[name] = point
            runs.append(dict(name=name, model="sparse" if pid else "dense", pruning=labels.get(pid), prune_id=pid,
                             target_sparsity=r.start.target_sparsity, objective=obj, sau=sau, learning_rate=lr,
                             seed=seed, **({"grid": grid} if grid else {})))
        # robustness attacks (evaluate.robustness) and the unlearn-then-prune check: pipeline/robustness.py
        from .robustness import plan_attacks

        runs += plan_attacks(
            recipe, runs, prunings, add=add, planned={t.name: t for t in tasks}, src_settings=src_settings,
            tok_deps=tok_deps, unlearn_forget=unlearn_forget, fp=fp,
            prune_settings_for=lambda method, sp, structure, ref: {**prune_settings(method, sp, ref),
                                                                   "structure": structure},
            unlearn_settings_for=lambda run: point_settings[run["name"]])

    # evaluation: the retain references first (forget quality is measured against them)
    from ..evaluation.compat import DEFINITIONS_VERSION
    from .robustness import evaluation_settings

    e_settings = {"evaluate": evaluation_settings(e), "forget_split": forget_split, "data": fp, "loading": loading,
                  "protocol": bench.protocol, "membership_inference": 1, "definitions": DEFINITIONS_VERSION}
    refs_rows = []
    tseed = recipe.train_target.seed
    if refs["retain"]:
        refs_rows.append(dict(name="retain", model="retain", pruning=None, target_sparsity=0.0, ref=refs["retain"],
                              seed=recipe.train_retain.seed))
        for pid, _, _, ts in prunings:
            if p.prune_retain:
                refs_rows.append(dict(name=f"retain+{pid}", model="retain", pruning=labels[pid], prune_id=pid,
                                      target_sparsity=ts,
                                      ref=f"task:models/retain+{pid}", seed=recipe.train_retain.seed))
    refs_rows.append(dict(name="finetuned", model="finetuned", pruning=None, target_sparsity=0.0,
                          ref=refs["target"], seed=tseed))
    for pid, _, _, ts in prunings:
        refs_rows.append(dict(name=f"finetuned+{pid}", model="finetuned", pruning=labels[pid], prune_id=pid,
                              target_sparsity=ts,
                              ref=f"task:models/finetuned+{pid}", seed=tseed))
    rows = [dict(r, reference=True, objective=None, sau=False, learning_rate=None) for r in refs_rows]
    rows += [dict(r, reference=False, ref=f"task:models/{r['name']}") for r in runs]
    has_retain_eval = bool(refs["retain"])
    for row in rows:
        deps = {**deps_of(row["ref"], "model"), **tok_deps}
        settings = {**src_settings(row["ref"]), **e_settings}
        if row["name"] == "retain":
            settings["is_retain"] = True
        elif has_retain_eval:
            deps["retain_eval"] = "eval/retain"
        pid = row.get("prune_id")
        if pid and p.prune_retain and has_retain_eval and row["name"] != f"retain+{pid}":
            deps["pruned_retain_eval"] = f"eval/retain+{pid}"
        meta = {k: row.get(k) for k in ("name", "model", "pruning", "target_sparsity", "objective", "sau",
                                        "learning_rate", "seed", "reference")}
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
        add(Task("evaluate", f"eval/{row['name']}", settings, deps, meta))

    add(Task("report", "report", {"report": {k: v for k, v in asdict(recipe.report).items() if k != "keep_models"}},
             {t.name: t.name for t in tasks if t.kind == "evaluate"}))
    h = recipe.push
    if h.push_to_hub:
        sparse_runs = [r for r in runs if r["model"] == "sparse"]
        chosen = h.run or next((r["name"] for r in sparse_runs if r["sau"]), sparse_runs[0]["name"])
        if chosen not in [r["name"] for r in sparse_runs]:
            from .schema import _closest

            raise RecipeError(f"push.run: {chosen!r} is not a sparse run of the grid; "
                              f"{_closest(chosen, [r['name'] for r in sparse_runs])}")
        add(Task("push", "push", {"run": chosen, "hub_model_id": h.hub_model_id, "private": h.private,
                                  "commit_message": h.commit_message},
                 {"model": f"models/{chosen}", "eval": f"eval/{chosen}", "report": "report"}))
    if traj:
        retain_eval_first(tasks)
    _check_order(tasks)
    return tasks


def _check_order(tasks: list[Task]) -> None:
    seen: set[str] = set()
    for t in tasks:
        if t.name in seen:
            raise RuntimeError(f"two tasks named {t.name!r}")  # pragma: no cover - a planner bug
        missing = [d for d in t.deps.values() if d not in seen]
        if missing:
            raise RuntimeError(f"task {t.name} depends on {missing}, planned later")  # pragma: no cover
        seen.add(t.name)


def copy_tree(src: Path, dst: Path) -> None:
    """Copy a directory with hard links where possible (a model is not duplicated on disk)."""
    def link_or_copy(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)
    shutil.copytree(src, dst, copy_function=link_or_copy, dirs_exist_ok=True)
