"""The saliency estimate's arithmetic: a diagonal Fisher estimate of how much each weight encodes the forget set.

``batch`` granularity: ``s = (1/B) sum_b (grad L_f(b))^2`` over the B forget batches, with ``L_f(b)``
the batch's mean answer NLL (so ``s`` depends on the batch size). ``example`` granularity:
``s = (1/N) sum_i (grad L_f(x_i))^2``, one backward per example. Each gradient is folded into
``s`` (fp32) as soon as it is accumulated, by a post-accumulate-grad hook, and then freed: the
pass needs 4 bytes per target parameter beyond a plain forward+backward. Across processes the
sums and counts are all-reduced, so every rank ends with the same ``s``. The model runs in train
mode (so gradient checkpointing stays on) with its dropout modules off. The model (weights,
grads, train/eval mode, requires_grad flags, hooks) and the RNG state are left as they were found.

This module is the arithmetic (splitting a batch into examples, folding a gradient in, the final mean); the pass
that runs the model and the backward is `sau_trainer.training.saliency.compute_saliency`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def split_examples(batch: dict[str, torch.Tensor]) -> Iterable[dict[str, torch.Tensor]]:
    """One-example batches with their padding removed (no padding, no attention-mask effects)."""
    for i in range(batch["input_ids"].shape[0]):
        keep = batch["attention_mask"][i].bool()
        yield {k: (v[i][keep] if v.dim() > 1 else v[i]).unsqueeze(0) for k, v in batch.items()}


def accumulate_(sums: dict[str, torch.Tensor], name: str, grad: torch.Tensor) -> None:
    """``sums[name] += grad * grad`` in fp32, in one fused pass (a bf16 or fp16 gradient is upcast inside the op,
    not copied; its square is exact in fp32, so the sum is the one ``s + g.float().square()`` gives). A missing
    entry starts at zero with the gradient's shape (a sharded gradient's shape is known only when it arrives)."""
    if name not in sums:
        sums[name] = torch.zeros(grad.shape, dtype=torch.float32, device=grad.device)
    sums[name].addcmul_(grad, grad)


def mean_(sums: dict[str, torch.Tensor], count: float, loss_scale: float = 1.0) -> None:
    """In place: each sum of squared gradients divided by the number of backward passes `count` and by
    ``loss_scale ** 2`` (the loss was multiplied by `loss_scale` before backward). No example: a ValueError."""
    if count == 0:
        raise ValueError("The saliency pass saw no forget example: the forget set is empty.")
    scale = 1.0 / (count * loss_scale**2)
    for s in sums.values():
        s.mul_(scale)
