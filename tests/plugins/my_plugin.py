# The plugin of the README's "Plugins" section, exactly as written there (tests/test_plugins.py).
# ruff: noqa: I001
from dataclasses import dataclass, field
import torch
from sau_trainer import register_objective, register_pruner
from sau_trainer.objectives import Objective, forward_nll

@dataclass
class ScaledGAParams:
    scale: float = field(default=1.0, metadata={"help": "multiplies the forget NLL"})
    def __post_init__(self):
        if not self.scale > 0:
            raise ValueError(f"scale must be > 0, got {self.scale}")

@register_objective
class ScaledGA(Objective):
    name = "scaled_ga"
    params = ScaledGAParams
    def forget_term(self, model, forget, ctx):
        nll_sum, count, _ = forward_nll(model, forget)
        nll = nll_sum.sum() / count.sum()
        return -self.params.scale * nll, nll

@register_pruner
class EveryOther:
    name = "every_other"
    statistic = None
    def prune(self, weight, stat, sparsity, structure, **options):
        mask = torch.ones_like(weight, dtype=torch.bool)
        mask.view(-1)[::2] = False
        return weight.detach() * mask.to(weight.dtype), mask, {}
