"""sau-trainer: Sparsity-Aware Unlearning for pruned LLMs, as a Hugging Face Trainer extension."""

import logging as _logging
from importlib import import_module
from typing import Any

# bitsandbytes (imported by transformers' Trainer) warns at import, on CPUs with AVX512-BF16, that an optional
# 4-bit kernel package is missing; this package never uses 4-bit kernels, so that line is kept out of its
# output, unless the user set that logger's level.
if _logging.getLogger("bitsandbytes.backends.cpu.ops").level == _logging.NOTSET:
    _logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)


class _DropMessage(_logging.Filter):
    """Drops one import-time line of a dependency (its logger sets its own level, so a level cannot)."""

    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: _logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


# DeepSpeed, when installed (transformers imports it), says on every CPU-only start that it fell back to the CPU.
_logging.getLogger("DeepSpeed").addFilter(_DropMessage("Setting accelerator to CPU"))
# transformers imports the `kernels` package (its Hub kernels), which says on every offline start that it skipped
# a publisher check of a kernel repository; this package loads no Hub kernel, so that line is not its output.
_logging.getLogger("kernels._internals.hf_hub").addFilter(_DropMessage("Skipping publisher trust check"))

__version__ = "0.1.0"

# Public name -> module; imported on first use so `sau-trainer --help` and `import sau_trainer` stay fast.
_EXPORTS = {
    "SAUConfig": "config",
    "SAUTrainer": "training.trainer",
    "TrainingDiverged": "training.divergence",
    "SaliencyCallback": "training.callbacks",
    "UnlearningEvaluationCallback": "training.unlearning_eval",
    "compute_saliency": "training.saliency",
    "SAUState": "training.state",
    "build_sau_state": "training.state",
    "select_topk": "core.selection",
    "select_topk_global": "core.selection",
    "redistribution_weights": "core.selection",
    "SparsityMasks": "training.masks",
    "prunable_parameters": "core.prunable",
    "SparsityPreserving": "training.sparsity",
    "sparsity_preserving": "training.any_trainer",
    "compute_sau_state": "training.any_trainer",
    "OBJECTIVES": "objectives",
    "register_objective": "plugins",
    "register_pruner": "plugins",
    "register_benchmark": "plugins",
    "finetune": "training.finetuning",
    "build_llama": "modeling",
    "train_tokenizer": "data.tokenizer",
    "prune_model": "pruning",
    "save_sparse_model": "pruning",
    "evaluate_tofu": "evaluation",
    "evaluate_muse": "evaluation",
    "membership_inference": "evaluation",
    "BENCHMARKS": "data",
    "generate_muse_benchmark": "data",
    "generate_benchmark": "data",
    "load_benchmark": "data",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'sau_trainer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
