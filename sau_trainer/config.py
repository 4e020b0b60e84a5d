"""`SAUConfig`: `TrainingArguments` plus the SAU and objective settings, validated at construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from .objectives import OBJECTIVES

CHOICES: dict[str, tuple[str, ...]] = {
    "sau_topk_scope": ("matrix", "row", "global"),
    "sau_redistribution": ("matrix", "row", "param", "none"),
    "sau_redistribution_target": ("grad", "update"),
    "sau_dense_params": ("train", "freeze", "topk"),
    "saliency_loss": ("forget_nll", "objective"),
    "saliency_granularity": ("batch", "example"),
    "retain_loss": ("nll", "kl"),
}

# The settings that make G and W; a checkpoint's SAU state must have been made with the same ones.
SAU_SETTING_FIELDS = (
    "sau_topk", "sau_alpha", "sau_topk_scope", "sau_redistribution", "sau_dense_params", "saliency_loss",
    "saliency_granularity", "saliency_max_examples", "saliency_batch_size",
)


@dataclass
class SAUConfig(TrainingArguments):
    """Training arguments for `SAUTrainer`. Every `TrainingArguments` field works as usual."""

    objective: str = field(
        default="graddiff", metadata={"help": f"Unlearning objective, one of: {', '.join(OBJECTIVES)}."}
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
    forget_weight: float | None = field(
        default=None, metadata={"help": "gamma, weight of the forget term (None: the objective's default)."}
    )
    retain_weight: float | None = field(
        default=None, metadata={"help": "alpha of the objective, weight of the retain term (None: its default)."}
    )
    retain_loss: str = field(
        default="nll", metadata={"help": "Retain term: nll, or kl to the frozen starting model (built only then)."}
    )
    npo_beta: float = field(default=0.1, metadata={"help": "beta of NPO."})
    simnpo_beta: float = field(default=4.5, metadata={"help": "beta of SimNPO."})
    simnpo_delta: float = field(default=0.0, metadata={"help": "delta (reward margin) of SimNPO."})
    max_length: int = field(default=512, metadata={"help": "Tokenised rows are truncated to this many tokens."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: SAUTrainer tokenises its own forget/retain rows."}
    )

    def __post_init__(self):
        self._validate_sau_fields()
        super().__post_init__()

    def _validate_sau_fields(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective={self.objective!r} is not known; choose one of {sorted(OBJECTIVES)}.")
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not allowed; choose one of {list(allowed)}.")
        if not (isinstance(self.sau_topk, (int, float)) and 0 < self.sau_topk <= 1):
            raise ValueError(f"sau_topk={self.sau_topk!r} must be in (0, 1] (the paper uses 0.3).")
        if self.sau_alpha < 0:
            raise ValueError(f"sau_alpha={self.sau_alpha!r} must be >= 0 (the paper uses 0.1).")
        for name in ("saliency_max_examples", "saliency_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer or None.")
        for name in ("npo_beta", "simnpo_beta"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be > 0.")
        if self.max_length < 2:
            raise ValueError(f"max_length={self.max_length!r} must be at least 2.")

    def sau_settings(self) -> dict:
        """The settings that determine G and W (saved beside them in checkpoints)."""
        settings = {name: getattr(self, name) for name in SAU_SETTING_FIELDS}
        settings["saliency_batch_size"] = self.saliency_batch_size or self.per_device_train_batch_size
        if self.saliency_loss == "objective":  # then the objective's forget term shapes the saliency too
            settings |= {k: getattr(self, k) for k in ("objective", "npo_beta", "simnpo_beta", "simnpo_delta")}
        return settings
