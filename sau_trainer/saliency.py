"""Moved (issue 24's layers): the saliency pass to `sau_trainer.training.saliency`, its arithmetic to
`sau_trainer.core.saliency`. This path stays (``from sau_trainer.saliency import compute_saliency``) and re-exports;
new code imports from the new homes."""

from .training.saliency import LossFn, compute_saliency, require_input_grads_if_reentrant

__all__ = ["LossFn", "compute_saliency", "require_input_grads_if_reentrant"]
