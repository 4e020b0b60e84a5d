"""`SAUConfig`: `TrainingArguments` plus the SAU settings, validated at construction.

The objectives' own settings are theirs (a ``params`` dataclass in each objective's file, `objectives.params`):
`SAUConfig` holds them as `objective_args` and still takes and reads them by their former flat names
(``SAUConfig(npo_beta=0.2).npo_beta``). `settings_problems` is the one check of SAU and objective settings:
`SAUConfig` runs it at construction, and the recipe check (`pipeline.schema`) runs it on every grid point
before any stage, without building a `TrainingArguments`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import InitVar, dataclass, field  # noqa: F401 - InitVar: the flat names' annotation
from typing import Any

from transformers import TrainingArguments

from .objectives import OBJECTIVES
from .objectives.params import (
    build_params,
    check_objective_args,
    flat_field,
    flat_names,
    float_fields,
    merge_flat,
)
from .training.compensated import OPTIMIZER_CHOICES
from .training.precision import POLICIES

__all__ = ["SAUConfig", "CHOICES", "SAU_SETTING_FIELDS", "SAU_OPTION_DEFAULTS", "FLAT_NAMES", "float_fields",
           "check_float_fields", "settings_problems", "check_settings", "setting_names", "choice_problems",
           "field_default", "settings_view"]

CHOICES: dict[str, tuple[str, ...]] = {
    "sau_topk_scope": ("matrix", "row", "global"),
    "sau_redistribution": ("matrix", "row", "param", "none"),
    "sau_redistribution_target": ("grad", "update"),
    "sau_dense_params": ("train", "freeze", "topk"),
    "low_precision_weights": POLICIES,
    "compensated_optimizer": OPTIMIZER_CHOICES,
    "saliency_loss": ("forget_nll", "objective"),
    "saliency_granularity": ("batch", "example"),
    "sau_moving_mask": ("off", "matrix", "row"),
    "retain_kl_positions": ("sequence", "answer", "open-unlearning"),
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

# The built-in objectives' settings by their former flat SAUConfig names (npo_beta, ..., ceu_ignore_first_n)
FLAT_NAMES: tuple[str, ...] = tuple(flat_names(OBJECTIVES))
# the saliency pass's objective settings (saliency_loss="objective") that checkpoints list only off their default
_SALIENCY_IF_SET = ("rmu_mse_mean", "altpo_beta", "alternate_source", "alternate_column", "alternate_prompt",
                    "alternate_max_new_tokens")
_SALIENCY_ALWAYS = ("npo_beta", "simnpo_beta", "simnpo_delta", "rmu_layer", "rmu_steering_coeff", "pdu_shifted_mask",
                    "wga_beta", "satimp_beta1", "satimp_beta2", "idk_path", "idk_pairing", "idkdpo_beta",
                    "undial_beta", "undial_label_mask", "ceu_ignore_first_n")


class _Unset:
    def __repr__(self) -> str:
        return "<the objective's default>"


UNSET: Any = _Unset()


def check_float_fields(config) -> None:
    """Every float setting of `config` is a finite real number (ValueError naming the first that is not)."""
    if problems := _float_problems(config):
        raise ValueError(problems[0])


def _float_problems(config) -> list[str]:
    """NaN and inf would pass every range check written as a comparison and train to an all-NaN model; a bool is
    not a number. `TrainingArguments`' float fields are checked where they hold a float (NaN, inf); its other
    values are left to its own checks."""
    defaults = {f.name: f.default for f in dataclasses.fields(SAUConfig)}
    inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
    out = []
    for name, optional in float_fields(SAUConfig).items():
        value = getattr(config, name, defaults[name])
        if (value is None and optional) or (name in inherited and not isinstance(value, float)):
            continue  # TrainingArguments' own conversions and checks apply to its other values
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not math.isfinite(value):
            what = "a finite number" + (" or None" if optional else "")
            out.append(f"{name}={value!r} must be {what} (default: {defaults[name]!r}).")
    for name in NONNEGATIVE_FLOATS:
        value = getattr(config, name)
        if not out and value is not None and value < 0:
            out.append(f"{name}={value!r} must be >= 0 (or None for the objective's default).")
    return out


def settings_problems(c: Any, spelled: dict | None = None) -> list[str]:
    """Every problem of the SAU and objective settings of `c` (a SAUConfig, or anything with its own fields as
    attributes and `objective_args` already holding the flat names' values), one line each. The one place these
    settings are checked: `SAUConfig` raises them, the recipe check lists them per grid point."""
    if problems := _float_problems(c):
        return problems  # nothing below compares a NaN
    out: list[str] = []
    if c.objective not in OBJECTIVES:
        return [f"objective={c.objective!r} is not known; choose one of {sorted(OBJECTIVES)}."]
    cls = OBJECTIVES[c.objective]
    params, built = _default_params(cls), True
    entries = c.objective_args.items() if isinstance(c.objective_args, dict) else [(None, c.objective_args)]
    for name, given in entries:  # each objective's `params` (the flat names' values included): once, here
        try:
            found = check_objective_args(c.objective_args if name is None else {name: given}, OBJECTIVES, spelled)
            params = found.get(c.objective, params)
        except ValueError as err:
            out.append(str(err))
            built = built and name != c.objective
    for name, allowed in CHOICES.items():
        value = getattr(c, name)
        if value not in allowed:
            out.append(f"{name}={value!r} is not allowed; choose one of {list(allowed)}.")
    if not (isinstance(c.sau_topk, int | float) and 0 < c.sau_topk <= 1):
        out.append(f"sau_topk={c.sau_topk!r} must be in (0, 1] (the paper uses 0.3).")
    if c.sau_alpha < 0:
        out.append(f"sau_alpha={c.sau_alpha!r} must be >= 0 (the paper uses 0.1).")
    out += _study_option_problems(c)
    for name in ("saliency_max_examples", "saliency_batch_size"):
        value = getattr(c, name)
        if value is not None and value < 1:
            out.append(f"{name}={value!r} must be a positive integer or None.")
    if c.retain_loss is not None and c.retain_loss not in cls.retain_losses:
        out.append(f"retain_loss={c.retain_loss!r} is not allowed; choose one of {list(cls.retain_losses)} "
                   f"for objective={c.objective!r} (or None for its default).")
    elif built:  # this objective's params with the run's other settings (PDU: retain_loss, ...)
        out += cls.check_config(params, c)
    if c.max_length < 2:
        out.append(f"max_length={c.max_length!r} must be at least 2.")
    if not isinstance(c.update_check_steps, int) or c.update_check_steps < 0:
        out.append(f"update_check_steps={c.update_check_steps!r} must be an integer >= 0 (0: no check).")
    return out


def _default_params(cls: type) -> Any:
    return cls.params() if isinstance(cls.params, type) else None


def _study_option_problems(c: Any) -> list[str]:
    out = []
    if not isinstance(c.saliency_retain_aware, bool):
        out.append(f"saliency_retain_aware={c.saliency_retain_aware!r} must be true or false.")
    if not (isinstance(c.saliency_retain_eps, int | float) and c.saliency_retain_eps > 0):
        out.append(f"saliency_retain_eps={c.saliency_retain_eps!r} must be a number > 0 (default 0.01).")
    if c.sau_topk_mass is not None:
        if isinstance(c.sau_topk_mass, bool) or not isinstance(c.sau_topk_mass, int | float) \
                or not 0 < c.sau_topk_mass <= 1:
            out.append(f"sau_topk_mass={c.sau_topk_mass!r} must be in (0, 1] (e.g. 0.5), or None for a fixed "
                       "sau_topk.")
    for name, value in (("sau_topk_mass", c.sau_topk_mass is not None), ("sau_moving_mask", c.sau_moving_mask != "off")):
        if value and c.sau and c.sau_topk_scope == "global":
            out.append(f"{name} selects per matrix or row; it does not combine with sau_topk_scope='global' (use "
                       "'matrix' or 'row').")
    return out


def _training_choices() -> dict[str, list[str]]:
    """TrainingArguments' settings whose values are an enum's (their allowed values read from transformers)."""
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    return {"optim": [e.value for e in OptimizerNames], "lr_scheduler_type": [e.value for e in SchedulerType]}


def choice_problems(values: dict) -> list[str]:
    """``key: 'x' is not ...; did you mean 'y'?`` for each value of `values` that is not one of its setting's
    allowed values (`CHOICES`, TrainingArguments' enums); other keys are left alone. The recipe check's one test
    of choices (the train sections' args, every trainer section's optim and lr_scheduler_type)."""
    import difflib

    out = []
    for key, value in values.items():
        allowed = CHOICES.get(key) or _training_choices().get(key)
        if allowed is None or value in allowed:
            continue
        match = difflib.get_close_matches(str(value), list(allowed), n=1, cutoff=0.5)
        hint = f"did you mean {match[0]!r}?" if match else f"valid values: {', '.join(allowed)}"
        out.append(f"{key}: {value!r} is not known; {hint}")
    return out


def field_default(name: str) -> Any:
    """The default of SAUConfig field `name` (its one owner: functions that take the same setting use it)."""
    f = {f.name: f for f in dataclasses.fields(SAUConfig)}[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def own_fields() -> dict[str, dataclasses.Field]:
    """SAUConfig's fields that TrainingArguments does not have."""
    inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
    return {f.name: f for f in dataclasses.fields(SAUConfig) if f.name not in inherited}


def setting_names() -> list[str]:
    """Every name SAUConfig takes: its fields (TrainingArguments' included) and the objectives' flat names."""
    return sorted({f.name for f in dataclasses.fields(SAUConfig)} | set(FLAT_NAMES))


def settings_view(values: dict) -> Any:
    """SAUConfig's values as attributes (its defaults, TrainingArguments' included, with `values` over them and the
    flat names in `objective_args`), without building a TrainingArguments (no device set-up): what the memory
    estimate reads a grid point's settings and builds its objective from. Not validated (`check_settings`)."""
    view = dataclasses.make_dataclass("SAUSettings", [])()  # a plain attribute holder
    for f in dataclasses.fields(SAUConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if default is not dataclasses.MISSING:
            setattr(view, f.name, default)
    flat = {k: v for k, v in values.items() if k in FLAT_NAMES}
    for k, v in values.items():
        if k not in FLAT_NAMES:
            setattr(view, k, v)
    view.objective_args, _ = merge_flat(getattr(view, "objective_args", {}), flat, OBJECTIVES)
    return view


def check_settings(values: dict) -> list[str]:
    """The problems of SAUConfig's own settings `values` (its own fields and flat names; TrainingArguments'
    fields are left to it), without building a SAUConfig: what the recipe check runs per grid point."""
    own = own_fields()
    flat = {k: v for k, v in values.items() if k in FLAT_NAMES}
    c = dataclasses.make_dataclass("Settings", [])()  # a plain attribute holder
    for name, f in own.items():
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        setattr(c, name, values.get(name, default))
    try:
        c.objective_args, spelled = merge_flat(c.objective_args, flat, OBJECTIVES)
    except ValueError as err:
        return [str(err)]
    return settings_problems(c, spelled)


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
            settings |= {k: getattr(self, k) for k in ("objective", *_SALIENCY_ALWAYS)}
            settings |= {k: getattr(self, k) for k in _SALIENCY_IF_SET
                         if getattr(self, k) != flat_field(OBJECTIVES, k).default}
            own = {k: v for k, v in (self.objective_args.get(self.objective) or {}).items()
                   if k not in _flat_fields_of(self.objective)}  # settings without a flat name (a plugin's)
            if own:
                settings["objective_args"] = {self.objective: own}
        cls = OBJECTIVES[self.objective]  # what else makes G and W for this objective (RMU: its trainable parameters)
        settings |= cls.state_settings(build_params(cls, (self.objective_args or {}).get(self.objective) or {}))
        return settings


def _flat_fields_of(objective: str) -> set[str]:
    """The fields of `objective`'s params that have a flat name."""
    return {f for targets in flat_names(OBJECTIVES).values() for obj, f in targets if obj == objective}


def _flat_property(name: str) -> property:
    """``config.npo_beta``: the value of that setting for the config's objective if it is one of the objectives
    the name sets, else for the first of them (as given in objective_args, else the field's default)."""

    def get(self):
        targets = flat_names(OBJECTIVES)[name]
        obj, key = next(((o, k) for o, k in targets if o == self.objective), targets[0])
        entry = self.objective_args.get(obj) if isinstance(self.objective_args, dict) else None
        return entry[key] if isinstance(entry, dict) and key in entry else flat_field(OBJECTIVES, name).default

    def set_(self, value):
        if value is UNSET:  # the dataclass's default, while it is being built
            return
        args = {k: dict(v) for k, v in self.objective_args.items() if isinstance(v, dict)}
        for obj, key in flat_names(OBJECTIVES)[name]:
            args.setdefault(obj, {})[key] = value
        check_objective_args(args, OBJECTIVES, {obj: {key: name} for obj, key in flat_names(OBJECTIVES)[name]})
        self.objective_args = args

    return property(get, set_, doc=flat_field(OBJECTIVES, name).metadata.get("help"))


for _name in FLAT_NAMES:
    setattr(SAUConfig, _name, _flat_property(_name))
del _name
