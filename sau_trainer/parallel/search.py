"""Moved: the exact threshold search over shards is `sau_trainer.core.topk.threshold_select`, the one owner of
the top-k by threshold (one process and sharded alike); a `backend.Backend` is the reductions it takes. This path
stays and re-exports it; new code imports from `sau_trainer.core.topk`."""

from ..core.topk import threshold_select

__all__ = ["threshold_select"]
