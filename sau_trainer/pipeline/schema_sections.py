"""The recipe's sections: dataclasses whose fields carry `help` metadata (the documentation's key table)."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

from .frontier import DEFAULT_BAND
from .schema_types import SAUDefault, opt


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
    """The benchmark: a key of the registry `sau_trainer.benchmarks.registry.BENCHMARKS`."""

    benchmark: str = opt("synthetic", "A key of sau_trainer.benchmarks.registry.BENCHMARKS: synthetic (built-in, "
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
    sau_topk: float | list[float] = opt(SAUDefault("sau_topk"), "k: fraction of surviving weights selected by saliency (a list: a grid "
                                        "axis, like every SAUConfig field given as a list).")
    sau_alpha: float | list[float] = opt(SAUDefault("sau_alpha"), "alpha: strength of the redistribution weight (a list: a grid axis).")
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
        "included) in each evaluation during unlearning. Off by default: they are about 40% of an "
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
                                    "usable in the recipe (docs/guides/plugins.md).", may_be_empty=True)
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
