"""Moved (issue 25: a benchmark is one package): the WMDP and MMLU scoring to `sau_trainer.benchmarks.wmdp.evaluation`. This path
stays and re-exports its names; new code imports from the new home."""

from __future__ import annotations

from ..benchmarks.wmdp.evaluation import (
    DESCRIPTION,
    LETTERS,
    SCORERS,
    TARGET_DELIMITER,
    accuracy,
    answer_probability,
    build_prompt,
    choice_loglikelihoods,
    encode_pair,
    evaluate_wmdp,
    lm_eval_loglikelihoods,
    predictions,
    question_block,
    score_split,
    subject_of,
)

__all__ = ["DESCRIPTION", "LETTERS", "SCORERS", "TARGET_DELIMITER", "accuracy", "answer_probability", "build_prompt",
           "choice_loglikelihoods", "encode_pair", "evaluate_wmdp", "lm_eval_loglikelihoods", "predictions",
           "question_block", "score_split", "subject_of"]
