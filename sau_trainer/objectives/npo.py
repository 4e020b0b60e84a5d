"""NPO (Zhang et al. 2024, "Negative Preference Optimization"), with a retain term.

The reference is the model before unlearning; its forget-set NLLs are computed once before
training (`needs_reference_nll`), so no reference model stays in memory.
"""

from dataclasses import dataclass

from .base import Objective, forward_nll
from .losses import mean_token_nll, npo_loss
from .params import param


@dataclass
class NPOParams:
    beta: float = param(0.1, "beta of NPO (> 0).", flat="npo_beta")

    def __post_init__(self):
        if not self.beta > 0:
            raise ValueError(f"beta={self.beta!r} must be > 0.")


class NPO(Objective):
    name = "npo"
    label = "NPO"
    params = NPOParams
    uses_retain = True
    needs_reference_nll = True

    def forget_term(self, model, forget, ctx):
        if ctx.ref_forget_nll_sum is None:
            raise RuntimeError("NPO needs the reference NLLs of the forget set; SAUTrainer computes them at train start.")
        nll_sum, count, _ = forward_nll(model, forget)
        ref = ctx.ref_forget_nll_sum.to(nll_sum.device)[forget["index"]]
        return npo_loss(nll_sum, ref, self.params.beta), mean_token_nll(nll_sum, count)
