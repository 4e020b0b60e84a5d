"""The recipe: dataclasses with `help` metadata, YAML loading, `key.path=value` overrides, validation.

Everything is checked before any work starts: an unknown key is named with the closest valid
one, a wrong type or value is named with what was expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .frontier import DEFAULT_BAND
from .recipe_io import RecipeError, check_size, yaml_load  # noqa: F401 - RecipeError and yaml_load: public here

RECIPE_VERSION = 1




def opt(default: Any, help: str, choices: tuple | None = None, **extra: Any):
    """A dataclass field with `help` (and optional `choices`) metadata; lists/dicts are copied per instance."""
    meta = {"help": help, **({"choices": choices} if choices else {}), **extra}
    if isinstance(default, list | dict):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


# ----------------------------------------------------------------------------------------- sections
@dataclass
class ModelSection:
    """The model: a pretrained causal LM (Hub id or local directory) or a small Llama built from a config."""

    name_or_path: str | None = opt(None, "Hub id or local directory of a pretrained causal LM.")
    shape: str | dict | None = opt(
        None, "Build a Llama from scratch: a name in sau_trainer.modeling.MODEL_SHAPES (tiny, small, ...) or a "
        "dict of LlamaConfig fields. Exactly one of name_or_path and shape.")
    tokenizer: str | None = opt(None, "Tokenizer (Hub id or directory); default: name_or_path. With `shape`, a "
                                "byte-level BPE is trained on every string of the benchmark instead.")
    vocab_size: int = opt(512, "Vocabulary size of the tokenizer trained from scratch (with `shape`).")
    dtype: str = opt("float32", "dtype the models are loaded in for pruning, unlearning and evaluation.",
                     choices=("float32", "bfloat16", "float16", "auto"))
    attn_implementation: str | None = opt(None, "attn_implementation passed to from_pretrained (None: default).")
    init_seed: int = opt(0, "Seed of the random initialisation of a model built from `shape`.")


@dataclass
class DataSection:
    """The benchmark: a key of the registry `sau_trainer.data.benchmarks.BENCHMARKS`."""

    benchmark: str = opt("synthetic", "A key of sau_trainer.data.benchmarks.BENCHMARKS: synthetic (built-in, "
                         "TOFU-style), synthetic-muse (built-in, MUSE-style), synthetic-wmdp (built-in, "
                         "WMDP-style), tofu, muse, wmdp.")
    subset: str | None = opt(None, "Subset of a benchmark that has them (muse: news, the default, or "
                              "books; wmdp: cyber, the default, bio or chem).")
    preset: str = opt("tiny", "Preset of a built-in benchmark (synthetic: tiny, demo, tofu, study, study-large; synthetic-muse, "
                      "synthetic-wmdp: tiny).")
    seed: int = opt(0, "Seed of a built-in benchmark.")
    data_dir: str | None = opt(None, "Local directory with the splits as json/jsonl/parquet (tofu: else the Hub).")
    forget_split: str = opt("forget10", "The forget split (TOFU-style benchmarks; MUSE-style ones forget "
                            "raw/forget).", choices=("forget01", "forget05", "forget10"))


@dataclass
class TrainerSettings:
    """`TrainingArguments` shared by training and unlearning."""

    num_train_epochs: float = opt(5.0, "Epochs.")
    per_device_train_batch_size: int = opt(8, "Batch size per device (per process).")
    gradient_accumulation_steps: int = opt(1, "Micro-batches per optimizer step (ignored with effective_batch_size).")
    effective_batch_size: int | None = opt(
        None, "Examples per optimizer step over all processes; sets gradient_accumulation_steps = "
        "effective / (per_device_train_batch_size * processes), which must divide exactly.")
    lr_scheduler_type: str = opt("constant_with_warmup", "LR schedule (a transformers SchedulerType).")
    warmup_steps: float = opt(0.0, "Warm-up steps (a float below 1 is a fraction of all steps).")
    weight_decay: float = opt(0.0, "Decoupled weight decay.")
    optim: str = opt("adamw_torch", "Optimizer (transformers OptimizerNames: adamw_torch, paged_adamw_8bit, ...).")
    bf16: bool = opt(False, "bf16 mixed precision (Trainer bf16=True).")
    gradient_checkpointing: bool = opt(False, "Gradient checkpointing (saves memory on large models).")
    max_length: int = opt(512, "Tokenised rows are truncated to this many tokens.")
    logging_steps: int = opt(10, "Log every this many optimizer steps.")
    args: dict = opt({}, "Further TrainingArguments (or, under `unlearn`, SAUConfig) fields, by name.")


@dataclass
class TrainSection(TrainerSettings):
    """Training the target (or retain) model: plain finetuning on QA rows."""

    enabled: bool = opt(True, "Train this model. False: use `model` as it is (the target: model.name_or_path).")
    model: str | None = opt(None, "A ready-made model (Hub id or directory) used when enabled is false.")
    splits: list[str] | None = opt(
        None, "Splits to train on. Default: target = full, retain = retain{100-NN} (synthetic: plus "
        "real_authors_perturbed and world_facts_perturbed, which the models must learn too).")
    learning_rate: float = opt(1e-5, "Peak learning rate.")
    seed: int = opt(0, "Training seed (data order, dropout).")


@dataclass
class PruneSection:
    """Pruning the target model (and the retain model, as a forget-quality reference)."""

    enabled: bool = opt(True, "Prune. False: only dense runs.")
    method: list[str] = opt(["magnitude", "wanda"], "Pruning methods (a grid axis): keys of "
                            "sau_trainer.pruning.PRUNERS (magnitude, wanda, sparsegpt, or a plugin's).")
    sparsity: list[float] = opt([0.5], "Target sparsities (a grid axis), each in [0, 1); ignored for N:M.")
    structure: str = opt("unstructured", "unstructured or N:M, e.g. '2:4'.")
    calibration_split: str = opt("full", "Benchmark split whose prompt+answer texts calibrate wanda/sparsegpt.")
    calibration_path: str | None = opt(None, "Calibration texts from a file or directory instead (.txt/.jsonl/...).")
    num_samples: int = opt(128, "Calibration samples.")
    seq_len: int = opt(512, "Tokens per calibration sample.")
    batch_size: int = opt(8, "Calibration batch size.")
    prune_retain: bool = opt(True, "Also prune the retain model the same way: sparse runs then report forget "
                             "quality against it as well (forget_quality_pruned_retain).")
    offload: bool = opt(False, "Keep the model in CPU memory and move one decoder layer at a time to the device "
                        "to prune it (as `sau-trainer prune --offload`): a model larger than one device's memory "
                        "(70B) prunes with one layer and the calibration activations on the device. Same masks.")


@dataclass
class UnlearnSection(TrainerSettings):
    """Unlearning: a grid over model x objective x sau x learning_rate x seed, and any SAUConfig field given as a
    list (directly in the section or under args, e.g. ``sau_redistribution_target: [grad, update]``): one more
    axis, named in the run names (``...-sau-sau_redistribution_target=update-lr...``)."""

    enabled: bool = opt(True, "Unlearn. False: only the reference rows.")
    model: list[str] = opt(["dense", "sparse"], "Which models to unlearn (a grid axis): dense (the finetuned "
                           "model) and/or sparse (every pruned model).", choices=("dense", "sparse"))
    objective: list[str] = opt(["graddiff", "npo"], "Objectives (a grid axis): keys of sau_trainer.OBJECTIVES.")
    sau: list[bool] = opt([False, True], "SAU on and/or off (a grid axis); off is the plain masked baseline.")
    learning_rate: list[float] = opt([1e-5], "Learning rates (a grid axis; one method over them is a curve).")
    seed: list[int] = opt([0], "Seeds (a grid axis).")
    sau_topk: float | list[float] = opt(0.3, "k: fraction of surviving weights selected by saliency (a list: a grid "
                                        "axis, like every SAUConfig field given as a list).")
    sau_alpha: float | list[float] = opt(0.1, "alpha: strength of the redistribution weight (a list: a grid axis).")
    retain_split: str | None = opt(None, "Retain rows for the objective's retain term (default retain{100-NN}).")
    then_prune: bool = opt(False, "The paper's motivating check: also prune every dense unlearned model with "
                           "each pruning setting and evaluate it (does the forgotten data come back?). The same as "
                           "the prune-<pruning> entries of evaluate.robustness on the dense runs, also listed as "
                           "report rows of their own.")
    objective_args: dict = opt(
        {}, "Per-objective settings, {objective: {key: value}}, applied to that objective's runs only: this "
        "section's trainer settings (num_train_epochs, warmup_steps, ...), sau_topk, sau_alpha, learning_rate (a "
        "number or list: replaces the learning-rate axis for that objective) or SAUConfig fields (undial_beta, "
        "retain_weight, ...). Objectives missing from unlearn.objective are ignored, so a recipe can carry "
        "settings for every objective, e.g. {undial: {learning_rate: [1.0e-4]}}.")
    eval_steps: int | float | None = opt(
        None, "Evaluate the benchmark during unlearning (UnlearningEvaluationCallback): at step 0, every this many "
        "optimizer steps (an integer >= 1, or a number in (0, 1): that fraction of the run's steps) and at the end; "
        "each run keeps its trajectory and the report's comparisons use it. null: off.")
    eval_max_new_tokens: int | None = opt(
        None, "Generation length of the evaluations during unlearning (default: evaluate.max_new_tokens); the "
        "utility of TOFU and MUSE needs generated answers, so > 0.")
    eval_rows: int | None = opt(
        None, "Rows per split of the evaluations during unlearning, except the forget set's (kept whole, so forget "
        "quality is computed as in the final evaluation); default: every row.")
    eval_membership_inference: bool = opt(
        False, "TOFU protocol: also run the membership-inference attacks (forget vs holdout answers, gradient norms "
        "included) in each evaluation during unlearning. Off by default: they are about two thirds of an "
        "evaluation's time and no comparison reads them; the final evaluation always runs them.")
    exclude: list[dict] | None = opt(
        None, "Partial grid points left out of the grid, as in CI build matrices: [{model: dense, sau: true}] plans no "
        "SAU run on the dense model. Keys: the grid's axes (model, objective, sau, learning_rate, seed, method and "
        "sparsity of sparse runs, every SAUConfig field given as a list); other tasks keep their hashes.")


@dataclass
class EvaluateSection:
    """The benchmark's evaluation of every model (TOFU protocol: evaluate_tofu; MUSE: evaluate_muse)."""

    batch_size: int = opt(16, "Evaluation batch size.")
    max_new_tokens: int = opt(200, "Greedy generation length for ROUGE (the protocol uses 200).")
    max_length: int | None = opt(None, "Cap on prompt+answer tokens (None: the model's limit).")
    compat: str | None = opt(
        None, "Metric definitions: none (the package's), 'open-unlearning' (reproduces its numbers: truth ratio "
        "wrong / (correct + 1e-10), ...) or 'muse' (MUSE protocol: MUSE's own VerbMem and zlib). "
        "sau_trainer.evaluation.compat lists what each changes; results.json and report.md say which was used.")
    question_key: str = opt("question", "TOFU protocol: 'paraphrased_question' asks the forget and retain "
                            "questions in their paraphrased form (open-unlearning's question_key).")
    max_prompt_tokens: int | None = opt(
        None, "MUSE protocol: cut the VerbMem and KnowMem prompts to BOS and their last N-1 tokens, for a model whose "
        "positions the prompts fill (refused otherwise: it would generate nothing and score 0).")
    device_map: str | None = opt(
        None, "Load each evaluated model with from_pretrained(device_map=...) instead of on the main process's "
        "device, e.g. 'auto': accelerate spreads the layers over the visible GPUs, then the CPU (a model larger than "
        "one device, 70B). A placement only: the same results, so it enters no cache hash.")
    robustness: list[str] | None = opt(
        None, "Robustness of forgetting: attacks on every unlearned model, each evaluated like the model itself and "
        "reported beside its run (report.json: runs[].robustness). quant-int8, quant-int4 (round-to-nearest, groups "
        "of 128, torch), bnb-8bit, bnb-nf4 (bitsandbytes; skipped with the reason where it cannot run), "
        "prune-<method>-<percent> or prune-<method>-<N>of<M> (e.g. prune-magnitude-50, prune-wanda-2of4), relearn "
        "(plain finetuning on part of the forget set). Adding one to a finished run computes only the attack (and the "
        "unlearned models it attacks, if report.keep_models removed their weights).")
    relearn_fraction: float = opt(0.1, "relearn: fraction of the forget set finetuned on (seeded; at least one row).")
    relearn_epochs: float = opt(1.0, "relearn: epochs of plain finetuning.")
    relearn_learning_rate: float | None = opt(None, "relearn: learning rate (None: the attacked run's unlearning "
                                              "learning rate).")
    relearn_seed: int = opt(0, "relearn: seed of the row choice and of the finetuning.")
    relearn_keep_sparsity: bool = opt(
        True, "relearn: a sparse model is finetuned with its pruned weights held at zero (the project's "
        "SparsityPreserving Trainer), as sparse models are finetuned; false: plain dense finetuning, which moves "
        "every pruned weight by about the learning rate on its first Adam step.")
    relearn_judge_on_relearned_rows: bool = opt(
        False, "relearn: judge the attack on the whole forget set, relearned rows included. Default: the rows it "
        "finetuned on are left out of the evaluation (and out of the retain model's forget-quality reference).")


