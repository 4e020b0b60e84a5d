"""Reading and writing whole weights under each backend: the moving mask's projection after a step.

The moving mask (`sau_trainer.training.moving_mask`) keeps, after every optimizer step, the ``|S|`` entries of
largest magnitude of each unit (or the N:M pattern) and sets the others to exactly zero. On one process and under
DDP that is `MovingMask.project_` on whole tensors. Here:

* FSDP2 (`project_sharded_`): a unit within one rank's rows (an output row, a group of M inputs, an expert) is
  projected on the local rows with the same functions; a unit that spans ranks (a whole plain matrix) by the exact
  threshold search over the shards' magnitudes (`core.topk.threshold_select` with the unit's count as the
  quota; ties to the lower flat index, as `core.projection` breaks them). The new full mask is gathered to every
  rank (the saved mask file is one process's).
* DeepSpeed ZeRO-2/3 (`project_zero_`): the optimizer's fp32 master copy is the weight that the next step starts
  from, so the projection reads it whole (``safe_get_full_fp32_param``, gathered one matrix at a time under ZeRO-3),
  projects it as one process does, and writes it back to the master partitions (``safe_set_full_fp32_param``) and
  to the model's own copy (the whole tensor under ZeRO-2, this rank's flat partition under ZeRO-3).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist

from ..core.bits import pack_planes
from ..core.projection import project_nm, project_topk
from ..core.prunable import PLAIN
from ..core.topk import threshold_select
from .shards import local


def _moved(masks, unit: str) -> None:
    if not masks.source.startswith("moved"):
        masks.source = f"moved by sau_moving_mask={unit!r} from: {masks.source}"


@torch.no_grad()
def project_sharded_(moving, params: Mapping[str, torch.Tensor], masks, backend) -> dict[str, torch.Tensor]:
    """`MovingMask.project_` on FSDP2 row shards (collective: every rank calls it). Sets the local entries outside
    the new mask to +0.0, stores the full new masks in `masks`, returns the local rows of each as bit planes."""
    _moved(masks, moving.unit)
    local_planes = {}
    for name in masks.names:
        w = local(params[name].data)
        layout = moving.layouts.get(name, PLAIN)
        shard = backend.shards[name]
        if name in moving.patterns:
            keep = project_nm(w, *moving.patterns[name], layout)
        elif layout.experts or moving.unit == "row":  # every unit on one rank: its rows' counts
            counts = moving.counts[name].reshape(shard.shape[0], -1)[shard.start : shard.stop]
            keep = project_topk(w, counts.reshape(-1), moving.unit, layout)
        else:  # a whole plain matrix over the ranks
            count = int(moving.counts[name].reshape(-1)[0])
            (keep,), = threshold_select([[(w.abs(), torch.ones(w.shape, dtype=torch.bool, device=w.device))]], None,
                                        backend, quotas=[count])
        w.masked_fill_(~keep, 0.0)
        masks.replace(name, backend.gather(name, keep).cpu())
        local_planes[name] = pack_planes(keep)
    moving.steps += 1
    return local_planes


@torch.no_grad()
def project_zero_(moving, params: Mapping[str, torch.Tensor], masks) -> None:
    """`MovingMask.project_` under DeepSpeed ZeRO-2/3, after the engine's step (collective under ZeRO-3)."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param

    _moved(masks, moving.unit)
    for name in masks.names:
        p = params[name]
        full = safe_get_full_fp32_param(p)
        keep = moving.new_mask(name, full)
        full = full.masked_fill(~keep, 0.0)
        safe_set_full_fp32_param(p, full)
        write_model_copy(p, full)
        masks.replace(name, keep.cpu())
    moving.steps += 1


def write_model_copy(p: torch.Tensor, full: torch.Tensor) -> None:
    """The model's own copy of a parameter from its full fp32 value: ZeRO-3's flat partition of this rank (padded at
    the end of the last one), and the whole tensor where the rank holds it whole (ZeRO-2, or a ZeRO-3 parameter
    below ``stage3_param_persistence_threshold``, which stays gathered and is what the forward reads)."""
    part = getattr(p, "ds_tensor", None)
    if part is not None:
        rank = dist.get_rank(group=getattr(p, "ds_process_group", None))
        n = part.numel()
        seg = full.reshape(-1)[rank * n : rank * n + n]
        part.data.reshape(-1)[: seg.numel()].copy_(seg.to(part.dtype))
    if p.data.numel() == full.numel():
        p.data.copy_(full.reshape(p.data.shape).to(p.dtype))
