"""Moved (issue 24's layers): the `SparsityPreserving` mixin to `sau_trainer.training.sparsity` (its FSDP2/DeepSpeed
passes to `training.parallel_steps`, update mode to `training.update_mode`), the checks before training to
`training.sparsity_setup`, `sparsity_preserving` and `compute_sau_state` to `training.any_trainer`. This path stays
and re-exports their names; new code imports from the new homes."""

from .training.any_trainer import compute_sau_state, sparsity_preserving
from .training.parallel_steps import UPDATE_MODE_UNDER_ZERO
from .training.sparsity import SparsityCallback, SparsityPreserving
from .training.sparsity_setup import (
    ZERO_KEEPING_OPTIMIZERS,
    optimizer_keeps_zeros,
    resolve_sparsity_masks,
    zero_pruned_entries,
)
from .training.state import STATE_FILE

__all__ = ["SparsityPreserving", "SparsityCallback", "sparsity_preserving", "compute_sau_state", "optimizer_keeps_zeros",
           "ZERO_KEEPING_OPTIMIZERS", "resolve_sparsity_masks", "zero_pruned_entries", "STATE_FILE",
           "UPDATE_MODE_UNDER_ZERO"]
