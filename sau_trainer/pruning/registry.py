"""The pruner registry: adding a method is one new file and one line here."""

from __future__ import annotations

from .magnitude import MagnitudePruner
from .sparsegpt import SparseGPTPruner
from .wanda import WandaPruner

#: method name -> pruner. A pruner has ``name``, ``statistic`` (None, "act_norm_sq" or "hessian": what
#: the calibration pass must accumulate for each linear) and
#: ``prune(weight, stat, sparsity, structure, **options) -> (new_weight, keep_mask, extra_report)``.
PRUNERS = {
    "magnitude": MagnitudePruner(),
    "wanda": WandaPruner(),
    "sparsegpt": SparseGPTPruner(),
}
