"""Moved (issue 25: a benchmark is one package): WMDP and MMLU loading to `sau_trainer.benchmarks.wmdp.data`. This path stays and
re-exports its names; new code imports from the new home."""

from __future__ import annotations

from ..benchmarks.wmdp.data import (
    BIO_FORGET_HELP,
    BIO_FORGET_HUB_ID,
    CORPORA_HUB_ID,
    CORPUS_CONFIGS,
    DEFAULT_SUBSET,
    FOLDERS,
    MMLU_HUB_CONFIG,
    MMLU_HUB_ID,
    MMLU_SPLIT,
    N_CHOICES,
    QUESTION_COLUMNS,
    QUESTION_CONFIGS,
    SUBSETS,
    WMDP_HUB_ID,
    WMDP_SUBJECTS,
    default_splits,
    forget_split,
    is_question_split,
    load_hub_wmdp_split,
    load_local_wmdp_split,
    load_wmdp,
    local_candidates,
    parse_split,
    question_split,
    resolve_subset,
    retain_split,
    validate_wmdp_split,
)

__all__ = ["BIO_FORGET_HELP", "BIO_FORGET_HUB_ID", "CORPORA_HUB_ID", "CORPUS_CONFIGS", "DEFAULT_SUBSET", "FOLDERS",
           "MMLU_HUB_CONFIG", "MMLU_HUB_ID", "MMLU_SPLIT", "N_CHOICES", "QUESTION_COLUMNS", "QUESTION_CONFIGS", "SUBSETS",
           "WMDP_HUB_ID", "WMDP_SUBJECTS", "default_splits", "forget_split", "is_question_split", "load_hub_wmdp_split",
           "load_local_wmdp_split", "load_wmdp", "local_candidates", "parse_split", "question_split", "resolve_subset",
           "retain_split", "validate_wmdp_split"]
