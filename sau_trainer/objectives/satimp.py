"""SatImp (Yang et al., ICML 2025, "Exploring Criteria of Loss Reweighting to Enhance LLM Unlearning",
arXiv 2505.11953), with a retain term.

Token-weighted gradient ascent with ``w_t = sg(p_t)^beta1 * sg(1 - p_t)^beta2``: the weight peaks at
``p = beta1 / (beta1 + beta2)`` (5/6 by default), so the ascent concentrates on tokens that are likely but
not yet certain, and fades both on forgotten tokens and on fully memorised ones (``p -> 1``: on a model
that recites its forget set perfectly, the forget term starts near zero and unlearning starts slowly).
``L_forget = -(1/|A|) sum_{t in A} w_t * l_t`` (token mean over the batch), ``L = gamma * L_forget +
alpha * L_retain`` (METHODS.md 1.6).

Quirk reproduced: open-unlearning's config (``configs/trainer/SatImp.yaml``) sets gamma = 0.1 and alpha = 1.0,
while its class defaults and the paper weight forget:retain 10:1 (gamma = 1.0, alpha = 0.1); OU runs use the
config, so the defaults here are gamma 0.1, alpha 1.0. The paper's weighting is
``forget_weight=1.0, retain_weight=0.1``. No reference model (OU builds one that the loss never uses).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Objective
from .losses import token_nll
from .params import param
from .wga import weighted_ascent_loss


def satimp_weights(nll: torch.Tensor, beta1: float, beta2: float) -> torch.Tensor:
    """Per-token weight ``sg(p)^beta1 * sg(1 - p)^beta2``, ``p = exp(-nll)``; ``1 - p`` as ``-expm1(-nll)``."""
    nll = nll.detach()
    return torch.exp(-beta1 * nll) * (-torch.expm1(-nll)).pow(beta2)


def satimp_loss(nll: torch.Tensor, mask: torch.Tensor, beta1: float, beta2: float) -> torch.Tensor:
    """SatImp's forget term from per-token NLLs ``[b, T-1]`` and their supervised mask."""
    return weighted_ascent_loss(nll, mask, satimp_weights(nll, beta1, beta2))


@dataclass
class SatImpParams:
    beta1: float = param(5.0, "Exponent beta1 of the token weight p^beta1 (1-p)^beta2 (>= 0).", flat="satimp_beta1")
    beta2: float = param(1.0, "Exponent beta2 of the token weight p^beta1 (1-p)^beta2 (>= 0).", flat="satimp_beta2")

    def __post_init__(self):
        for name in ("beta1", "beta2"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be >= 0.")


class SatImp(Objective):
    params = SatImpParams
    name = "satimp"
    label = "SatImp"
    uses_retain = True
    default_forget_weight = 0.1  # OU's yaml (quirk: the paper and OU's class default say 1.0)
    default_retain_weight = 1.0  # OU's yaml (the paper: 0.1)

    def forget_term(self, model, forget, ctx):
        logits = model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
        nll, mask = token_nll(logits, forget["labels"])
        weights = satimp_weights(nll, self.params.beta1, self.params.beta2)
        mean_nll = (nll * mask).sum() / mask.sum().clamp_min(1)
        return weighted_ascent_loss(nll, mask, weights), mean_nll
