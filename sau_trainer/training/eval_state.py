"""What an evaluation during training reads, leaves as it found, and carries across processes (for
`sau_trainer.training.unlearning_eval.UnlearningEvaluationCallback`): a result's numbers, the random states, rank 0's
metrics on every rank, and a CPU copy of the weights (each rank's local shards under FSDP2, without a gather).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..parallel.shards import is_sharded, local


def numeric_metrics(raw: Any) -> tuple[dict[str, float], list[str]]:
    """The numbers of an evaluation result (its ``summary`` if it has one) as floats, and the keys left out."""
    if not isinstance(raw, Mapping):
        raise TypeError(f"The evaluation function must return a mapping of metric names to numbers, got "
                        f"{type(raw).__name__}.")
    if isinstance(raw.get("summary"), Mapping):
        raw = raw["summary"]
    out, dropped = {}, []
    for key, value in raw.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[str(key)] = float(value)
        else:
            dropped.append(str(key))
    return out, dropped


def rng_state() -> dict:
    """Every random state an evaluation could draw from (restored by `set_rng_state`)."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    state["numpy"] = np.random.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the random states `rng_state` took."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def world() -> tuple[int, int]:
    """``(rank, world size)``: ``(0, 1)`` in one process."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def agree(metrics: dict[str, float]) -> dict[str, float]:
    """Rank 0's metrics on every rank (every rank calls this; one process: unchanged)."""
    rank, size = world()
    if size == 1:
        return metrics
    box = [metrics if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def reshard(model: torch.nn.Module) -> None:
    """FSDP2: back to sharded parameters after a forward without backward (the root module keeps its parameters
    gathered after a forward, expecting a backward; a state dict or a weight copy then meets full tensors)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def model_is_sharded(model: torch.nn.Module) -> bool:
    """True when a parameter of `model` is an FSDP2 shard."""
    return any(is_sharded(p) for p in model.parameters())


def _tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of `model` by name, as the local shard under FSDP2 (sharing storage)."""
    out = {f"param:{n}": local(p.detach()) for n, p in model.named_parameters()}
    out.update({f"buffer:{n}": local(b) for n, b in model.named_buffers() if b is not None})
    return out


def snapshot(model: torch.nn.Module, into: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """A CPU copy of `model`'s (local) weights, written into `into`'s tensors when their shapes match."""
    out = {}
    for name, t in _tensors(model).items():
        held = (into or {}).get(name)
        if held is not None and held.shape == t.shape and held.dtype == t.dtype:
            out[name] = held.copy_(t)
        else:
            out[name] = t.to("cpu", copy=True)
    return out


@torch.no_grad()
def load_snapshot(model: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    """Copy `snapshot`'s tensors back into `model` (its local shards under FSDP2); another model's: a ValueError."""
    tensors = _tensors(model)
    missing = sorted(set(tensors) - set(weights))
    if missing:
        raise ValueError(f"The best model's saved weights lack {missing[0]} (and {len(missing) - 1} more): they were "
                         "saved from another model.")
    for name, t in tensors.items():
        t.copy_(weights[name])
