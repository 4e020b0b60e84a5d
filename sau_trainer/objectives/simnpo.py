"""SimNPO (Fan et al. 2024, "Simplicity Prevails"): NPO on the length-normalised NLL, no reference model."""

from .base import Objective, forward_nll
from .losses import mean_token_nll, simnpo_loss


class SimNPO(Objective):
    name = "simnpo"
    label = "SimNPO"
    uses_retain = True
    default_forget_weight = 0.125

    def forget_term(self, model, forget, ctx):
        nll_sum, count, _ = forward_nll(model, forget)
        nll_mean = nll_sum / count.clamp_min(1)
        return simnpo_loss(nll_mean, self.args.simnpo_beta, self.args.simnpo_delta), mean_token_nll(nll_sum, count)
