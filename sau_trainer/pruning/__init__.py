"""Pruning for Hugging Face causal LMs: Magnitude, Wanda (Sun et al. 2023) and SparseGPT
(Frantar and Alistarh 2023), unstructured or N:M, with a layer-by-layer calibration driver.

    result = prune_model(model, "wanda", sparsity=0.5, calibration=texts, tokenizer=tok)
    save_sparse_model(model, tok, "out/", result)

The math lives in pure tensor functions (`magnitude_mask`, `wanda_mask`, `sparsegpt_prune`); the
model walking in `calibration`; which matrices are prunable is defined once, in `sau_trainer.masks`.
"""

from .api import (
    SPARSITY_FILE,
    PruningResult,
    load_sparsity_metadata,
    measured_sparsity,
    prune_model,
    save_sparse_model,
)
from .calibration import CalibrationSet, prepare_calibration
from .magnitude import magnitude_mask
from .nm import Structure, parse_structure
from .perplexity import perplexity
from .registry import PRUNERS
from .sparsegpt import relative_reconstruction_error, sparsegpt_prune
from .textfiles import load_texts
from .wanda import wanda_mask, wanda_scores

__all__ = [
    "PRUNERS",
    "SPARSITY_FILE",
    "CalibrationSet",
    "PruningResult",
    "Structure",
    "load_sparsity_metadata",
    "load_texts",
    "magnitude_mask",
    "measured_sparsity",
    "parse_structure",
    "perplexity",
    "prepare_calibration",
    "prune_model",
    "relative_reconstruction_error",
    "save_sparse_model",
    "sparsegpt_prune",
    "wanda_mask",
    "wanda_scores",
]
