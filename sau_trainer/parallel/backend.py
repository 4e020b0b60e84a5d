"""The backend interface: the few questions SAU asks about where a model's tensors live.

`Backend` is one process, and the base every other backend refines. Under DDP every rank holds whole tensors and
the saliency pass all-reduces its sums, so building ``G`` and ``W`` asks nothing of the other ranks
(`DataParallelBackend` only names itself). Under DeepSpeed ZeRO-2/3 the saliency pass reads DeepSpeed's full,
reduced gradients on every rank (`DeepSpeedBackend`): the tensors are again whole and equal on every rank. Under
FSDP2 a parameter is a row shard (`ShardedBackend`): a selection unit may span ranks, and then the sums and counts
are all-reduced and the top-k is the exact threshold search of `sau_trainer.core.topk`.

The interface (every backend answers all of it):
* ``local_rows(name, full)`` / ``gather(name, part)`` / ``full_shape(name, part)``: this rank's part of a full
  tensor of a parameter, and back;
* ``spans(name, layout, ndim, unit)``: whether one selection unit (``matrix`` or ``row``) lies on several ranks;
* ``all_reduce_sum(t)`` (sums and counts, in place) and ``all_gather(t)`` (``[world, *t.shape]``);
* ``steps_in_backward``: the optimizer steps inside the backward (DeepSpeed), so the Trainer's own step does not;
* for the saliency pass: ``shard_batches`` (each rank passes its share of the batches), ``read_grad`` (None: the
  pass folds ``p.grad`` by hooks; else a function giving the gradient to fold after each backward),
  ``backward`` (None: ``loss.backward()``), ``after_saliency()``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.distributed as dist

from ..core.prunable import Layout
from .shards import local, spans_ranks


class Backend:
    """One process: every tensor whole, every reduction the identity."""

    name = "one process"
    sharded = False  # True when parameters (and so saliency and masks) are row shards
    steps_in_backward = False  # True when the optimizer steps inside the backward (DeepSpeed's engine)
    shard_batches = True
    read_grad: Callable[[torch.nn.Parameter], torch.Tensor | None] | None = None
    backward: Callable[[torch.Tensor], None] | None = None

    def __init__(self, world: int = 1, rank: int = 0):
        self.world, self.rank = world, rank

    def local_rows(self, name: str, full: torch.Tensor) -> torch.Tensor:
        return full

    def gather(self, name: str, part: torch.Tensor) -> torch.Tensor:
        return part

    def full_shape(self, name: str, part: torch.Tensor) -> tuple[int, ...]:
        return tuple(part.shape)

    def spans(self, name: str, layout: Layout, ndim: int, unit: str) -> bool:
        return False

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        return t.unsqueeze(0)

    def after_saliency(self) -> None:
        """Called after each saliency pass (the next training micro-step must start from fresh gradients)."""


class DataParallelBackend(Backend):
    """DDP (and plain multi-process CPU): whole tensors on every rank; the saliency pass reduces its sums."""

    name = "DDP"


class DeepSpeedBackend(Backend):
    """DeepSpeed ZeRO-2/3: the saliency pass reads DeepSpeed's full gradients (reduced across ranks, gathered under
    ZeRO-3) on every rank, after the engine's own backward; every rank passes every batch."""

    name = "DeepSpeed"
    shard_batches = False
    steps_in_backward = True

    def __init__(self, engine, world: int = 1, rank: int = 0):
        super().__init__(world, rank)
        self.engine = engine
        self.read_grad = self._full_grad
        self.backward = self._backward

    @staticmethod
    def _full_grad(p: torch.Tensor) -> torch.Tensor | None:
        from deepspeed.utils import safe_get_full_grad

        g = safe_get_full_grad(p)
        return None if g is None else g.detach()

    def _backward(self, loss: torch.Tensor) -> None:
        """One backward through the engine as one whole optimizer step's gradient (for the saliency pass)."""
        self.engine.optimizer.zero_grad(set_to_none=True)  # ZeRO's own: the next backward replaces, not accumulates
        self.engine.set_gradient_accumulation_boundary(True)
        self.engine.backward(loss, scale_wrt_gas=False)

    def after_saliency(self) -> None:
        self.engine.optimizer.zero_grad(set_to_none=True)  # ZeRO accumulates after a backward


class ShardedBackend(Backend):
    """FSDP2: every parameter a DTensor ``Shard(0)``; `shards` maps names to their `parallel.shards.RowShard`."""

    name = "FSDP2"
    sharded = True
    shard_batches = False  # every rank passes every batch; the backward reduces the gradients

    def __init__(self, shards: Mapping[str, object], device=None):
        first = next(iter(shards.values()), None)
        super().__init__(first.world if first else 1, first.rank if first else 0)
        self.shards = dict(shards)
        self.group = first.group if first else None
        self.device = device  # where the collectives run (NCCL reduces only GPU tensors)
        self.read_grad = self._local_grad

    @staticmethod
    def _local_grad(p: torch.Tensor) -> torch.Tensor | None:
        return None if p.grad is None else local(p.grad.detach())

    def local_rows(self, name, full):
        return self.shards[name].local(full)

    def gather(self, name, part):
        return self.shards[name].gather(part)

    def full_shape(self, name, part):
        return tuple(self.shards[name].shape)

    def spans(self, name, layout, ndim, unit):
        return spans_ranks(layout, ndim, unit)

    def _device(self, t: torch.Tensor):
        return t.device if self.device is None else torch.device(self.device)

    def all_reduce_sum(self, t):
        dev = self._device(t)
        moved = t if t.device == dev else t.to(dev)
        dist.all_reduce(moved, op=dist.ReduceOp.SUM, group=self.group)
        if moved is not t:
            t.copy_(moved)
        return t

    def all_gather(self, t):
        send = t.to(self._device(t)).contiguous()
        bufs = [torch.empty_like(send) for _ in range(self.world)]
        dist.all_gather(bufs, send, group=self.group)
        return torch.stack(bufs).to(t.device)
