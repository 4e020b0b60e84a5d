"""The launch contract: the accelerate config (or the Trainer arguments) decides the distributed setup, and a
Trainer that gets something other than what was asked for stops before training.

`accelerate launch --config_file recipes/accelerate/fsdp2_cpu.yaml script.py` asks for FSDP through the
environment (``ACCELERATE_USE_FSDP``); ``TrainingArguments(fsdp=...)`` asks through the arguments; DeepSpeed is
asked for by ``ACCELERATE_USE_DEEPSPEED`` or ``TrainingArguments(deepspeed=...)``. accelerate 1.15 turns an FSDP
request on CPU processes (``use_cpu``) into plain data parallel (``MULTI_CPU``) without a word
(``AcceleratorState`` promotes only GPU-like distributed types to FSDP). `enable_fsdp_on_cpu` finishes what
accelerate does on GPUs: it gives the accelerator state its FSDP plugin and the FSDP distributed type, so the
model is sharded with ``fully_shard`` over the gloo group. `check_distributed_type` then compares what was asked
with what the Trainer got and raises a one-line error naming both.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

logger = logging.getLogger("sau_trainer.distributed")  # its name before the move: users and tests set its level

FSDP, DEEPSPEED = "FSDP", "DEEPSPEED"
DEEPSPEED_STAGES = (2, 3)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def requested_distributed_type(args: Any) -> str | None:
    """``"FSDP"``, ``"DEEPSPEED"`` or None: what the launcher's environment or the Trainer arguments ask for."""
    if _env_flag("ACCELERATE_USE_DEEPSPEED") or getattr(args, "deepspeed", None):
        return DEEPSPEED
    if _env_flag("ACCELERATE_USE_FSDP") or getattr(args, "fsdp", None) or getattr(args, "fsdp_plugin_args", None):
        return FSDP
    return None


def check_request(args: Any, requested: str | None) -> None:
    """Before the accelerator exists: refuse an FSDP version other than 2 (on CPU processes accelerate cannot even
    build its FSDP1 plugin, and would fail with a message about devices)."""
    if requested != FSDP:
        return
    plugin_args = getattr(args, "fsdp_plugin_args", None) or {}
    version = str(plugin_args.get("fsdp_version") or os.environ.get("FSDP_VERSION", "1"))
    if version != "2":
        raise ValueError(
            f"FSDP version {version} was asked for; sau-trainer masks per-parameter shards and supports FSDP2 only: "
            "set `fsdp_version: 2` in the accelerate config's fsdp_config (see recipes/accelerate/fsdp2.yaml)."
        )


def enable_fsdp_on_cpu(trainer: Any, requested: str | None) -> bool:
    """On CPU processes, make the accelerator use the FSDP that was asked for (accelerate fell back to DDP).

    Only when FSDP was asked for, the processes are CPU ones forming a data-parallel group (``MULTI_CPU``) and no
    FSDP plugin is active. Returns whether it changed the accelerator."""
    acc = trainer.accelerator
    if requested != FSDP or acc.distributed_type != DistributedType.MULTI_CPU:
        return False
    if getattr(acc.state, "fsdp_plugin", None) is not None:
        return False
    plugin_args = getattr(trainer.args, "fsdp_plugin_args", None)
    plugin = FullyShardedDataParallelPlugin(**plugin_args) if plugin_args else FullyShardedDataParallelPlugin()
    mixed = getattr(acc.state, "mixed_precision", "no")
    if mixed != "no":
        plugin.set_mixed_precision(mixed)
    acc.state.fsdp_plugin = plugin
    acc.state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    trainer.is_fsdp_enabled = True
    logger.info("FSDP (version %s) on %d CPU processes (gloo): accelerate's CPU fallback to DDP replaced.",
                plugin.fsdp_version, acc.num_processes)
    return True


def check_distributed_type(trainer: Any, requested: str | None) -> None:
    """Raise when the Trainer's accelerator runs something other than the requested FSDP2 or DeepSpeed ZeRO-2/3."""
    acc = trainer.accelerator
    got = acc.distributed_type
    got_name = getattr(got, "name", str(got))
    if requested == FSDP:
        if got != DistributedType.FSDP:
            raise ValueError(
                f"FSDP was asked for (accelerate config `distributed_type: FSDP` or TrainingArguments(fsdp=...)), but "
                f"the Trainer got {got_name} ({acc.num_processes} process(es)): it would run unsharded. Start it with "
                "`accelerate launch --config_file recipes/accelerate/fsdp2.yaml` (fsdp2_cpu.yaml on CPUs) and at least "
                "2 processes, or drop the FSDP request."
            )
        version = getattr(acc.state.fsdp_plugin, "fsdp_version", 1)
        if version != 2:
            raise ValueError(
                f"FSDP version {version} was asked for; sau-trainer masks per-parameter shards and supports FSDP2 only: "
                "set `fsdp_version: 2` in the accelerate config's fsdp_config (see recipes/accelerate/fsdp2.yaml)."
            )
    elif requested == DEEPSPEED:
        if got != DistributedType.DEEPSPEED:
            raise ValueError(
                f"DeepSpeed was asked for (accelerate config `distributed_type: DEEPSPEED` or "
                f"TrainingArguments(deepspeed=...)), but the Trainer got {got_name}: it would run without ZeRO. "
                "Start it with `accelerate launch --config_file recipes/accelerate/zero3.yaml` (zero3_cpu.yaml with "
                "DS_ACCELERATOR=cpu on CPUs), or drop the DeepSpeed request."
            )
    elif got in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        return  # set up by the caller's own Accelerator: checked by `check_supported`
    check_supported(trainer)


def check_supported(trainer: Any) -> None:
    """Refuse sharded setups that the masking does not handle: FSDP1 and DeepSpeed stages other than 2 and 3."""
    acc = trainer.accelerator
    if acc.distributed_type == DistributedType.FSDP:
        version = getattr(acc.state.fsdp_plugin, "fsdp_version", 1)
        if version != 2:
            raise ValueError(
                f"FSDP version {version} is not supported (sau-trainer masks per-parameter shards): set "
                "`fsdp_version: 2` in the accelerate config's fsdp_config (see recipes/accelerate/fsdp2.yaml)."
            )
    elif acc.distributed_type == DistributedType.DEEPSPEED:
        stage = deepspeed_stage(trainer)
        if stage not in DEEPSPEED_STAGES:
            raise ValueError(
                f"DeepSpeed ZeRO stage {stage} is not supported; sau-trainer supports ZeRO stages "
                f"{' and '.join(map(str, DEEPSPEED_STAGES))} (`zero_stage` in the accelerate config's deepspeed_config)."
            )


def deepspeed_stage(trainer: Any) -> int | None:
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return None
    return int(plugin.deepspeed_config.get("zero_optimization", {}).get("stage", plugin.zero_stage or 0))
