"""Moved (issue 24's layers): `SaliencyCallback` and the console callbacks to `sau_trainer.training.callbacks`. This
path stays and re-exports their names; new code imports from the new home."""

from .training.callbacks import SaliencyCallback, console_logs, quiet_console

__all__ = ["SaliencyCallback", "console_logs", "quiet_console"]
