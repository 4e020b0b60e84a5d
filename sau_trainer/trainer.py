"""Moved (issue 24's layers): `SAUTrainer` to `sau_trainer.training.trainer`. This path stays and re-exports it;
new code imports from the new home (or `from sau_trainer import SAUTrainer`)."""

from .training.trainer import SAUTrainer

__all__ = ["SAUTrainer"]
