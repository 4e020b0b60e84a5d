"""Moved (issue 24's layers): the projections to `sau_trainer.core.projection`, `MovingMask` to
`sau_trainer.training.moving_mask`. This path stays and re-exports their names; new code imports from the new homes."""

from .core.projection import NM_GROUPS, UNITS, nm_pattern, project_nm, project_topk, unit_counts
from .training.moving_mask import MovingMask

__all__ = ["NM_GROUPS", "UNITS", "MovingMask", "nm_pattern", "project_nm", "project_topk", "unit_counts"]
