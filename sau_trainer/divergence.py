"""Divergence: a non-finite loss or gradient norm stops training before that step is applied.

`TrainingDiverged` is the exception raised when it does; `SAUConfig.skip_nonfinite_steps` skips such steps
instead (the gradients are dropped, the optimizer does not step, a warning counts them).
"""

from __future__ import annotations

import math


def _fmt(value: float | None) -> str:
    if value is None:
        return "none yet"
    return f"{value:.6g}"


class TrainingDiverged(RuntimeError):
    """Training produced a non-finite loss or gradient norm; the step that would have applied it was not taken.

    Attributes:
        step: the optimizer step (1-based, as the Trainer counts them) that was refused.
        loss: the non-finite value that was found (the loss, or the gradient norm if the loss was finite).
        last_finite_loss: the last finite training loss seen before it (None if there was none).
        learning_rate: the learning rate of that step.
        what: ``"loss"`` or ``"gradient norm"``: which value was not finite.
    """

    def __init__(self, step: int, loss: float, last_finite_loss: float | None, learning_rate: float | None,
                 what: str = "loss"):
        self.step = int(step)
        self.loss = float(loss)
        self.last_finite_loss = None if last_finite_loss is None else float(last_finite_loss)
        self.learning_rate = None if learning_rate is None else float(learning_rate)
        self.what = what
        lr = "its value" if learning_rate is None else f"now {_fmt(learning_rate)}"
        super().__init__(
            f"Training diverged at optimizer step {self.step}: the {what} is {_fmt(loss)} (last finite loss: "
            f"{_fmt(last_finite_loss)}); the step was not applied and the weights are those of the step before. "
            f"Lower learning_rate ({lr}), or set SAUConfig.skip_nonfinite_steps=True to skip such steps.")

    def __reduce__(self):  # picklable (multi-process launchers send exceptions between processes)
        return (type(self), (self.step, self.loss, self.last_finite_loss, self.learning_rate, self.what))


def is_finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


__all__ = ["TrainingDiverged"]
