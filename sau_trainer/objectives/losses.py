"""Pure loss functions on logits and labels (labels are -100 where not supervised)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.qa import IGNORE_INDEX


def sequence_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence NLL sum and supervised-token count (next-token shift applied), in fp32."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    nll = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX, reduction="none",
    ).view(shift_labels.shape)
    return nll.sum(dim=1), (shift_labels != IGNORE_INDEX).sum(dim=1)


def mean_token_nll(nll_sum: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Answer-token NLL averaged over every supervised token of the batch."""
    return nll_sum.sum() / count.sum().clamp_min(1)


def npo_loss(nll_sum: torch.Tensor, ref_nll_sum: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO (Zhang et al. 2024): ``-(2/beta) * mean log sigmoid(beta * (NLL_sum - NLL_sum_ref))``."""
    return -(2.0 / beta) * F.logsigmoid(beta * (nll_sum - ref_nll_sum)).mean()


def simnpo_loss(nll_mean: torch.Tensor, beta: float, delta: float) -> torch.Tensor:
    """SimNPO (Fan et al. 2024): ``-(2/beta) * mean log sigmoid(beta * (NLL_mean - delta))``, no reference."""
    return -(2.0 / beta) * F.logsigmoid(beta * (nll_mean - delta)).mean()


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``KL(p_ref || p)`` averaged over supervised next-token positions."""
    keep = labels[:, 1:] != IGNORE_INDEX
    logp = F.log_softmax(logits[:, :-1].float()[keep], dim=-1)
    ref_logp = F.log_softmax(ref_logits[:, :-1].float()[keep], dim=-1)
    return F.kl_div(logp, ref_logp, log_target=True, reduction="batchmean")


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL ``[b, T-1]`` (0 where not supervised) and the bool mask of supervised positions, in fp32."""
    shift_labels = labels[:, 1:]
    nll = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.size(-1)), shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX, reduction="none",
    ).view(shift_labels.shape)
    return nll, shift_labels != IGNORE_INDEX
