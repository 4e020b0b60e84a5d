"""Compensated optimizers: the optimizers whose updates reach bf16/fp16 weights, and how to tell one.

`COMPENSATED_OPTIMIZERS` is the registry of the optimizers `SAUConfig.compensated_optimizer` names (torch-optimi's
AdamW with Kahan summation; torchao's AdamW and 8-bit AdamW with bf16 stochastic rounding: methods and credits in
`sau_trainer.training.precision`); `compensation_of` reads what an optimizer instance (or a class with its keyword
arguments) does for low-precision weights, without importing the optional packages.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

KAHAN, STOCHASTIC_ROUNDING = "kahan", "stochastic_rounding"


@dataclass(frozen=True)
class CompensatedOptimizer:
    """An optimizer whose updates reach low-precision weights: where it lives and what it costs."""

    name: str
    description: str
    method: str  # KAHAN or STOCHASTIC_ROUNDING
    dtypes: tuple[torch.dtype, ...]  # the weight dtypes it compensates
    module: str  # importable module
    attribute: str  # class in that module
    pip: str  # what to install
    kwargs: Callable[[Any], dict]  # optimizer keyword arguments from TrainingArguments
    state_bytes: float  # optimizer state per parameter (measured by benchmarks/precision.py; the memory estimate's)
    state_note: str  # what those bytes hold

    def load(self) -> type:
        """The optimizer class, or an ImportError that says what to install."""
        try:
            module = importlib.import_module(self.module)
        except ImportError as err:
            raise ImportError(
                f"compensated_optimizer={self.name!r} needs {self.pip} ({err}). Install it with "
                f"`pip install 'sau-trainer[precision]'` (or `pip install {self.pip}`), or choose "
                "low_precision_weights='upcast' (fp32 master weights, no extra dependency)."
            ) from None
        return getattr(module, self.attribute)


def _adam_kwargs(args) -> dict:
    return dict(lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
                weight_decay=args.weight_decay)


COMPENSATED_OPTIMIZERS: dict[str, CompensatedOptimizer] = {
    "kahan_adamw": CompensatedOptimizer(
        "kahan_adamw", "torch-optimi AdamW with Kahan summation (bf16/fp16 weights, states in the weight dtype)",
        KAHAN, (torch.bfloat16, torch.float16), "optimi", "AdamW", "torch-optimi>=0.3",
        lambda args: {**_adam_kwargs(args), "kahan_sum": True}, 6.0, "bf16 exp_avg, exp_avg_sq, Kahan buffer"),
    "sr_adamw": CompensatedOptimizer(
        "sr_adamw", "torchao AdamW with bf16 stochastic rounding (states in the weight dtype)",
        STOCHASTIC_ROUNDING, (torch.bfloat16,), "torchao.optim", "_AdamW", "torchao>=0.18",
        lambda args: {**_adam_kwargs(args), "bf16_stochastic_round": True}, 4.0, "bf16 exp_avg, exp_avg_sq"),
    "sr_adamw8bit": CompensatedOptimizer(
        "sr_adamw8bit", "torchao 8-bit AdamW (blockwise-quantised states) with bf16 stochastic rounding",
        STOCHASTIC_ROUNDING, (torch.bfloat16,), "torchao.optim", "AdamW8bit", "torchao>=0.18",
        lambda args: {**_adam_kwargs(args), "bf16_stochastic_round": True},
        2.03, "8-bit exp_avg, exp_avg_sq, an fp32 scale per 256 entries"),
}
OPTIMIZER_CHOICES = ("none", *COMPENSATED_OPTIMIZERS)


def compensated_optimizer_cls_and_kwargs(name: str, args) -> tuple[type, dict]:
    """``(cls, kwargs)`` for `Trainer(optimizer_cls_and_kwargs=...)` (the Trainer adds the param groups)."""
    if name not in COMPENSATED_OPTIMIZERS:
        raise ValueError(f"compensated_optimizer={name!r} is not known; choose one of {list(OPTIMIZER_CHOICES)}.")
    spec = COMPENSATED_OPTIMIZERS[name]
    return spec.load(), spec.kwargs(args)


@dataclass(frozen=True)
class Compensation:
    """How an optimizer treats low-precision weights: ``method`` None means plain round-to-nearest."""

    method: str | None = None
    dtypes: tuple[torch.dtype, ...] = ()
    source: str = "optimizer"

    def covers(self, dtype: torch.dtype) -> bool:
        return self.method is not None and dtype in self.dtypes


def _is_instance_of(obj_or_cls: Any, module: str, attribute: str) -> bool:
    """isinstance / issubclass against a class of an optional package, without importing it."""
    mod = sys.modules.get(module)
    cls = getattr(mod, attribute, None) if mod is not None else None
    if cls is None:
        return False
    return issubclass(obj_or_cls, cls) if isinstance(obj_or_cls, type) else isinstance(obj_or_cls, cls)


def unwrap_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside accelerate's `AcceleratedOptimizer` (and similar wrappers)."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


def compensation_of(optimizer: Any = None, cls: type | None = None, kwargs: Mapping | None = None) -> Compensation:
    """What an optimizer instance (or a class with its keyword arguments) does for bf16/fp16 weights.

    Recognised: torch-optimi optimizers with Kahan summation (``kahan_sum`` True, or None: optimi then
    applies it to low-precision weights by itself) and torchao's Adam optimizers with
    ``bf16_stochastic_round=True``. Anything else rounds to nearest (torch, bitsandbytes, apex, ...).
    """
    if optimizer is not None:
        optimizer = unwrap_optimizer(optimizer)
        kahan = [g.get("kahan_sum") for g in getattr(optimizer, "param_groups", [])]
        if _is_instance_of(optimizer, "optimi.optimizer", "OptimiOptimizer") and any(k is not False for k in kahan):
            return Compensation(KAHAN, (torch.bfloat16, torch.float16), type(optimizer).__name__)
        if (_is_instance_of(optimizer, "torchao.optim.adam", "_AdamBase")
                and getattr(optimizer, "bf16_stochastic_round", False)):
            return Compensation(STOCHASTIC_ROUNDING, (torch.bfloat16,), type(optimizer).__name__)
        return Compensation(source=type(optimizer).__name__)
    if cls is not None:
        kwargs = dict(kwargs or {})
        if _is_instance_of(cls, "optimi.optimizer", "OptimiOptimizer") and kwargs.get("kahan_sum", None) is not False:
            return Compensation(KAHAN, (torch.bfloat16, torch.float16), cls.__name__)
        if _is_instance_of(cls, "torchao.optim.adam", "_AdamBase") and kwargs.get("bf16_stochastic_round"):
            return Compensation(STOCHASTIC_ROUNDING, (torch.bfloat16,), cls.__name__)
        return Compensation(source=cls.__name__)
    return Compensation()


def compensation_buffer(optimizer: Any, param: torch.Tensor) -> torch.Tensor | None:
    """The Kahan buffer an optimizer keeps for `param` (torch-optimi: ``kahan_comp``), or None."""
    state = getattr(unwrap_optimizer(optimizer), "state", None)
    if not state or param not in state:
        return None
    buf = state[param].get("kahan_comp")
    return buf if isinstance(buf, torch.Tensor) and buf.shape == param.shape else None