@dataclass
class ReportSection:
    """report.json, report.md and tradeoff.png at the top of the output directory."""

    plot: bool = opt(True, "Write tradeoff.png.")
    utility_band: list[float] | None = opt(
        None, "Comparisons over this band of utility, [lo, hi] as fractions of each comparison's starting model's "
        "utility (SAU vs plain: the model both start from; sparse vs dense: the pruned model). Default: "
        f"{list(DEFAULT_BAND)} (pipeline.frontier.DEFAULT_BAND).")
    utility_fraction: float | None = opt(
        None, "Former single floor (a fraction of the starting model's utility): read as a band of width 0, "
        "[f, f], and the report says so. Prefer utility_band.")
    keep_models: str = opt(
        "none", "Weights of the unlearned models kept after the run (its last step): all; sparse (the unlearned "
        "sparse models); none (masks, sparsity.json, results and the model card inputs stay; so do the reference "
        "models, the pushed model and any model a task still has to read; a later run that needs a removed model "
        "recomputes it).", choices=("all", "sparse", "none"))


@dataclass
class PushSection:
    """Uploading one unlearned sparse model with its metadata and a model card."""

    push_to_hub: bool = opt(False, "Upload at the end of the run.")
    hub_model_id: str | None = opt(None, "Target repository, e.g. user/llama-sau-npo.")
    run: str | None = opt(None, "Name of the run to push (default: the first sparse SAU run of the grid).")
    private: bool = opt(True, "Create the repository as private.")
    commit_message: str | None = opt(None, "Commit message (default names the run).")


