"""Moved (issue 25: a benchmark is one package): the TOFU evaluator to `sau_trainer.benchmarks.tofu.evaluation`. This path stays
and re-exports its names; new code imports from the new home."""

from __future__ import annotations

from ..benchmarks.tofu.evaluation import (
    PARAPHRASED_SETS,
    SET_NAMES,
    evaluate_tofu,
    greedy_generate,
    model_max_length,
    teacher_forced_stats,
)

__all__ = ["PARAPHRASED_SETS", "SET_NAMES", "evaluate_tofu", "greedy_generate", "model_max_length", "teacher_forced_stats"]
