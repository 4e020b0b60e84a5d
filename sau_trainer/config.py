"""`SAUConfig`: `TrainingArguments` plus the SAU and objective settings, validated at construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from .objectives import OBJECTIVES
from .objectives.params import check_objective_args
from .training.compensated import OPTIMIZER_CHOICES
from .training.precision import POLICIES

CHOICES: dict[str, tuple[str, ...]] = {
    "sau_topk_scope": ("matrix", "row", "global"),
    "sau_redistribution": ("matrix", "row", "param", "none"),
    "sau_redistribution_target": ("grad", "update"),
    "sau_dense_params": ("train", "freeze", "topk"),
    "low_precision_weights": POLICIES,
    "compensated_optimizer": OPTIMIZER_CHOICES,
    "saliency_loss": ("forget_nll", "objective"),
    "saliency_granularity": ("batch", "example"),
    "idk_pairing": ("epoch", "fixed"),
    "sau_moving_mask": ("off", "matrix", "row"),
    "rmu_mse_mean": ("example", "open-unlearning"),
    "retain_kl_positions": ("sequence", "answer", "open-unlearning"),
    "alternate_source": ("auto", "column", "perturbed", "generate"),
}

# The settings that make G and W; a checkpoint's SAU state must have been made with the same ones.
SAU_SETTING_FIELDS = (
    "sau_topk", "sau_alpha", "sau_topk_scope", "sau_redistribution", "sau_dense_params", "saliency_loss",
    "saliency_granularity", "saliency_max_examples", "saliency_batch_size",
)
# The study's options (issue 17): in the settings only when not at their default, so states saved before they
# existed (and runs that leave them off) keep their settings.
SAU_OPTION_DEFAULTS = {"saliency_retain_aware": False, "saliency_retain_eps": 0.01, "sau_topk_mass": None,
                       "sau_moving_mask": "off"}

# Weights of the objective's terms: a negative one turns the term around (ascent on the retain set).
NONNEGATIVE_FLOATS = ("forget_weight", "retain_weight")


def float_fields(cls: type) -> dict[str, bool]:
    """name -> whether None is allowed, for every field of dataclass `cls` declared ``float`` or ``float | None``."""
    import dataclasses
    import re

    out = {}
    for f in dataclasses.fields(cls):
        words = set(re.findall(r"\w+", f.type if isinstance(f.type, str) else repr(f.type)))
        if "float" in words and words <= {"float", "None", "Optional", "class", "typing"}:
            out[f.name] = "None" in words or "Optional" in words
    return out


def check_float_fields(config) -> None:
    """Every float setting of `config` is a finite real number: NaN and inf would pass every range check written
    as a comparison and train to an all-NaN model; a bool is not a number. `TrainingArguments`' float fields are
    checked where they hold a float (NaN, inf); its other values are left to its own checks."""
    import dataclasses
    import math

    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
    for name, optional in float_fields(type(config)).items():
        value = getattr(config, name)
        if (value is None and optional) or (name in inherited and not isinstance(value, float)):
            continue  # TrainingArguments' own conversions and checks apply to its other values
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not math.isfinite(value):
            what = "a finite number" + (" or None" if optional else "")
            raise ValueError(f"{name}={value!r} must be {what} (default: {defaults[name]!r}).")
    for name in NONNEGATIVE_FLOATS:
        value = getattr(config, name)
        if value is not None and value < 0:
            raise ValueError(f"{name}={value!r} must be >= 0 (or None for the objective's default).")


@dataclass
class SAUConfig(TrainingArguments):
    """Training arguments for `SAUTrainer`. Every `TrainingArguments` field works as usual."""

    objective: str = field(
        default="graddiff", metadata={"help": f"Unlearning objective, one of: {', '.join(OBJECTIVES)}."}
    )
    objective_args: dict = field(
        default_factory=dict, metadata={"help": "Objectives' own settings, {objective: {param: value}}: the fields of "
                                        "that objective class's `params` dataclass (a plugin's, e.g. "
                                        "{'scaled_ga': {'scale': 0.5}}); it reads them as `self.params`."}
    )
    sau: bool = field(
        default=True,
        metadata={"help": "Sparsity-Aware Unlearning. False gives the plain masked baseline (gradient * M only)."},
    )
    sau_topk: float = field(
        default=0.3, metadata={"help": "k: fraction of surviving weights selected by saliency, in (0, 1]."}
    )
    sau_alpha: float = field(
        default=0.1, metadata={"help": "alpha: strength of the redistribution weight W = 1 + alpha * I_P / I_G."}
    )
    sau_topk_scope: str = field(
        default="matrix", metadata={"help": "Unit of the top-k selection: matrix, row (output row) or global."}
    )
    sau_redistribution: str = field(
        default="matrix", metadata={"help": "Shape of W: matrix (a scalar), row, param (per entry) or none (W = 1)."}
    )
    sau_redistribution_target: str = field(
        default="grad",
        metadata={
            "help": "Where W acts: grad (grad * G * W before clipping; Adam mostly cancels it) or update "
            "(the optimizer's step on selected entries is scaled by W, decoupled weight decay included)."
        },
    )
    sau_dense_params: str = field(
        default="train",
        metadata={"help": "Non-prunable parameters (embeddings, norms, lm_head): train plainly, freeze, or topk "
                  "(saliency top-k with M = all ones)."},
    )
    saliency_loss: str = field(
        default="forget_nll",
        metadata={"help": "Loss of the saliency pass: forget_nll (answer NLL) or objective (its forget term)."},
    )
    saliency_granularity: str = field(
        default="batch",
        metadata={"help": "batch: mean of squared per-batch gradients; example: per-example (closer Fisher, slower)."},
    )
    saliency_max_examples: int | None = field(
        default=None, metadata={"help": "Use at most this many forget examples in the saliency pass (None: all)."}
    )
    saliency_batch_size: int | None = field(
        default=None, metadata={"help": "Batch size of the saliency pass (None: per_device_train_batch_size)."}
    )
    saliency_retain_aware: bool = field(
        default=False,
        metadata={"help": "Retain-aware saliency: select G by forget saliency / (retain saliency + eps * its matrix "
                  "mean), the weights that matter to the forget set and not to the retain set (the ratio of forget "
                  "to retain Fisher that Selective Synaptic Dampening, Foster et al. 2024, selects by). A second "
                  "pass over as many retain examples as forget ones (answer NLL); W still uses the forget "
                  "saliency. Needs a retain set."},
    )
    saliency_retain_eps: float = field(
        default=0.01,
        metadata={"help": "Retain-aware saliency: eps, relative to the matrix's mean retain saliency, added to the "
                  "retain saliency in the ratio's denominator (> 0)."},
    )
    sau_topk_mass: float | None = field(
        default=None,
        metadata={"help": "Adaptive k: per selection unit (matrix or row), the smallest set of surviving entries "
                  "holding this share of the unit's saliency, in (0, 1]; replaces sau_topk. None: a fixed k."},
    )
    sau_moving_mask: str = field(
        default="off",
        metadata={"help": "A mask that may move: train every entry of a prunable matrix (pruned ones start at 0) "
                  "and after each step keep per unit (matrix or output row; the N:M pattern of an N:M-pruned "
                  "matrix) as many entries, the largest in magnitude. The count per unit and the pattern stay "
                  "exact, the support moves; the final mask is saved. With SAU, G is selected among all entries, "
                  "ceil(k |S|) per unit. off: the fixed mask (pruned entries stay zero). See "
                  "sau_trainer.moving_mask."},
    )
    forget_weight: float | None = field(
        default=None, metadata={"help": "gamma, weight of the forget term (None: the objective's default)."}
    )
    retain_weight: float | None = field(
        default=None, metadata={"help": "alpha of the objective, weight of the retain term (None: its default)."}
    )
    retain_loss: str | None = field(
        default=None,
        metadata={"help": "Retain term: nll, kl to the frozen starting model (built only then), or embed_diff "
                  "(RMU only: hidden states at the hooked block); None: the objective's default (nll; rmu: "
                  "embed_diff)."},
    )
    retain_kl_positions: str = field(
        default="sequence",
        metadata={"help": "retain_loss=kl: the positions its KL(p_ref || p) is averaged over: sequence (every "
                  "non-padding position of the retain rows, question and answer: TOFU's term over the retain "
                  "sequence), answer (the supervised next-token positions: the package's former definition) or "
                  "open-unlearning (all batch x length positions, prompt and padding included, as its code)."},
    )
    low_precision_weights: str = field(
        default="upcast",
        metadata={"help": "Trainable bf16/fp16 weights whose optimizer does not compensate rounding (plain AdamW "
                  "loses every step below half a ULP: at lr 1e-5 all survivors of magnitude pruning): upcast "
                  "(cast them to fp32 master weights before training, logged; bf16=True keeps bf16 compute), "
                  "error (refuse, naming the fixes) or keep (train anyway: explicit opt-out, warned). "
                  "See sau_trainer.precision."},
    )
    compensated_optimizer: str = field(
        default="none",
        metadata={"help": "An optimizer whose updates reach bf16 weights, used instead of `optim`: kahan_adamw "
                  "(torch-optimi AdamW, Kahan summation), sr_adamw or sr_adamw8bit (torchao AdamW, bf16 "
                  "stochastic rounding; 8-bit states). Needs `pip install 'sau-trainer[precision]'`. none: `optim`."},
    )
    update_check_steps: int = field(
        default=1,
        metadata={"help": "After this many optimizer steps with lr > 0, log the fraction of a fixed sample of "
                  "selected surviving entries (G; M for plain) that changed, and warn if far below 1. 0: off."},
    )
    skip_nonfinite_steps: bool = field(
        default=False,
        metadata={"help": "An optimizer step whose loss or gradient norm is not finite (NaN or inf) is skipped: its "
                  "gradients are dropped, the optimizer does not step, a warning counts the skipped steps. False: "
                  "training stops before that step with sau_trainer.TrainingDiverged (naming the step, the "
                  "learning rate and the last finite loss). Either way such a step is never applied."},
    )
    max_length: int = field(default=512, metadata={"help": "Tokenised rows are truncated to this many tokens."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: SAUTrainer tokenises its own forget/retain rows."}
    )

    # The objectives' settings under their former flat names (``npo_beta=0.2``): init-only (InitVar), stored in
    # `objective_args` ({"npo": {"beta": 0.2}}); reading ``config.npo_beta`` gives that objective's value.
    for _name in FLAT_NAMES:
        __annotations__[_name] = "InitVar[Any]"
        vars()[_name] = UNSET
    del _name

    def __post_init__(self, *flat_values):
        given = {n: v for n, v in zip(FLAT_NAMES, flat_values, strict=True) if v is not UNSET}
        self.objective_args, spelled = merge_flat(self.objective_args, given, OBJECTIVES) \
            if isinstance(self.objective_args, dict) else (self.objective_args, {})
        if problems := settings_problems(self, spelled):
            raise ValueError("; ".join(problems))
        super().__post_init__()

    def sau_settings(self) -> dict:
        """The settings that determine G and W (saved beside them in checkpoints)."""
        settings = {name: getattr(self, name) for name in SAU_SETTING_FIELDS}
        settings |= {name: getattr(self, name) for name, default in SAU_OPTION_DEFAULTS.items()
                     if getattr(self, name) != default}
        settings["saliency_batch_size"] = self.saliency_batch_size or self.per_device_train_batch_size
        if self.saliency_loss == "objective":  # then the objective's forget term shapes the saliency too
            settings |= {k: getattr(self, k) for k in ("objective", "npo_beta", "simnpo_beta", "simnpo_delta",
                                                        "rmu_layer", "rmu_steering_coeff", "pdu_shifted_mask",
                                                        "wga_beta", "satimp_beta1", "satimp_beta2")}
        if self.saliency_loss == "objective":
            settings |= {k: getattr(self, k) for k in ("idk_path", "idk_pairing", "idkdpo_beta", "undial_beta",
                                                        "undial_label_mask", "ceu_ignore_first_n")}
            settings |= {k: getattr(self, k) for k in ("rmu_mse_mean", "altpo_beta", "alternate_source",
                                                        "alternate_column", "alternate_prompt",
                                                        "alternate_max_new_tokens")
                         if getattr(self, k) != type(self).__dataclass_fields__[k].default}
        if self.saliency_loss == "objective" and self.objective_args.get(self.objective):
            settings["objective_args"] = {self.objective: self.objective_args[self.objective]}
        if self.objective == "rmu":  # RMU's trainable parameters are the saliency targets
            settings["rmu_trainable_params"] = self.rmu_trainable_params
        return settings
