"""Moved (issue 25: a benchmark is one package): the MUSE evaluation to `sau_trainer.benchmarks.muse.evaluation`. This path stays
and re-exports its names; new code imports from the new home."""

from __future__ import annotations

from ..benchmarks.muse.evaluation import (
    KNOWMEM_MAX_NEW_TOKENS,
    KNOWMEM_MAX_PROMPT_TOKENS,
    KNOWMEM_STOP_STRINGS,
    PRIVLEAK_MAX_TOKENS,
    REAL_VERBMEM_PROMPT_TOKENS,
    SCORED_SPLITS,
    VERBMEM_MAX_NEW_TOKENS,
    VERBMEM_MAX_TOKENS,
    MuseInputError,
    check_recipe,
    check_room,
    encode_generation_prompt,
    encode_privleak_texts,
    evaluate_muse,
    knowmem_prompt,
    verbmem_reference,
)

__all__ = ["KNOWMEM_MAX_NEW_TOKENS", "KNOWMEM_MAX_PROMPT_TOKENS", "KNOWMEM_STOP_STRINGS", "MuseInputError",
           "PRIVLEAK_MAX_TOKENS", "REAL_VERBMEM_PROMPT_TOKENS", "SCORED_SPLITS", "VERBMEM_MAX_NEW_TOKENS",
           "VERBMEM_MAX_TOKENS", "check_recipe", "check_room", "encode_generation_prompt", "encode_privleak_texts",
           "evaluate_muse", "knowmem_prompt", "verbmem_reference"]
