"""WGA, Weighted Gradient Ascent (Wang et al., ICLR 2025, "Rethinking LLM Unlearning Objectives: A Gradient
Perspective and Go Beyond", arXiv 2502.19301), with a retain term.

Gradient ascent on the forget answers in which each token's NLL is weighted by ``w_t = sg(p_t)^beta``:
tokens the model already gives a low probability (forgotten ones) stop pulling, so the ascent does not
run away on them. Formula and defaults as open-unlearning computes them (METHODS.md 1.7):
``L_forget = -(1/|A|) sum_{t in A} w_t * l_t`` over all supervised tokens ``A`` of the batch,
``L = gamma * L_forget + alpha * L_retain`` with beta 1, gamma 1, alpha 1 (retain NLL by default).
No reference model (open-unlearning builds one although the loss never uses it; this package does not).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Objective
from .losses import token_nll
from .params import param


def wga_weights(nll: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-token weight ``sg(p)^beta`` with ``p = exp(-nll)``, computed as ``exp(-beta * nll)`` (no gradient)."""
    return torch.exp(-beta * nll.detach())


def weighted_ascent_loss(nll: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``-(1/|A|) sum_{t in A} w_t * nll_t``: the token mean over every supervised token of the batch."""
    mask = mask.to(nll.dtype)
    return -(weights * nll * mask).sum() / mask.sum().clamp_min(1)


def wga_loss(nll: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """WGA's forget term from per-token NLLs ``[b, T-1]`` and their supervised mask."""
    return weighted_ascent_loss(nll, mask, wga_weights(nll, beta))


@dataclass
class WGAParams:
    beta: float = param(1.0, "Exponent beta of the token weight p^beta (>= 0).", flat="wga_beta")

    def __post_init__(self):
        if self.beta < 0:
            raise ValueError(f"beta={self.beta!r} must be >= 0.")


class WGA(Objective):
    name = "wga"
    label = "WGA"
    uses_retain = True
    params = WGAParams

    def forget_term(self, model, forget, ctx):
        logits = model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
        nll, mask = token_nll(logits, forget["labels"])
        loss = weighted_ascent_loss(nll, mask, wga_weights(nll, self.params.beta))
        mean_nll = (nll * mask).sum() / mask.sum().clamp_min(1)
        return loss, mean_nll
