"""Row shards of FSDP2 parameters: which rows of a parameter this rank holds, and the gather of a full tensor.

Under FSDP2 (``fully_shard``) every parameter is a DTensor sharded along its first dimension (``Shard(0)``): rank
``r`` holds rows ``[r * c, min((r + 1) * c, n))`` with ``c = ceil(n / world)``, the last shards shorter or empty
when ``n`` is not divisible by the world size (torch.chunk's split). A `RowShard` names that range. The masks
``M`` and ``G`` of a parameter are used as the same rows of the full mask (bit planes of the local rows), so the
mask passes run on local shards with no communication.

How SAU's selection and redistribution run on these shards with the one-process semantics: `sau.build_sau_state`
with a `backend.ShardedBackend`, and `core.topk.threshold_select` for the units that span ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..core.prunable import Layout

try:  # public since torch 2.5; FSDP2 (the only user of sharded tensors here) needs a newer torch anyway
    from torch.distributed.tensor import DTensor, Shard
except ImportError:  # pragma: no cover - torch without DTensor: no tensor is sharded
    DTensor = Shard = None


def is_sharded(t) -> bool:
    """True for a DTensor (a sharded parameter or gradient)."""
    return DTensor is not None and isinstance(t, DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (sharing its storage: in-place changes reach the parameter), else `t`."""
    return t.to_local() if is_sharded(t) else t


@dataclass(frozen=True)
class RowShard:
    """Rows ``[start, stop)`` of a parameter of full `shape` held by this rank, and the process group."""

    shape: tuple[int, ...]
    start: int
    stop: int
    world: int
    rank: int
    group: object = None

    @classmethod
    def of(cls, name: str, p: torch.Tensor) -> RowShard:
        mesh, placements = p.device_mesh, tuple(p.placements)
        if mesh.ndim != 1 or placements != (Shard(0),):
            raise ValueError(
                f"{name} is sharded as {placements} over a {mesh.ndim}-D device mesh; sau-trainer supports FSDP2's "
                "default sharding (Shard(0) over one mesh dimension). Use fully_shard without a custom shard placement "
                "or tensor/hybrid parallelism."
            )
        world, rank = mesh.size(), mesh.get_local_rank()
        n = int(p.shape[0])
        c = -(-n // world)
        start = min(rank * c, n)
        stop = min(start + c, n)
        local_rows = int(p.to_local().shape[0]) if p.dim() else 0
        if local_rows != stop - start:
            raise ValueError(f"{name}: the local shard has {local_rows} rows, expected {stop - start} (rows "
                             f"{start}:{stop} of {n} over {world} ranks); an unknown sharding.")
        return cls(tuple(int(s) for s in p.shape), start, stop, world, rank, mesh.get_group())

    @property
    def chunk(self) -> int:
        return -(-self.shape[0] // self.world)

    def local(self, full: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a full-shape tensor (a 0-d tensor, e.g. a per-matrix ``W``, is returned as is)."""
        return full if full.dim() == 0 else full[self.start : self.stop]

    def gather(self, part: torch.Tensor) -> torch.Tensor:
        """The full tensor from every rank's rows (all ranks call it): padded to equal chunks, all-gathered, cut."""
        c = self.chunk
        dtype = part.dtype
        send = part.to(torch.uint8) if dtype == torch.bool else part
        if send.shape[0] < c:
            pad = send.new_zeros((c - send.shape[0], *send.shape[1:]))
            send = torch.cat([send, pad])
        bufs = [torch.empty_like(send) for _ in range(self.world)]
        dist.all_gather(bufs, send.contiguous(), group=self.group)
        full = torch.cat(bufs)[: self.shape[0]]
        return full.to(dtype) if dtype == torch.bool else full


def spans_ranks(layout: Layout, ndim: int, unit: str) -> bool:
    """Whether one selection unit (``matrix`` or ``row``) of a parameter spans several ranks' rows."""
    if layout.experts:
        return False  # the first dimension is the expert: every expert's matrix and rows lie on one rank
    return ndim < 2 or unit == "matrix"
