"""Evaluation: the metric code every benchmark shares (pure metric functions, membership inference, the results
file, compat modes, generation). It imports no benchmark package; each benchmark's evaluator lives in its package
under `sau_trainer.benchmarks` (``evaluation.tofu``, ``.muse``, ``.wmdp`` re-export them, as the names below)."""


from ..lazy import lazy_exports

# Public name -> module, imported on first use: `sau-trainer eval --help` lists the options without torch.
_EXPORTS = {
    "COMPAT_MODES": "compat",
    "DEFINITIONS_VERSION": "compat",
    "MODEL_UTILITY_COMPONENTS": "metrics",
    "answer_token_stats": "metrics",
    "attach_forget_quality": "results",
    "build_results": "results",
    "definitions_label": "compat",
    "evaluate_muse": "muse",
    "evaluate_tofu": "tofu",
    "exact_memorization": "metrics",
    "extraction_strength": "metrics",
    "forget_quality": "metrics",
    "forget_quality_from_results": "results",
    "forget_quality_ou": "metrics",
    "greedy_generate": "tofu",
    "harmonic_mean": "metrics",
    "knowmem_prompt": "muse",
    "load_results": "results",
    "log_truth_ratio": "metrics",
    "mean_nll": "metrics",
    "membership_inference": "mia",
    "model_utility": "metrics",
    "normalised_probability": "metrics",
    "privleak": "mia",
    "privleak_from_results": "results",
    "probability": "metrics",
    "reference_metrics": "results",
    "roc_auc": "mia",
    "rouge_l_f1": "metrics",
    "rouge_l_recall": "metrics",
    "rouge_scores": "metrics",
    "save_results": "results",
    "settings_hash": "results",
    "teacher_forced_stats": "tofu",
    "truth_ratio_forget": "metrics",
    "truth_ratio_ou": "metrics",
    "truth_ratio_prob_mean": "metrics",
    "truth_ratio_retain": "metrics",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
