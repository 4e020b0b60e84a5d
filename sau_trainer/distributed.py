"""Moved (issue 24's layers): the launch contract to `sau_trainer.parallel.launch`. This path stays and re-exports
its names; new code imports from the new home."""

from .parallel.launch import (
    DEEPSPEED,
    DEEPSPEED_STAGES,
    FSDP,
    check_distributed_type,
    check_request,
    check_supported,
    deepspeed_stage,
    enable_fsdp_on_cpu,
    requested_distributed_type,
)

__all__ = ["DEEPSPEED", "DEEPSPEED_STAGES", "FSDP", "check_distributed_type", "check_request", "check_supported",
           "deepspeed_stage", "enable_fsdp_on_cpu", "requested_distributed_type"]
