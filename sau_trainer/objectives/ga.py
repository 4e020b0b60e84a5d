"""GradAscent: maximise the answer NLL of the forget set (``-NLL(forget)``)."""

from .base import Objective, forward_nll
from .losses import mean_token_nll


class GradAscent(Objective):
    name = "ga"
    label = "GA"

    def forget_term(self, model, forget, ctx):
        nll = mean_token_nll(*forward_nll(model, forget)[:2])
        return -nll, nll
