"""Moved (issue 24's layers) to `sau_trainer.training.unlearning_eval` (the callback) and
`sau_trainer.training.eval_state` (its helpers). This path stays and re-exports their names; new code imports from
the new homes."""

from .training.eval_state import (
    agree,
    load_snapshot,
    numeric_metrics,
    reshard,
    rng_state,
    set_rng_state,
    snapshot,
)
from .training.unlearning_eval import BEST_FILE, MODES, STATE_KEY, UnlearningEvaluationCallback

__all__ = ["BEST_FILE", "MODES", "STATE_KEY", "UnlearningEvaluationCallback", "agree", "load_snapshot",
           "numeric_metrics", "reshard", "rng_state", "set_rng_state", "snapshot"]