@dataclass
class Recipe:
    """One experiment from model to report."""

    name: str = opt("experiment", "Name of the experiment (the default output directory is outputs/<name>).")
    description: str = opt("", "Free text, copied into the report and the model card.")
    output_dir: str | None = opt(None, "Output directory (the command line's --output-dir wins).")
    distributed_timeout_s: int = opt(10800, "Under accelerate launch: how long the other processes wait "
                                     "while the main process prunes or evaluates.")
    torch_threads: int | None = opt(None, "torch.set_num_threads for this run (None: torch's default). 1 is "
                                    "fastest for tiny models on a small or busy CPU.")
    plugins: list[str] | None = opt(None, "Python files (.py, relative to the recipe file) or module names "
                                    "imported before the recipe is checked, in every process: their "
                                    "register_objective / register_pruner / register_benchmark entries are then "
                                    "usable in the recipe (docs/guides/plugins.md).")
    model: ModelSection = opt(None, "The model.", section=True)
    data: DataSection = opt(None, "The benchmark.", section=True)
    train_target: TrainSection = opt(None, "Training the target model.", section=True)
    train_retain: TrainSection = opt(None, "Training the retain model (reference for forget quality).",
                                     section=True)
    prune: PruneSection = opt(None, "Pruning.", section=True)
    unlearn: UnlearnSection = opt(None, "Unlearning.", section=True)
    evaluate: EvaluateSection = opt(None, "Evaluation.", section=True)
    report: ReportSection = opt(None, "The report.", section=True)
    push: PushSection = opt(None, "Hub push.", section=True)

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            if f.metadata.get("section") and getattr(self, f.name) is None:
                setattr(self, f.name, hints[f.name]())

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------- YAML
# the loader (1.2-style numbers, bounded alias expansion) lives in recipe_io; yaml_load is re-exported here


