"""The memory estimate's distributed setup: processes and what they shard (DDP, FSDP, DeepSpeed ZeRO), read
from an accelerate config file or from the environment ``accelerate launch`` sets."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Distributed:
    """How training is spread: processes, and what FSDP / DeepSpeed shards (`kind`: single, ddp, fsdp, zero)."""

    num_processes: int = 1
    kind: str = "single"
    fsdp_version: int = 2
    reshard_after_forward: bool = True  # FSDP full shard (False: SHARD_GRAD_OP, like ZeRO-2)
    zero_stage: int = 0
    offload_params: bool = False
    offload_optimizer: bool = False
    source: str = ""

    def describe(self) -> str:
        n = f"{self.num_processes} process{'es' if self.num_processes != 1 else ''}"
        if self.kind == "fsdp":
            how = f"FSDP{self.fsdp_version} {'full shard' if self.reshard_after_forward else 'shard grad/optimizer'}"
        elif self.kind == "zero":
            how = f"DeepSpeed ZeRO-{self.zero_stage}"
        elif self.kind == "ddp":
            how = "data parallel (a full copy per device)"
        else:
            how = "no sharding"
        off = [w for w, on in (("parameters", self.offload_params), ("optimizer", self.offload_optimizer)) if on]
        return f"{n}, {how}" + (f", {' and '.join(off)} offloaded to CPU" if off else "") + \
            (f" (from {self.source})" if self.source else "")

    # what is divided by the process count
    @property
    def shards_weights(self) -> bool:
        return (self.kind == "fsdp" and self.reshard_after_forward) or (self.kind == "zero" and self.zero_stage >= 3)

    @property
    def shards_gradients(self) -> bool:
        return self.kind == "fsdp" or (self.kind == "zero" and self.zero_stage >= 2)

    @property
    def shards_optimizer(self) -> bool:
        return self.kind == "fsdp" or (self.kind == "zero" and self.zero_stage >= 1)


def _truthy(v: Any) -> bool:
    return str(v).strip().lower() in ("1", "true", "yes")


def distributed_from_accelerate_config(path: str | os.PathLike, num_processes: int | None = None) -> Distributed:
    """The setup an accelerate config file asks for (``distributed_type``, ``fsdp_config``, ``deepspeed_config``)."""
    from .recipe_io import yaml_load  # bounded: an alias bomb is refused, not expanded

    doc = yaml_load(Path(path).read_text(), what=f"the accelerate config {path}") or {}
    if not isinstance(doc, dict):
        raise ValueError(f"expected a mapping of accelerate settings, got {type(doc).__name__}")
    n = int(num_processes or doc.get("num_processes") or 1)
    dtype = str(doc.get("distributed_type", "NO")).upper()
    where = str(path)
    if dtype == "FSDP":
        f = doc.get("fsdp_config") or {}
        strategy = str(f.get("fsdp_sharding_strategy", "FULL_SHARD")).upper()
        reshard = f.get("fsdp_reshard_after_forward", strategy not in ("SHARD_GRAD_OP", "2"))
        if isinstance(reshard, str) and reshard.lower() not in ("true", "false"):
            reshard = reshard.upper() not in ("SHARD_GRAD_OP", "2")
        return Distributed(n, "fsdp", int(f.get("fsdp_version", 1)), _truthy(reshard),
                           offload_params=_truthy(f.get("fsdp_offload_params", False)), source=where)
    if dtype == "DEEPSPEED":
        d = doc.get("deepspeed_config") or {}
        return Distributed(n, "zero", zero_stage=int(d.get("zero_stage", 0)),
                           offload_params=str(d.get("offload_param_device", "none")).lower() not in ("none", ""),
                           offload_optimizer=str(d.get("offload_optimizer_device", "none")).lower()
                           not in ("none", ""), source=where)
    return Distributed(n, "ddp" if n > 1 else "single", source=where)


def distributed_from_env(env: dict | None = None) -> Distributed | None:
    """The setup of the current `accelerate launch` (its environment variables), or None outside one."""
    env = dict(os.environ if env is None else env)
    n = int(env.get("WORLD_SIZE", "0") or 0)
    if _truthy(env.get("ACCELERATE_USE_FSDP", "")):
        strategy = env.get("FSDP_SHARDING_STRATEGY", "FULL_SHARD").upper()
        reshard = env.get("FSDP_RESHARD_AFTER_FORWARD", "true" if strategy not in ("SHARD_GRAD_OP", "2") else "false")
        return Distributed(max(n, 1), "fsdp", int(env.get("FSDP_VERSION", "1")), _truthy(reshard),
                           offload_params=_truthy(env.get("FSDP_OFFLOAD_PARAMS", "")), source="environment")
    if _truthy(env.get("ACCELERATE_USE_DEEPSPEED", "")):
        return Distributed(max(n, 1), "zero", zero_stage=int(env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "0")),
                           offload_params=env.get("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "none") != "none",
                           offload_optimizer=env.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE",
                                                     "none") != "none", source="environment")
    if n > 1:
        return Distributed(n, "ddp", source="environment")
    return None
