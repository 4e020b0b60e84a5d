"""SimNPO (Fan et al. 2024, "Simplicity Prevails"): NPO on the length-normalised NLL, no reference model."""

from dataclasses import dataclass

from .base import Objective, forward_nll
from .losses import mean_token_nll, simnpo_loss
from .params import param


@dataclass
class SimNPOParams:
    beta: float = param(4.5, "beta of SimNPO (> 0).", flat="simnpo_beta")
    delta: float = param(0.0, "delta (reward margin) of SimNPO.", flat="simnpo_delta")

    def __post_init__(self):
        if not self.beta > 0:
            raise ValueError(f"beta={self.beta!r} must be > 0.")


class SimNPO(Objective):
    name = "simnpo"
    label = "SimNPO"
    params = SimNPOParams
    uses_retain = True
    default_forget_weight = 0.125

    def forget_term(self, model, forget, ctx):
        nll_sum, count, _ = forward_nll(model, forget)
        nll_mean = nll_sum / count.clamp_min(1)
        return simnpo_loss(nll_mean, self.params.beta, self.params.delta), mean_token_nll(nll_sum, count)
