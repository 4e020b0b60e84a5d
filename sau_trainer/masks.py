"""Moved (issue 24's layers): `sau_trainer.training.masks` (`SparsityMasks`, its file), `sau_trainer.core.prunable`
(which weights are prunable, `Layout`) and `sau_trainer.core.bits` (mask packing). This path stays (SPEC section 9:
``from sau_trainer.masks import SparsityMasks``) and re-exports their names; new code imports from the new homes."""

from .core.bits import pack_bool, unpack_bool
from .core.prunable import (
    PLAIN,
    Layout,
    PrunableWeight,
    check_trainable_weights,
    decoder_layers,
    language_model,
    layouts,
    prunable_modules,
    prunable_parameters,
    prunable_weights,
)
from .training.masks import (
    HANDFUL,
    HANDFUL_FRACTION,
    MASKS_FILE,
    LazyMasks,
    SparsityMasks,
    check_resume_masks,
)

__all__ = ["HANDFUL", "HANDFUL_FRACTION", "MASKS_FILE", "PLAIN", "Layout", "LazyMasks", "PrunableWeight",
           "SparsityMasks", "check_resume_masks", "check_trainable_weights", "decoder_layers", "language_model",
           "layouts", "pack_bool", "prunable_modules", "prunable_parameters", "prunable_weights", "unpack_bool"]
