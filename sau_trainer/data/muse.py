"""Moved (issue 25: a benchmark is one package): MUSE loading and its text encodings to `sau_trainer.benchmarks.muse.data`. This path
stays and re-exports its names; new code imports from the new home."""

from __future__ import annotations

from ..benchmarks.muse.data import (
    CONFIG_COLUMNS,
    DEFAULT_SPLITS,
    EVALUATION_SPLITS,
    MUSE_HUB_IDS,
    SUBSETS,
    TRAINING_SPLITS,
    chunk_texts,
    encode_completion,
    load_hub_muse_split,
    load_local_muse_split,
    load_muse,
    local_candidates,
    parse_split,
    required_columns,
    resolve_subset,
    validate_muse_split,
)

__all__ = ["CONFIG_COLUMNS", "DEFAULT_SPLITS", "EVALUATION_SPLITS", "MUSE_HUB_IDS", "SUBSETS", "TRAINING_SPLITS",
           "chunk_texts", "encode_completion", "load_hub_muse_split", "load_local_muse_split", "load_muse",
           "local_candidates", "parse_split", "required_columns", "resolve_subset", "validate_muse_split"]
