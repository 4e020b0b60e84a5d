"""Moved (issue 24's layers): precision handling to `sau_trainer.training.precision`, the compensated optimizers to
`sau_trainer.training.compensated`. This path stays and re-exports their names; new code imports from the new
homes."""

from .training.compensated import (
    COMPENSATED_OPTIMIZERS,
    KAHAN,
    OPTIMIZER_CHOICES,
    STOCHASTIC_ROUNDING,
    CompensatedOptimizer,
    Compensation,
    compensated_optimizer_cls_and_kwargs,
    compensation_buffer,
    compensation_of,
    unwrap_optimizer,
)
from .training.precision import (
    LOW_PRECISION_DTYPES,
    POLICIES,
    WARN_BELOW,
    PrecisionPlan,
    UpdateCheckCallback,
    UpdateProbe,
    apply_precision_plan,
    apply_precision_policy,
    autocast_enabled,
    check_precision,
    plan_precision,
    upcast_parameters,
    update_mode_rescaled,
)

__all__ = ["COMPENSATED_OPTIMIZERS", "KAHAN", "LOW_PRECISION_DTYPES", "OPTIMIZER_CHOICES", "POLICIES",
           "STOCHASTIC_ROUNDING", "WARN_BELOW", "CompensatedOptimizer", "Compensation", "PrecisionPlan",
           "UpdateCheckCallback", "UpdateProbe", "apply_precision_plan", "apply_precision_policy", "autocast_enabled",
           "check_precision", "compensated_optimizer_cls_and_kwargs", "compensation_buffer", "compensation_of",
           "plan_precision", "update_mode_rescaled", "upcast_parameters", "unwrap_optimizer"]
