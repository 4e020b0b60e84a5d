"""Moved (issue 25: a benchmark is one package): to `sau_trainer.benchmarks.muse.subsets`. This path stays and re-exports its
names; new code imports from the new home."""

from __future__ import annotations

from ..benchmarks.muse.subsets import (
    BOOKS_WORDS,
    FOLDER_NAME,
    MIN_BOOKS_ROWS,
    MIN_BOOKS_SHARE,
    NEWS_ONLY_CONFIGS,
    check_subset,
    subset_evidence,
)

__all__ = ["BOOKS_WORDS", "FOLDER_NAME", "MIN_BOOKS_ROWS", "MIN_BOOKS_SHARE", "NEWS_ONLY_CONFIGS", "check_subset",
           "subset_evidence"]
