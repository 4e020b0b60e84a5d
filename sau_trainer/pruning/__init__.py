"""Pruning for Hugging Face causal LMs: Magnitude, Wanda (Sun et al. 2023) and SparseGPT
(Frantar and Alistarh 2023), unstructured or N:M, with a layer-by-layer calibration driver.

    result = prune_model(model, "wanda", sparsity=0.5, calibration=texts, tokenizer=tok)
    save_sparse_model(model, tok, "out/", result)

The math lives in pure tensor functions (`magnitude_mask`, `wanda_mask`, `sparsegpt_prune`); the
model walking in `calibration`; which matrices are prunable is defined once, in `sau_trainer.masks`.
"""

import sys
from types import ModuleType
from typing import Any

from ..lazy import lazy_exports

# Public name -> module, imported on first use: `sau-trainer prune --help` lists the options without torch.
_EXPORTS = {
    "CalibrationSet": "calibration",
    "PRUNERS": "registry",
    "PruningResult": "api",
    "SPARSITY_FILE": "api",
    "Structure": "nm",
    "load_sparsity_metadata": "api",
    "load_texts": "textfiles",
    "magnitude_mask": "magnitude",
    "measured_sparsity": "api",
    "parse_structure": "nm",
    "perplexity": "perplexity",
    "prepare_calibration": "calibration",
    "prune_model": "api",
    "relative_reconstruction_error": "sparsegpt",
    "save_sparse_model": "api",
    "sparsegpt_prune": "sparsegpt",
    "wanda_mask": "wanda",
    "wanda_scores": "wanda",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


class _Package(ModuleType):
    """Importing the submodule ``perplexity`` sets the package's attribute of that name to the module; the
    package exports the function of the same name, so the function is kept (as ``from .perplexity import
    perplexity`` in an eager ``__init__`` did)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, ModuleType) and _EXPORTS.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
