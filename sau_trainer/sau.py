"""Moved (issue 24's layers): the pure selection and redistribution to `sau_trainer.core.selection`, the SAU state
(`SAUState`, its file, and `build_sau_state`, the one build for every backend) to `sau_trainer.training.state`.
This path stays and re-exports their names; new code imports from the new homes."""

from .core.selection import (
    PARAM_W_CAP,
    REDISTRIBUTIONS,
    SCOPES,
    _check_saliency,
    _selection_rows,
    _stable_desc_order,
    apply_sau_,
    pruned_selected_ratio,
    redistribution_weights,
    retain_aware_score,
    select_mass,
    select_topk,
    select_topk_global,
)
from .core.topk import _fraction, topk_count
from .training.state import STATE_FILE, SAUState, _selected_range, build_sau_state

__all__ = ["PARAM_W_CAP", "REDISTRIBUTIONS", "SCOPES", "STATE_FILE", "SAUState", "_check_saliency", "_fraction",
           "_selected_range", "_selection_rows", "_stable_desc_order", "apply_sau_", "build_sau_state",
           "pruned_selected_ratio", "redistribution_weights", "retain_aware_score", "select_mass", "select_topk",
           "select_topk_global", "topk_count"]
