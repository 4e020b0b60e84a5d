"""Moved (issue 24's layers): plain finetuning is Trainer glue, `sau_trainer.training.finetuning`. This path stays
(SPEC section 9: ``from sau_trainer import finetune``; recipes and tests import it from here) and re-exports its
names; new code imports from the new home."""

from .training.finetuning import finetune, pin_memory_default

__all__ = ["finetune", "pin_memory_default"]
