"""Moved (issue 24's layers): row shards to `sau_trainer.parallel.shards`, the threshold search to
`sau_trainer.core.topk` (one owner, for one process and for shards), the FSDP2 backend to
`sau_trainer.parallel.backend`. This path stays and re-exports their names; `build_sharded_sau_state` is `sau.build_sau_state` with an FSDP2 backend (there is one build)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .core.prunable import Layout
from .core.topk import threshold_select
from .parallel.backend import ShardedBackend
from .parallel.shards import RowShard, is_sharded, local, spans_ranks
from .sau import SAUState, build_sau_state


def build_sharded_sau_state(
    saliency: dict[str, torch.Tensor], surviving: Mapping[str, torch.Tensor], shards: Mapping[str, RowShard],
    k: float, alpha: float, scope: str = "matrix", redistribution: str = "matrix", settings: dict | None = None,
    global_names: list[str] | None = None, layouts: Mapping[str, Layout] | None = None, **options,
) -> SAUState:
    """`sau.build_sau_state` for local shards: `saliency` and `surviving` hold this rank's rows of every parameter
    (`shards` says which); every rank gets the full state (on the CPU), equal to one process's. `options`: those
    of `build_sau_state` (``retain``, ``mass``, ``candidates``, ...)."""
    return build_sau_state(saliency, surviving, k, alpha, scope, redistribution, settings=settings,
                           global_names=global_names, layouts=layouts, backend=ShardedBackend(shards), **options)


__all__ = ["RowShard", "build_sharded_sau_state", "is_sharded", "local", "spans_ranks", "threshold_select"]