# ----------------------------------------------------------------------------------------- validation
def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _closest(key: str, valid: list[str], prefix: str = "", kind: str = "keys") -> str:
    """'did you mean ...?' with the closest valid key (difflib), or the list of valid keys (or values)."""
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if match:
        return f"did you mean {prefix + match[0]!r}?"
    return f"valid {kind}: {', '.join(valid)}"


def _not_one_of(value: Any, valid: list[str]) -> str:
    """'X is not one of a, b, c' with the closest valid value, if one is close (each value named once)."""
    match = difflib.get_close_matches(str(value), valid, n=1, cutoff=0.5)
    return f"{value!r} is not one of {', '.join(valid)}" + (f"; did you mean {match[0]!r}?" if match else "")


def _coerce(value: Any, tp: Any, path: str, errors: list[str], meta: dict | None = None) -> Any:
    """`value` checked (and gently converted: int -> float, '2e-4' -> float) against the annotation `tp`."""
    meta = meta or {}
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        # prefer an exact structural match before conversions (str | dict keeps the dict)
        for option in options:
            if option is not type(None) and _matches(value, option):
                return _coerce(value, option, path, errors, meta)
        for option in options:
            if option is type(None):
                continue
            trial: list[str] = []
            out = _coerce(value, option, path, trial, meta)
            if not trial:
                return out
        errors.append(f"{path}: expected {' or '.join(_type_name(o) for o in options)}, got {value!r}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        items = value if isinstance(value, list | tuple) else [value]  # a scalar is a one-item list
        out = [_coerce(v, item_tp, f"{path}[{i}]" if isinstance(value, list | tuple) else path, errors, meta)
               for i, v in enumerate(items)]
        if not out:
            errors.append(f"{path}: the list is empty")
        return out
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a mapping, got {value!r}")
            return {}
        return dict(value)
    if _is_dataclass_type(tp):
        return _build(tp, value, path, errors)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            errors.append(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            errors.append(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool):
            errors.append(f"{path}: expected a number, got {value!r}")
            return value
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        errors.append(f"{path}: expected a number, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            errors.append(f"{path}: expected a string, got {value!r} (quote it in YAML)")
            return value
        choices = meta.get("choices")
        if choices and value not in choices:
            errors.append(f"{path}: {_not_one_of(value, list(choices))}")
        return value
    return value  # pragma: no cover - no other annotation is used


def _matches(value: Any, tp: Any) -> bool:
    if _is_dataclass_type(tp) or tp is dict or typing.get_origin(tp) is dict:
        return isinstance(value, dict)
    if typing.get_origin(tp) is list:
        return isinstance(value, list)
    if tp is float:
        return isinstance(value, float)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(tp, type) and isinstance(value, tp)


def _build(cls: type, data: Any, path: str, errors: list[str]) -> Any:
    """An instance of dataclass `cls` from a mapping; unknown keys and bad values go to `errors`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        errors.append(f"{path or 'recipe'}: expected a mapping of keys, got {data!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in fields:
            errors.append(f"unknown key {where!r}; {_closest(str(key), list(fields), f'{path}.' if path else '')}")
            continue
        kwargs[key] = _coerce(value, hints[key], where, errors, dict(fields[key].metadata))
    return cls(**kwargs)


def _check(recipe: Recipe, errors: list[str]) -> None:
    """Checks across keys and against the libraries' registries (objectives, pruners, TrainingArguments)."""
    from ..data.benchmarks import BENCHMARKS
    from ..modeling import MODEL_SHAPES
    from ..objectives import OBJECTIVES

    d = recipe.data
    if d.benchmark not in BENCHMARKS:
        errors.append(f"data.benchmark: {_not_one_of(d.benchmark, sorted(BENCHMARKS))}")
    else:
        errors += [f"data: {p}" for p in BENCHMARKS[d.benchmark].check_options(d.subset, d.preset)]
    if recipe.torch_threads is not None and recipe.torch_threads < 1:
        errors.append(f"torch_threads: must be >= 1 or null, got {recipe.torch_threads!r}")
    m = recipe.model
    if (m.name_or_path is None) == (m.shape is None):
        errors.append("model: give exactly one of model.name_or_path (a pretrained model) and model.shape "
                      "(build one from a config)")
    if isinstance(m.shape, str) and m.shape not in MODEL_SHAPES:
        errors.append(f"model.shape: {_not_one_of(m.shape, sorted(MODEL_SHAPES))}")
    if isinstance(m.shape, dict):  # LlamaConfig ignores unknown fields: a typo would build its 7B default
        from transformers import LlamaConfig

        fields = sorted(LlamaConfig().to_dict())
        for key in m.shape:
            if key not in fields:
                errors.append(f"unknown key 'model.shape.{key}' (a LlamaConfig field); "
                              f"{_closest(key, fields, 'model.shape.')}")
    if m.shape is not None and not recipe.train_target.enabled:
        errors.append("train_target.enabled: a model built from model.shape is random; it must be trained")
    for name in ("train_target", "train_retain"):
        sec: TrainSection = getattr(recipe, name)
        _check_trainer_settings(sec, name, errors, [*_training_argument_names(), *FINETUNE_PRECISION_FIELDS])
        if sec.model is not None and sec.enabled:
            errors.append(f"{name}.model: set only with {name}.enabled: false (a ready-made model)")
    if recipe.train_target.model is not None:
        errors.append("train_target.model: the untrained target is model.name_or_path; "
                      "set train_target.enabled: false to use it as it is")
    if not recipe.train_retain.enabled and recipe.train_retain.model is None and m.shape is not None:
        errors.append("train_retain: a model built from scratch needs a retain model: enable train_retain")
    u = recipe.unlearn
    _check_trainer_settings(u, "unlearn", errors, _sau_config_names())
    for i, obj in enumerate(u.objective):
        if obj not in OBJECTIVES:
            errors.append(f"unlearn.objective[{i}]: {_not_one_of(obj, sorted(OBJECTIVES))}")
    for name in ("learning_rate",):
        for i, lr in enumerate(getattr(u, name)):
            if isinstance(lr, float) and not lr > 0:
                errors.append(f"unlearn.{name}[{i}]: must be > 0, got {lr!r}")
    for axis in ("model", "objective", "sau", "learning_rate", "seed"):
        values = getattr(u, axis)
        if len(set(map(repr, values))) != len(values):
            errors.append(f"unlearn.{axis}: repeated values in {values!r}")
    _check_objective_args(u, errors, OBJECTIVES)
    for where, given in [("unlearn.args", u.args), *((f"unlearn.objective_args.{o}", a)
                                                     for o, a in u.objective_args.items() if isinstance(a, dict))]:
        if given.get("idk_path") is not None and not os.path.isfile(str(given["idk_path"])):
            errors.append(f"{where}.idk_path: no file at {given['idk_path']!r} (one \"I don't know\" answer per line; "
                          "leave it unset for the package's own set)")
    _check_sau_grid(u, errors)
    if u.exclude:  # partial points of this recipe's grid (pipeline/grid.py)
        from .grid import check_exclude

        check_exclude(recipe, objective_grids(u), errors)
    p = recipe.prune
    from ..pruning.registry import PRUNERS

    errors += [f"prune.method[{i}]: {_not_one_of(x, list(PRUNERS))}" for i, x in enumerate(p.method) if x not in PRUNERS]
    for i, s in enumerate(p.sparsity):
        if isinstance(s, float) and not 0 <= s < 1:
            errors.append(f"prune.sparsity[{i}]: must be in [0, 1), got {s!r}")
    try:
        from ..pruning import parse_structure

        parse_structure(p.structure)
    except (ValueError, TypeError) as err:
        errors.append(f"prune.structure: {err}")
    if u.enabled and "sparse" in u.model and not p.enabled:
        errors.append("unlearn.model: 'sparse' needs prune.enabled: true (or unlearn.model: [dense])")
    if u.then_prune and not (p.enabled and "dense" in u.model):
        errors.append("unlearn.then_prune: needs prune.enabled: true and 'dense' in unlearn.model")
    for key in ("num_samples", "seq_len", "batch_size"):
        if getattr(p, key) < 1:
            errors.append(f"prune.{key}: must be >= 1")
    from .robustness import check as check_robustness

    check_robustness(recipe, errors)
    from .report_verdicts import check_recipe as check_band
    from .trajectories import check_recipe as check_trajectory

    check_band(recipe, errors)
    check_trajectory(recipe, errors)
    if recipe.evaluate.batch_size < 1 or recipe.evaluate.max_new_tokens < 0:
        errors.append("evaluate: batch_size must be >= 1 and max_new_tokens >= 0")
    from ..evaluation.compat import check_recipe as check_compat

    check_compat(recipe.evaluate, recipe.data.benchmark, errors)
    from ..evaluation.muse import check_recipe as check_muse

    check_muse(recipe, errors)
    h = recipe.push
    if h.push_to_hub and not h.hub_model_id:
        errors.append("push.hub_model_id: required with push.push_to_hub: true (e.g. user/model-name)")
    if h.push_to_hub and not (u.enabled and "sparse" in u.model):
        errors.append("push.push_to_hub: pushes an unlearned sparse model; the grid has none "
                      "(unlearn.enabled and 'sparse' in unlearn.model)")


# keys of unlearn.objective_args.<objective> that take the section's own field (typed as there)
OBJECTIVE_ARG_FIELDS = tuple(f for f in TrainerSettings.__dataclass_fields__ if f != "args") + (
    "learning_rate", "sau_topk", "sau_alpha")


def _check_objective_args(u: UnlearnSection, errors: list[str], objectives: dict) -> None:
    """unlearn.objective_args: known objectives; per key a section field (coerced in place) or an SAUConfig field."""
    from ..objectives.params import param_fields

    hints = typing.get_type_hints(UnlearnSection)
    fields = UnlearnSection.__dataclass_fields__
    sau_names = _sau_config_names()
    for obj, over in u.objective_args.items():
        where = f"unlearn.objective_args.{obj}"
        if obj not in objectives:
            errors.append(f"{where}: {_not_one_of(obj, sorted(objectives))}")
            continue
        if not isinstance(over, dict):
            errors.append(f"{where}: expected a mapping of settings, got {over!r}")
            continue
        for key, value in over.items():
            if key in ("output_dir", "objective", "sau", "seed", "data_seed"):
                errors.append(f"{where}.{key}: set by the pipeline or the grid; not allowed per objective")
            elif key in OBJECTIVE_ARG_FIELDS:
                over[key] = _coerce(value, hints[key], f"{where}.{key}", errors, dict(fields[key].metadata))
                if key == "learning_rate":
                    lrs = over[key]
                    if any(isinstance(lr, float) and not lr > 0 for lr in lrs) or len(set(map(repr, lrs))) != len(lrs):
                        errors.append(f"{where}.learning_rate: values must be > 0 and distinct, got {lrs!r}")
            elif key not in sau_names and key not in param_fields(objectives[obj]):  # SAUConfig checks values
                valid = sorted(set(OBJECTIVE_ARG_FIELDS) | set(sau_names) | set(param_fields(objectives[obj])))
                errors.append(f"unknown key '{where}.{key}'; {_closest(str(key), valid, where + '.')}")


def objective_settings(u_settings: dict, objective_args: dict, objective: str) -> tuple[dict, list | None]:
    """The unlearn settings of one objective's runs, and its learning-rate axis (None: the section's)."""
    over = dict(objective_args.get(objective) or {})
    lrs = over.pop("learning_rate", None)
    if not over:
        return u_settings, lrs
    out = dict(u_settings)
    from ..objectives import OBJECTIVES
    from ..objectives.params import param_fields

    own = set(param_fields(OBJECTIVES[objective])) if objective in OBJECTIVES else set()
    extra = {k: v for k, v in over.items() if k not in OBJECTIVE_ARG_FIELDS and k not in own}
    out.update({k: v for k, v in over.items() if k in OBJECTIVE_ARG_FIELDS})
    if params := {k: v for k, v in over.items() if k in own}:  # the objective's params: SAUConfig.objective_args
        extra["objective_args"] = {objective: params}
    if extra:
        out["args"] = {**u_settings.get("args", {}), **extra}
    return out, lrs


# ----------------------------------------------------------------------------------------- SAUConfig grid axes
# trainer settings of the unlearn section that are SAUConfig (TrainingArguments) fields: a list is a grid axis
SWEEPABLE_TRAINER_SETTINGS = ("num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps",
                              "lr_scheduler_type", "warmup_steps", "weight_decay", "optim", "max_length")
def section_settings(u: UnlearnSection) -> dict:
    """The unlearn settings every run of the grid shares (trainer settings, sau_topk, sau_alpha, args)."""
    return {k: v for k, v in dataclasses.asdict(u).items()
            if k not in ("enabled", "model", "objective", "sau", "learning_rate", "seed", "then_prune",
                         "retain_split", "objective_args", "eval_steps", "eval_max_new_tokens", "eval_rows",
                         "eval_membership_inference", "exclude")}


def objective_grids(u: UnlearnSection) -> dict[str, tuple[list, list | None]]:
    """Per known objective of the grid: its points of the SAUConfig axes (`grid_points`) and its learning rates."""
    from ..objectives import OBJECTIVES

    base = section_settings(u)
    return {o: (grid_points(s), lrs) for o in u.objective if o in OBJECTIVES and isinstance(u.objective_args.get(o)
            or {}, dict) for s, lrs in [objective_settings(base, u.objective_args, o)]}


def _sau_config_fields() -> dict[str, dataclasses.Field]:
    from ..config import SAUConfig

    return {f.name: f for f in dataclasses.fields(SAUConfig)}


def _takes_lists(f: dataclasses.Field) -> bool:
    """Whether a SAUConfig field's own values are lists (then only a list of lists is a grid axis)."""
    return "list" in str(f.type).lower()


def grid_axes(settings: dict) -> list[tuple[str, list]]:
    """The extra grid axes of one objective's unlearn settings: every SAUConfig field given as a list (``sau_topk``
    and ``sau_alpha`` in the section, any other field under ``args``), in alphabetical order: run names must not
    depend on the order in which a transformers version declares TrainingArguments' fields."""
    args = settings.get("args") or {}
    axes = []
    for name, f in sorted(_sau_config_fields().items()):
        value = settings.get(name) if name in ("sau_topk", "sau_alpha") else args.get(name)
        if isinstance(value, list) and (not _takes_lists(f) or all(isinstance(v, list) for v in value)):
            axes.append((name, value))
    return axes


def grid_points(settings: dict) -> list[tuple[dict, dict]]:
    """``(values, settings)`` per point of the extra axes: the axis values of the point and the unlearn settings
    with each list replaced by the point's value. One point, ``({}, settings)``, without axes."""
    import copy
    import itertools

    axes = grid_axes(settings)
    points = []
    for combo in itertools.product(*(values for _, values in axes)):
        values = dict(zip((name for name, _ in axes), combo, strict=True))
        point = copy.deepcopy(settings)
        for name, value in values.items():
            if name in ("sau_topk", "sau_alpha"):
                point[name] = value
            else:
                point["args"][name] = value
        points.append((values, point))
    return points


def _name_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return re.sub(r"[^A-Za-z0-9._]", "_", str(value))


def grid_name(values: dict) -> str:
    """The run-name part of a point of the extra axes: ``-<field>=<value>`` per axis (empty without axes)."""
    return "".join(f"-{name}={_name_value(value)}" for name, value in values.items())


def _check_sau_grid(u: UnlearnSection, errors: list[str]) -> None:
    """Every SAUConfig setting of every grid point, per objective, validated by SAUConfig itself (its own fields;
    TrainingArguments fields are checked by name here and by TrainingArguments when a run starts)."""
    import torch
    from transformers import TrainingArguments

    from ..config import SAUConfig

    own = set(_sau_config_fields()) - {f.name for f in dataclasses.fields(TrainingArguments)}
    base = section_settings(u)
    found: dict[str, list[str]] = {}
    from ..objectives import OBJECTIVES

    for obj in u.objective:
        if obj not in OBJECTIVES or not isinstance(u.objective_args.get(obj, {}), dict):
            continue  # an unknown objective is reported once, by name, with the valid ones
        settings, _ = objective_settings(base, u.objective_args, obj)
        axes = grid_axes(settings)
        hints = typing.get_type_hints(TrainerSettings)
        for name, values in axes:
            where = f"unlearn.{name}" + (f" (objective_args.{obj})" if (u.objective_args.get(obj) or {}).get(name)
                                         is not None else "")
            if name in SWEEPABLE_TRAINER_SETTINGS:  # typed as the section's own key
                trial: list[str] = []
                values[:] = [_coerce(v, hints[name], f"{where}[{i}]", trial) for i, v in enumerate(values)]
                if isinstance(u.args.get(name), list) and len(u.args[name]) == len(values) and "(" not in where:
                    u.args[name][:] = values  # the recipe keeps the typed values (3 -> 3.0 epochs): one hash
                if name == "num_train_epochs" and any(isinstance(v, float) and v <= 0 for v in values):
                    trial.append(f"{where}: every value must be > 0, got {values!r}")
                for message in trial:
                    found.setdefault(message, [])
            if not values:
                found.setdefault(f"{where}: the list is empty", [])
            elif len({_name_value(v) for v in values}) != len(values):
                found.setdefault(f"{where}: repeated values in {values!r} (each value names its runs)", [])
        if any(not values for _, values in axes):
            continue
        for _, point in grid_points(settings):
            kwargs = {k: v for k, v in point["args"].items() if k in own}
            # TrainingArguments re-creates accelerate's process state: make it the runner's (`_partial_state`), or a
            # CPU-only `accelerate launch` group would become one non-distributed process before the first stage
            kwargs["use_cpu"] = not torch.cuda.is_available()
            try:
                SAUConfig(output_dir="unused", objective=obj, sau=True, sau_topk=point["sau_topk"],
                          sau_alpha=point["sau_alpha"], **kwargs)
            except (ValueError, TypeError) as err:
                found.setdefault(str(err), []).append(obj)
    for message, objectives in found.items():
        whose = sorted(set(objectives))
        errors.append(message if not objectives else f"unlearn: {message}" if whose == sorted(set(u.objective))
                      else f"unlearn, objective {', '.join(whose)}: {message}")


def _check_trainer_settings(sec: TrainerSettings, name: str, errors: list[str], valid: list[str]) -> None:
    own = {f.name for f in dataclasses.fields(sec)}
    for key, value in sec.args.items():
        if name == "unlearn" and key in SWEEPABLE_TRAINER_SETTINGS and isinstance(value, list):
            continue  # a grid axis over a trainer setting (checked in _check_sau_grid)
        if key in own:
            errors.append(f"{name}.args.{key}: set it as {name}.{key}, not under args")
        elif key in ("output_dir", "objective", "sau", "sau_topk", "sau_alpha", "learning_rate", "seed", "data_seed"):
            errors.append(f"{name}.args.{key}: set by the pipeline or the grid; not allowed under args")
        elif key not in valid:
            errors.append(f"unknown key '{name}.args.{key}'; {_closest(key, valid, f'{name}.args.')}")
    for key in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_length", "logging_steps"):
        if getattr(sec, key) < 1:
            errors.append(f"{name}.{key}: must be >= 1, got {getattr(sec, key)!r}")
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    for key, enum in (("optim", OptimizerNames), ("lr_scheduler_type", SchedulerType)):
        allowed = [e.value for e in enum]
        if getattr(sec, key) not in allowed:
            errors.append(f"{name}.{key}: {getattr(sec, key)!r} is not known; "
                          f"{_closest(str(getattr(sec, key)), allowed, '', kind='values')}")
    if sec.effective_batch_size is not None and sec.effective_batch_size < 1:
        errors.append(f"{name}.effective_batch_size: must be >= 1, got {sec.effective_batch_size!r}")
    elif sec.effective_batch_size is not None and sec.effective_batch_size % sec.per_device_train_batch_size:
        errors.append(f"{name}.effective_batch_size: {sec.effective_batch_size} is not a multiple of "
                      f"per_device_train_batch_size={sec.per_device_train_batch_size}")
    if sec.num_train_epochs <= 0:
        errors.append(f"{name}.num_train_epochs: must be > 0")


def _training_argument_names() -> list[str]:
    from transformers import TrainingArguments

    return sorted(f.name for f in dataclasses.fields(TrainingArguments))


def _sau_config_names() -> list[str]:
    from ..config import SAUConfig

    return sorted(f.name for f in dataclasses.fields(SAUConfig))


# ----------------------------------------------------------------------------------------- overrides
def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=VALUE`` -> (["a", "b", "c"], VALUE parsed as YAML: 2e-4, true, [1, 2], null, text)."""
    if "=" not in text:
        raise RecipeError(f"override {text!r}: expected KEY=VALUE, e.g. unlearn.learning_rate=2e-4")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise RecipeError(f"override {text!r}: bad key {key!r}")
    try:
        value = yaml_load(raw, f"override {key.strip()!r}") if raw.strip() else ""
    except yaml.YAMLError as err:
        raise RecipeError(f"override {key.strip()!r}: the value is not valid YAML ({' '.join(str(err).split())}); "
                          "e.g. unlearn.learning_rate=[1e-4,2e-4]") from None
    return parts, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """A copy of the raw recipe mapping with each ``key.path=value`` set (validation comes after)."""
    import copy

    out = copy.deepcopy(data) if data else {}
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise RecipeError(f"override {text!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return out


# `finetune` takes these besides TrainingArguments (train_target.args / train_retain.args): see sau_trainer.precision
FINETUNE_PRECISION_FIELDS = ("low_precision_weights", "compensated_optimizer")


def _lift_sau_config_fields(data: dict, errors: list[str]) -> None:
    """``unlearn.<SAUConfig field>`` that is not a key of the section means ``unlearn.args.<field>``.

    So any `SAUConfig` field (``low_precision_weights``, ``compensated_optimizer``, ...) can be set directly in
    the `unlearn` section or under ``unlearn.args``, with the same effect and the same task hash. A trainer
    setting of the section given as a list (``num_train_epochs: [3, 5]``) is a grid axis: it goes to args too.
    """
    u = data.get("unlearn")
    if not isinstance(u, dict):
        return
    own, sau = UnlearnSection.__dataclass_fields__, set(_sau_config_names())
    lifted = {k: v for k, v in u.items() if (k not in own and k in sau) or (k in SWEEPABLE_TRAINER_SETTINGS
                                                                            and isinstance(v, list))}
    args = u.get("args") or {}
    if not lifted or not isinstance(args, dict):
        return
    for key in lifted:
        if key in args:
            errors.append(f"unlearn.{key}: given both directly and under unlearn.args; keep one")
    data["unlearn"] = {**{k: v for k, v in u.items() if k not in lifted}, "args": {**args, **lifted}}


def _check_sau_choices(recipe: Recipe, errors: list[str]) -> None:
    """The SAUConfig fields that `finetune` takes (train_*.args), checked against sau_trainer.config.CHOICES before
    any work starts (the unlearn section is validated by SAUConfig itself: `_check_sau_grid`)."""
    from ..config import CHOICES

    for name in ("train_target", "train_retain"):
        for key, value in getattr(recipe, name).args.items():
            if key in CHOICES and value not in CHOICES[key]:
                where = f"{name}.{key}" if name == "unlearn" else f"{name}.args.{key}"
                errors.append(f"{where}: {_not_one_of(value, list(CHOICES[key]))}")


def validate(data: dict | None) -> Recipe:
    """A `Recipe` from a raw mapping, or `RecipeError` listing every problem."""
    from . import recipe_guards as guards

    errors: list[str] = []
    guards.refuse_secrets(data)  # bounded size first; a credential is the only thing said, its value never
    data = dict(data or {})
    version = data.pop("version", RECIPE_VERSION)
    if version != RECIPE_VERSION:
        errors.append(f"version: this sau-trainer reads recipe version {RECIPE_VERSION}, got {version!r}")
    from ..plugins import load_plugins

    if problems := load_plugins(data.get("plugins")):  # before any name is checked: they register names
        raise RecipeError("invalid recipe:\n  - " + "\n  - ".join(problems))
    _lift_sau_config_fields(data, errors)
    recipe = _build(Recipe, data, "", errors)
    guards.check_numbers(recipe, errors)  # NaN/inf: nothing below runs on them
    if not errors:
        _check(recipe, errors)
        _check_sau_choices(recipe, errors)
        guards.check_ranges(recipe, errors)
    if errors:
        raise RecipeError("invalid recipe:\n  - " + "\n  - ".join(errors))
    return recipe


def load_recipe(path: str | os.PathLike, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe file."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"no recipe file at {path}")
    try:
        data = yaml_load(path.read_text())
    except RecipeError as err:  # expands beyond the bound, or nests too deeply
        raise RecipeError(f"{path}: {err}") from None
    except (yaml.YAMLError, ValueError) as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from None
    if data is None and not overrides:  # nothing but blanks or comments: say so, not which key is missing
        raise RecipeError(f"the recipe file {path} is empty; a recipe needs at least a model section "
                          "(see recipes/demo.yaml)")
    if data is not None and not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections, got {type(data).__name__}")
    try:
        from ..plugins import resolve_paths

        return validate(apply_overrides(resolve_paths(data or {}, path.parent), overrides or []))
    except RecipeError as err:
        raise RecipeError(f"{path}: {err}") from None


def recipe_to_yaml(recipe: Recipe) -> str:
    """The resolved recipe (defaults filled in) as YAML."""
    return yaml.safe_dump({"version": RECIPE_VERSION, **recipe.to_dict()}, sort_keys=False)


def describe_keys(cls: type = Recipe, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every key, for the documentation."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if f.metadata.get("section"):
            rows += describe_keys(hints[f.name], key + ".")
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        rows.append((key, repr(default), f.metadata.get("help", "")))
    return rows
