"""Moved (issue 24's layers) to `sau_trainer.training.divergence`. This path stays (``from sau_trainer import
TrainingDiverged``) and re-exports its names; new code imports from the new home."""

from .training.divergence import DivergenceChecks, DivergenceGuard, TrainingDiverged, local_grad_norm

__all__ = ["TrainingDiverged", "DivergenceGuard", "DivergenceChecks", "local_grad_norm"]
