"""Divergence: a non-finite loss or gradient norm stops training before that step is applied.

`TrainingDiverged` is the exception raised when it does; `SAUConfig.skip_nonfinite_steps` skips such steps
instead (the gradients are dropped, the optimizer does not step, a warning counts them).

Why before the step: a non-finite gradient norm makes the clipping coefficient non-finite, and ``NaN * 0`` is NaN,
so a step applied with it writes NaN into every entry, the pruned ones included (and into the optimizer's
moments, for good). `DivergenceGuard` decides once per optimizer step, after gradient accumulation and the
gradient norm, from two numbers already on the device: the step's loss (the sum of its micro-batch losses, kept
on the device) and the gradient norm the Trainer computed (or one computed here). Deciding costs one read to the
host per optimizer step, never one per micro-batch; with several processes the two numbers are summed over the
processes first (one small all-reduce), so every rank takes the same decision (the gradient norm is already
reduced; the loss is each rank's own).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import torch

logger = logging.getLogger("sau_trainer.divergence")  # its name before the move: users and tests set its level


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


def _full(norm: Any) -> Any:
    """A DTensor norm (FSDP2) as the full value (a collective: every rank calls it)."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def local_grad_norm(params: Iterable[torch.nn.Parameter]) -> torch.Tensor | None:
    """The 2-norm of the local gradients (each rank's own shards), one fused pass; None without gradients."""
    grads = [p.grad for p in params if p.grad is not None]
    grads = [g.to_local() if hasattr(g, "to_local") else g for g in grads]
    grads = [g for g in grads if g.numel()]
    if not grads:
        return None
    device = grads[0].device
    norms = [n.to(device=device, dtype=torch.float32) for n in torch._foreach_norm(grads)]
    return torch.linalg.vector_norm(torch.stack(norms))


class DivergenceGuard:
    """Once per optimizer step, before the step: is the step's loss finite, and its gradient norm?

    `add_loss` after every micro-batch (kept on the device), `note_grad_norm` when the Trainer has the step's
    norm, then `check` before the optimizer steps: True lets the step go on; with ``skip=True`` a non-finite step
    drops its gradients (``grad = None``: torch optimizers then leave those parameters and their state untouched)
    and returns False; else `TrainingDiverged` is raised.
    """

    def __init__(self, skip: bool = False):
        self.skip = bool(skip)
        self.skipped = 0  # steps skipped so far
        self.last_finite_loss: float | None = None
        self._loss: torch.Tensor | None = None
        self._norm: Any = None

    def add_loss(self, loss: Any) -> None:
        if not torch.is_tensor(loss):
            return
        loss = loss.detach().float().sum()
        self._loss = loss if self._loss is None else self._loss + loss

    def note_grad_norm(self, norm: Any) -> None:
        self._norm = norm

    def check(self, step: int, learning_rate: float | None, params: Iterable[torch.nn.Parameter],
              world_size: int = 1) -> bool:
        """Decide for optimizer step `step` (1-based); `params`: the parameters whose gradients the step applies."""
        params = list(params)
        loss, norm = self._loss, _full(self._norm)
        self._loss, self._norm = None, None
        if norm is None:
            norm = local_grad_norm(params)  # each rank's own: the all-reduce below makes the decision common
        device = loss.device if loss is not None else (norm.device if torch.is_tensor(norm) else None)
        if device is None:
            device = next((p.grad.device for p in params if p.grad is not None), torch.device("cpu"))
        values = torch.stack([torch.as_tensor(0.0 if v is None else v, dtype=torch.float32, device=device)
                              for v in (loss, norm)])
        if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(values)  # NaN and inf survive a sum: any rank's shows on every rank
            values = values / world_size
        loss_value, norm_value = values.tolist()  # the one read to the host per optimizer step
        if loss is not None and math.isfinite(loss_value):
            self.last_finite_loss = loss_value
        if math.isfinite(loss_value) and math.isfinite(norm_value):
            return True
        what, value = ("loss", loss_value) if not math.isfinite(loss_value) else ("gradient norm", norm_value)
        if not self.skip:
            raise TrainingDiverged(step, value, self.last_finite_loss, learning_rate, what)
        for p in params:
            p.grad = None
        self.skipped += 1
        logger.warning("Skipped optimizer step %d: the %s is %s (skip_nonfinite_steps=True; learning_rate %s); "
                       "%d step(s) skipped so far.", step, what, _fmt(value), _fmt(learning_rate), self.skipped)
        return False


class DivergenceChecks:
    """Trainer mixin (`training.sparsity.SparsityPreserving` is one): the Trainer's side of `DivergenceGuard`. Expects
    ``self._divergence`` (a `DivergenceGuard`) and sets ``self._step_skipped``."""

    def _get_grad_norm(self, model, grad_norm=None):
        """The Trainer's gradient norm of the step (transformers >= 5; older ones: the guard computes it)."""
        norm = super()._get_grad_norm(model, grad_norm)
        self._divergence.note_grad_norm(norm)
        return norm

    def _step_is_finite(self) -> bool:
        """Before each optimizer step: True if its loss and gradient norm are finite. Else `TrainingDiverged` is
        raised (nothing applied), or, with ``skip_nonfinite_steps``, the gradients are dropped and False returned."""
        try:
            lr = self._get_learning_rate()
        except Exception:  # no scheduler yet (a Trainer subclass stepping on its own)
            lr = next((g.get("lr") for g in getattr(self.optimizer, "param_groups", [])), None)
        ok = self._divergence.check(self.state.global_step + 1, lr, self.model.parameters(), self.args.world_size)
        self._step_skipped = not ok
        return ok


__all__ = ["TrainingDiverged", "DivergenceGuard", "DivergenceChecks", "local_grad_norm"]
