"""Evaluation: pure metric functions, membership inference, the TOFU and MUSE evaluators, the results file."""

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
    exact_memorization,
    probability,
    rouge_l_f1,
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
from .mia import membership_inference, privleak, roc_auc
from .muse import evaluate_muse, knowmem_prompt
from .results import privleak_from_results, reference_metrics
from .tofu import evaluate_tofu, greedy_generate, teacher_forced_stats

__all__ = [
    "MODEL_UTILITY_COMPONENTS",
    "answer_token_stats",
    "attach_forget_quality",
    "build_results",
    "evaluate_muse",
    "evaluate_tofu",
    "exact_memorization",
    "extraction_strength",
    "forget_quality",
    "forget_quality_from_results",
    "greedy_generate",
    "harmonic_mean",
    "knowmem_prompt",
    "load_results",
    "log_truth_ratio",
    "mean_nll",
    "membership_inference",
    "model_utility",
    "normalised_probability",
    "privleak",
    "privleak_from_results",
    "probability",
    "reference_metrics",
    "roc_auc",
    "rouge_l_f1",
    "rouge_l_recall",
    "save_results",
    "settings_hash",
    "teacher_forced_stats",
    "truth_ratio_forget",
    "truth_ratio_retain",
]
