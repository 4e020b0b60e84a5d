"""Moved (issue 25: a benchmark is one package): TOFU loading to `sau_trainer.benchmarks.tofu.data`. This path stays and re-exports its
names (and the registry's `BENCHMARKS`, `load_benchmark`, as before); new code imports from the new home."""

from __future__ import annotations

from ..benchmarks.registry import BENCHMARKS, load_benchmark
from ..benchmarks.tofu.data import (
    FORGET_SPLITS,
    GENERAL_SPLITS,
    LOCAL_SUFFIXES,
    TOFU_HUB_ID,
    evaluation_splits,
    holdout_split,
    load_hub_split,
    load_local_split,
    load_tofu,
    required_columns,
    validate_split,
)

__all__ = ["BENCHMARKS", "FORGET_SPLITS", "GENERAL_SPLITS", "LOCAL_SUFFIXES", "TOFU_HUB_ID", "evaluation_splits",
           "holdout_split", "load_benchmark", "load_hub_split", "load_local_split", "load_tofu", "required_columns",
           "validate_split"]
