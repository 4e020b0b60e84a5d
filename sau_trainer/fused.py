"""Moved (issue 24's layers): `sau_trainer.core.fused` (the fused mask passes) and `sau_trainer.core.bits` (bit
planes). This path stays and re-exports their names; new code imports from the new homes. The kernels' state
(`_compile_failed`, `_can_compile`, ...) lives in `sau_trainer.core.fused`: read it there."""

from .core.bits import from_planes, pack_planes, to_planes, unpack_planes
from .core.fused import (
    CHUNK,
    COMPILE_MIN_NUMEL,
    compile_status,
    kernel_mode,
    scale_update_,
    where_,
    where_many_,
)

__all__ = ["CHUNK", "COMPILE_MIN_NUMEL", "compile_status", "from_planes", "kernel_mode", "pack_planes",
           "scale_update_", "to_planes", "unpack_planes", "where_", "where_many_"]
