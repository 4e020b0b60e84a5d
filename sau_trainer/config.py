"""`SAUConfig`: `TrainingArguments` plus the SAU and objective settings, validated at construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from .objectives import OBJECTIVES
from .objectives.params import check_objective_args
from .precision import OPTIMIZER_CHOICES, POLICIES

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
    npo_beta: float = field(default=0.1, metadata={"help": "beta of NPO."})
    simnpo_beta: float = field(default=4.5, metadata={"help": "beta of SimNPO."})
    simnpo_delta: float = field(default=0.0, metadata={"help": "delta (reward margin) of SimNPO."})
    rmu_layer: int | None = field(
        default=None,
        metadata={"help": "rmu: index (0-based) of the decoder block whose output is steered; None: 7 where the "
                  "model has more than 7 blocks (open-unlearning), else the middle block."},
    )
    rmu_steering_coeff: float = field(
        default=2.0, metadata={"help": "rmu: norm c of the control vector (open-unlearning's TOFU config: 2)."}
    )
    rmu_trainable_params: str = field(
        default=".*",
        metadata={"help": "rmu: regular expression, full-matched against parameter names; the others are frozen "
                  r"('.*': all, OU's TOFU setting; OU's WMDP setting: 'model\.layers\.(5|6|7)\.mlp\.down_proj"
                  r"\.weight')."},
    )
    rmu_mse_mean: str = field(
        default="example",
        metadata={"help": "rmu: how the masked activation MSE averages rows: example (mean over rows of each row's "
                  "mean over its positions, as the WMDP paper) or open-unlearning (mean of the rows' sums x mean of "
                  "1/positions, what its broadcast computes; differs on rows of unequal length)."},
    )
    pdu_epsilon: float | None = field(
        default=None,
        metadata={"help": "pdu: retain-loss bound epsilon of the constraint; None: 1.1 x the retain NLL of the "
                  "starting model over the retain set, measured at train start."},
    )
    pdu_dual_lr: float = field(default=1.0, metadata={"help": "pdu: step size eta of the dual ascent on lambda."})
    pdu_dual_warmup_epochs: int = field(
        default=5, metadata={"help": "pdu: completed epochs before lambda starts to move."}
    )
    pdu_primal_dual: bool = field(
        default=True, metadata={"help": "pdu: update lambda by dual ascent (False: lambda stays at retain_weight)."}
    )
    pdu_dual_update_upon: str = field(
        default="step",
        metadata={"help": "pdu: when lambda moves: step (every loss call, open-unlearning's default) or epoch (at "
                  "each epoch end, with the retain NLL of the end-of-epoch model over the retain set)."},
    )
    pdu_shifted_mask: bool = field(
        default=False,
        metadata={"help": "pdu: flatten the logits that predict answer tokens (False: open-unlearning's unshifted "
                  "label mask, off by one)."},
    )
    wga_beta: float = field(default=1.0, metadata={"help": "wga: exponent beta of the token weight p^beta."})
    satimp_beta1: float = field(
        default=5.0, metadata={"help": "satimp: exponent beta1 of the token weight p^beta1 (1-p)^beta2."}
    )
    satimp_beta2: float = field(
        default=1.0, metadata={"help": "satimp: exponent beta2 of the token weight p^beta1 (1-p)^beta2."}
    )
    idk_path: str | None = field(
        default=None,
        metadata={"help": "idkdpo/idknll: file of \"I don't know\" answers, one per line (e.g. open-unlearning's "
                  "data/idk.jsonl, for numbers comparable with published ones); None: the package's own 100."},
    )
    idk_pairing: str = field(
        default="epoch",
        metadata={"help": "idkdpo/idknll: epoch (a seeded draw of one idk answer per forget example and epoch, as "
                  "open-unlearning draws afresh at every fetch) or fixed (one draw per example for the run); "
                  "altpo: the same for the choice among a question's alternate answers."},
    )
    idkdpo_beta: float = field(
        default=0.1, metadata={"help": "idkdpo: beta of DPO (open-unlearning's config: 0.1; loss scaled by 2/beta)."}
    )
    altpo_beta: float = field(
        default=0.1, metadata={"help": "altpo: beta of its preference loss (open-unlearning's grid: 0.05, 0.1, 0.5)."}
    )
    alternate_source: str = field(
        default="auto",
        metadata={"help": "altpo: where each forget question's alternate answers come from: column "
                  "(alternate_column), perturbed (the rows' perturbed_answer, e.g. TOFU's), generate (the starting "
                  "model answers alternate_prompt) or auto (the first of these that is given or present)."},
    )
    alternate_column: str | None = field(
        default=None,
        metadata={"help": "altpo: column of the forget rows holding each question's alternate answer (a string) or "
                  "answers (a list of strings)."},
    )
    alternate_prompt: str | None = field(
        default=None,
        metadata={"help": "altpo: prompt template with {question} and {answer} that asks the starting model (an "
                  "instruct model) for a plausible different answer; generated greedily once at train start."},
    )
    alternate_max_new_tokens: int = field(
        default=64, metadata={"help": "altpo: at most this many tokens per generated alternate answer."}
    )
    undial_beta: float = field(
        default=10.0, metadata={"help": "undial: beta subtracted from the teacher's logit of the true token."}
    )
    undial_label_mask: bool = field(
        default=False,
        metadata={"help": "undial: average over supervised positions only (False: open-unlearning's variant, every "
                  "position incl. prompt and padding, beta at token V-100 where the label is -100)."},
    )
    ceu_ignore_first_n: int = field(
        default=1, metadata={"help": "ceu: leave the first n supervised tokens of each answer out of the loss."}
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

    def __post_init__(self):
        check_float_fields(self)  # every float setting finite (and not a bool) before anything compares it
        self._validate_sau_fields()
        super().__post_init__()

    def _validate_sau_fields(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective={self.objective!r} is not known; choose one of {sorted(OBJECTIVES)}.")
        check_objective_args(self.objective_args, OBJECTIVES)  # each objective's `params`: once, here
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not allowed; choose one of {list(allowed)}.")
        if not (isinstance(self.sau_topk, (int, float)) and 0 < self.sau_topk <= 1):
            raise ValueError(f"sau_topk={self.sau_topk!r} must be in (0, 1] (the paper uses 0.3).")
        if self.sau_alpha < 0:
            raise ValueError(f"sau_alpha={self.sau_alpha!r} must be >= 0 (the paper uses 0.1).")
        self._validate_study_options()
        for name in ("saliency_max_examples", "saliency_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer or None.")
        for name in ("npo_beta", "simnpo_beta"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be > 0.")
        self._validate_objective_fields()
        self._validate_idk_undial_ceu_fields()
        if self.max_length < 2:
            raise ValueError(f"max_length={self.max_length!r} must be at least 2.")
        if not isinstance(self.update_check_steps, int) or self.update_check_steps < 0:
            raise ValueError(f"update_check_steps={self.update_check_steps!r} must be an integer >= 0 (0: no check).")

    def _validate_study_options(self) -> None:
        if not isinstance(self.saliency_retain_aware, bool):
            raise ValueError(f"saliency_retain_aware={self.saliency_retain_aware!r} must be true or false.")
        if not (isinstance(self.saliency_retain_eps, (int, float)) and self.saliency_retain_eps > 0):
            raise ValueError(f"saliency_retain_eps={self.saliency_retain_eps!r} must be a number > 0 (default 0.01).")
        if self.sau_topk_mass is not None:
            if isinstance(self.sau_topk_mass, bool) or not isinstance(self.sau_topk_mass, (int, float)) \
                    or not 0 < self.sau_topk_mass <= 1:
                raise ValueError(f"sau_topk_mass={self.sau_topk_mass!r} must be in (0, 1] (e.g. 0.5), or None for a "
                                 "fixed sau_topk.")
        for name, value in (("sau_topk_mass", self.sau_topk_mass is not None),
                            ("sau_moving_mask", self.sau_moving_mask != "off")):
            if value and self.sau and self.sau_topk_scope == "global":
                raise ValueError(f"{name} selects per matrix or row; it does not combine with "
                                 "sau_topk_scope='global' (use 'matrix' or 'row').")

    def _validate_objective_fields(self) -> None:
        import re

        retain_losses = ("nll", "kl", "embed_diff") if self.objective == "rmu" else ("nll", "kl")
        if self.retain_loss is not None and self.retain_loss not in retain_losses:
            raise ValueError(f"retain_loss={self.retain_loss!r} is not allowed; choose one of {list(retain_losses)} "
                             f"for objective={self.objective!r} (or None for its default).")
        if self.rmu_layer is not None and self.rmu_layer < 0:
            raise ValueError(f"rmu_layer={self.rmu_layer!r} must be a block index >= 0, or None for the default.")
        try:
            re.compile(self.rmu_trainable_params)
        except re.error as err:
            raise ValueError(f"rmu_trainable_params={self.rmu_trainable_params!r} is not a regular expression: "
                             f"{err}") from None
        if self.rmu_steering_coeff <= 0:
            raise ValueError(f"rmu_steering_coeff={self.rmu_steering_coeff!r} must be > 0.")
        if self.pdu_epsilon is not None and self.pdu_epsilon < 0:
            raise ValueError(f"pdu_epsilon={self.pdu_epsilon!r} must be >= 0 (a bound on the retain loss), or None.")
        if self.objective == "pdu" and self.pdu_epsilon is None and self.retain_loss == "kl":
            raise ValueError("objective='pdu' with retain_loss='kl' needs pdu_epsilon: its default (1.1 x the "
                             "starting retain NLL) measures an NLL, and the starting KL is 0.")
        if self.pdu_dual_update_upon not in ("step", "epoch"):
            raise ValueError(f"pdu_dual_update_upon={self.pdu_dual_update_upon!r} is not allowed; choose one of "
                             "['step', 'epoch'].")
        if self.objective == "pdu" and self.pdu_dual_update_upon == "epoch" and self.retain_loss == "kl":
            raise ValueError("objective='pdu' with pdu_dual_update_upon='epoch' measures the retain NLL at each "
                             "epoch end; it does not combine with retain_loss='kl' (use 'step').")
        if self.pdu_dual_lr < 0 or self.pdu_dual_warmup_epochs < 0:
            raise ValueError(f"pdu_dual_lr={self.pdu_dual_lr!r} and pdu_dual_warmup_epochs="
                             f"{self.pdu_dual_warmup_epochs!r} must be >= 0.")
        for name in ("wga_beta", "satimp_beta1", "satimp_beta2"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be >= 0.")

    def _validate_idk_undial_ceu_fields(self) -> None:
        if self.idk_path is not None:
            from .data.idk import load_idk_answers

            load_idk_answers(self.idk_path)  # a missing, empty or non-text file is an error now, not mid-run
        if self.idkdpo_beta <= 0:
            raise ValueError(f"idkdpo_beta={self.idkdpo_beta!r} must be > 0 (open-unlearning uses 0.1).")
        if self.altpo_beta <= 0:
            raise ValueError(f"altpo_beta={self.altpo_beta!r} must be > 0 (default 0.1).")
        if isinstance(self.alternate_max_new_tokens, bool) or not isinstance(self.alternate_max_new_tokens, int) \
                or self.alternate_max_new_tokens < 1:
            raise ValueError(f"alternate_max_new_tokens={self.alternate_max_new_tokens!r} must be an integer >= 1.")
        if self.objective == "altpo":
            from .data.alternates import check_alternate_settings

            check_alternate_settings(self.alternate_source, self.alternate_column, self.alternate_prompt)
        if self.undial_beta < 0:
            raise ValueError(f"undial_beta={self.undial_beta!r} must be >= 0 (open-unlearning uses 10).")
        if isinstance(self.ceu_ignore_first_n, bool) or not isinstance(self.ceu_ignore_first_n, int) \
                or self.ceu_ignore_first_n < 0:
            raise ValueError(f"ceu_ignore_first_n={self.ceu_ignore_first_n!r} must be an integer >= 0 (default 1).")

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
