"""TOFU evaluation: pure metric functions, the batched evaluator and the results file."""

from .metrics import (
    MODEL_UTILITY_COMPONENTS,
    answer_token_stats,
    extraction_strength,
    forget_quality,
    harmonic_mean,
    log_truth_ratio,
    mean_nll,
    model_utility,
    normalised_probability,
    probability,
    rouge_l_recall,
    truth_ratio_forget,
    truth_ratio_retain,
)
from .results import (
    attach_forget_quality,
    build_results,
    forget_quality_from_results,
    load_results,
    save_results,
    settings_hash,
)
from .tofu import evaluate_tofu, greedy_generate, teacher_forced_stats

__all__ = [
    "MODEL_UTILITY_COMPONENTS",
    "answer_token_stats",
    "attach_forget_quality",
    "build_results",
    "evaluate_tofu",
    "extraction_strength",
    "forget_quality",
    "forget_quality_from_results",
    "greedy_generate",
    "harmonic_mean",
    "load_results",
    "log_truth_ratio",
    "mean_nll",
    "model_utility",
    "normalised_probability",
    "probability",
    "rouge_l_recall",
    "save_results",
    "settings_hash",
    "teacher_forced_stats",
    "truth_ratio_forget",
    "truth_ratio_retain",
]
