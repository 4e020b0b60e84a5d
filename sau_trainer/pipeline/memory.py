"""The memory estimate of ``sau-trainer run RECIPE --dry-run``: peak bytes per device, per stage, before any work.

Pure arithmetic on the model's shape (parameter counts from its config, the model built on the ``meta``
device: no weights are read or allocated), its precision, the optimizer and the distributed setup. Every
component is counted per device:

* **weights** as trained: the model's dtype, or fp32 master weights where the precision policy upcasts bf16
  weights (``low_precision_weights: upcast`` without a compensated optimizer; docs/concepts/precision.md);
* **gradients** in the trained weights' dtype; **optimizer** state in bytes per trainable parameter
  (`optimizer_bytes`: AdamW 2 x the weight's bytes, bitsandbytes / torchao 8-bit about 2.05, Kahan AdamW 6, ...);
* **masks**: ``M``, 1 bit per prunable weight; **SAU**: ``G`` (1 bit) and ``W`` (nothing per matrix, 4 bytes
  per row or entry otherwise), and the saliency pass's fp32 sums (4 bytes per prunable weight), which exist
  before the optimizer state does: the pass is its own phase, and the stage's peak is the larger phase;
* **activations** of one micro-batch (`activation_bytes`) at the section's ``max_length`` (an upper bound: rows
  are truncated to it and batches padded to their longest row, usually shorter), times the batches one step
  keeps alive at once (forget and retain batches for objectives with a retain term);
* **reference**: a frozen copy of the model for objectives that keep one (UNDIAL, RMU, KL retain terms).

Sharding follows what FSDP and DeepSpeed shard: ZeRO-1 the optimizer state, ZeRO-2 also the gradients,
ZeRO-3 and FSDP full shard everything that belongs to a parameter (masks and SAU state are sharded like their
parameters), plus the largest gathered units (two decoder blocks and the root module's parameters, for
prefetching). Pruning and evaluation run on the main process with the whole model on one device, whatever
the training setup, unless ``prune.offload`` (one decoder block on the device at a time) or
``evaluate.device_map`` (the weights split over the setup's devices) says otherwise.

The activation count is an approximation for Llama-style blocks (the tensors autograd keeps per token: the
norms' fp32 inputs, q, k, v, the attention output, the MLP's four intermediates; logits in the compute dtype
plus an fp32 log-softmax and its gradient). Allocator fragmentation and the CUDA context are one fixed
`overhead` (1 GiB on a GPU). It is an estimate to catch a setup that cannot fit before hours are spent,
not a measurement.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .memory_distributed import (  # noqa: F401 - the distributed setup, public here
    Distributed,
    distributed_from_accelerate_config,
    distributed_from_env,
)
from .memory_model import KNOWN_MODELS, ModelCounts, counts_from_config, llama_counts, model_config  # noqa: F401

GiB = 1024 ** 3
CUDA_OVERHEAD = 1 * GiB

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# ----------------------------------------------------------------------------------------- precision
# Optimizer state in bytes per trained parameter; `None`: twice the weight's bytes (torch's Adam-type states
# take the parameter's dtype). Measured by benchmarks/precision.py where docs/concepts/precision.md quotes it.
OPTIMIZER_BYTES: dict[str, float | None] = {
    "adamw_torch": None, "adamw_torch_fused": None, "adamw_hf": None, "adamw_apex_fused": None, "adafactor": 0.05,
    "adamw_bnb_8bit": 2.05, "adamw_8bit": 2.05, "paged_adamw_8bit": 2.05, "lion_8bit": 1.03,
    "paged_lion_8bit": 1.03, "rmsprop_bnb_8bit": 1.03, "paged_adamw_32bit": 8.0, "adamw_bnb_32bit": 8.0,
    "lion_32bit": 4.0, "paged_lion_32bit": 4.0, "sgd": 0.0, "adagrad": None,
}


def compensated_bytes(name: str) -> float | None:
    """Optimizer state per parameter of a compensated optimizer (its registry entry's), None for any other name."""
    from ..training.compensated import COMPENSATED_OPTIMIZERS

    entry = COMPENSATED_OPTIMIZERS.get(name)
    return entry.state_bytes if entry is not None else None


@dataclass(frozen=True)
class Precision:
    """Bytes per parameter of what training holds: weights as trained, gradients, optimizer state, and the
    compute dtype of activations."""

    weight: float
    grad: float
    optimizer: float
    compute: float
    note: str = ""


def training_precision(dtype: str, optim: str, bf16: bool, compensated: str = "none",
                       low_precision_weights: str = "upcast") -> Precision:
    """The precision rules of `sau_trainer.precision` as bytes: bf16 weights are trained as fp32 master weights
    (upcast), kept with a compensated optimizer, or refused (error; estimated as kept)."""
    d = DTYPE_BYTES.get(dtype, 2)  # "auto": the published checkpoints of the recipes' models are bf16
    note = "" if dtype in DTYPE_BYTES else "dtype auto counted as bf16"
    compute = 2 if (bf16 or d == 2) else 4
    if d == 2 and (state := compensated_bytes(compensated)) is not None:
        return Precision(2, 2, state, compute, note)
    weight = 4 if (d == 2 and low_precision_weights == "upcast") else d
    state = OPTIMIZER_BYTES.get(optim, None) if optim in OPTIMIZER_BYTES else None
    if optim not in OPTIMIZER_BYTES:
        note = (note + "; " if note else "") + f"optimizer {optim!r} counted as AdamW"
    return Precision(weight, weight, 2 * weight if state is None else state, compute, note)


# ----------------------------------------------------------------------------------------- activations
def activation_bytes(counts: ModelCounts, batch: int, seq: int, compute: float, checkpointing: bool,
                     forwards: int = 1) -> float:
    """Autograd's saved tensors of one training step on one device: per token and block ``9 h + 2 kv + 4 i``
    values (all blocks, or with gradient checkpointing one block plus each block's input), and the logits in
    the compute dtype with an fp32 log-softmax and its fp32 gradient; `forwards` batches alive at once."""
    tokens = batch * seq
    block = (9 * counts.hidden + 2 * counts.kv_dim + 4 * counts.intermediate) * tokens * compute
    if checkpointing:
        blocks = counts.layers * counts.hidden * tokens * compute + block
    else:
        blocks = counts.layers * block
    logits = tokens * counts.vocab * (compute + 8)
    return forwards * (blocks + logits)


# ----------------------------------------------------------------------------------------- estimates
@dataclass
class Estimate:
    """Bytes per device by component; `phases` the totals of phases that do not overlap (peak: the largest)."""

    components: dict[str, float]
    phases: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def peak(self) -> float:
        return max(self.phases.values()) if self.phases else sum(self.components.values())


COMPONENTS = ("weights", "gradients", "optimizer", "masks", "sau", "activations", "reference", "overhead")


def training_estimate(counts: ModelCounts, precision: Precision, dist: Distributed, *, batch: int, seq: int,
                      checkpointing: bool, forwards: int = 1, masks: bool = False, sau: bool = False,
                      saliency_batch: int | None = None, w_per: str = "matrix", update_copy: bool = False,
                      reference: bool = False, overhead: float = 0.0) -> Estimate:
    """Peak bytes per device of a training or unlearning stage (see the module docstring for what counts)."""
    n = max(dist.num_processes, 1)
    p, total = counts.prunable, counts.total
    gathered = (2 * counts.largest_layer + counts.outside_layers) * precision.weight
    if dist.offload_params and dist.kind == "fsdp":
        weights, grads, optim = gathered, counts.largest_layer * precision.grad, 0.0
    else:
        if dist.offload_params:
            weights = gathered
        elif dist.shards_weights:
            weights = total * precision.weight / n + gathered
        else:
            weights = total * precision.weight
        grads = total * precision.grad / n + counts.largest_layer * precision.grad if dist.shards_gradients \
            else total * precision.grad
        optim = 0.0 if dist.offload_optimizer else \
            total * precision.optimizer / (n if dist.shards_optimizer else 1)
    shard = n if dist.shards_weights else 1  # masks and SAU state are sharded like their parameters
    m = p / 8 / shard if masks else 0.0
    s_state = 0.0
    if sau:
        s_state = p / 8 / shard
        if w_per == "row":
            s_state += counts.prunable / max(counts.hidden, 1) * 4 / shard
        elif w_per == "param":
            s_state += p * 4 / shard
    if update_copy:
        s_state += p * precision.weight / shard
    act = activation_bytes(counts, batch, seq, precision.compute, checkpointing, forwards)
    ref = total * precision.weight / shard if reference else 0.0
    comps = {"weights": weights, "gradients": grads, "optimizer": optim, "masks": m, "sau": s_state,
             "activations": act, "reference": ref, "overhead": overhead}
    est = Estimate(comps, {"training": sum(comps.values())})
    if sau:  # before training: the saliency sums, one batch's activations; no optimizer state or gradients yet
        sums = p * 4 / shard
        sal_act = activation_bytes(counts, saliency_batch or batch, seq, precision.compute, checkpointing, 1)
        est.phases["saliency pass"] = weights + m + sums + sal_act + ref + overhead + \
            counts.largest_layer * precision.grad
    if precision.note:
        est.notes.append(precision.note)
    return est


def prune_estimate(counts: ModelCounts, dtype: str, method: str, num_samples: int, seq_len: int,
                   overhead: float = 0.0, offload: bool = False) -> Estimate:
    """Pruning on the main process: the whole model in its dtype on one device (with `offload`: one decoder block),
    the calibration inputs and outputs of one block (fp32) if the pruner (`PRUNERS[method].statistic`) calibrates,
    a Hessian and its inverse (fp32, the widest input) if it needs one, and a working copy of the largest matrix."""
    from ..pruning.registry import PRUNERS

    d, statistic = DTYPE_BYTES.get(dtype, 2), PRUNERS[method].statistic
    calib = 0.0 if statistic is None else 2 * num_samples * seq_len * counts.hidden * 4
    hessian = 2 * counts.max_in_features ** 2 * 4 if statistic == "hessian" else 0.0
    work = counts.largest_matrix * 4
    weights = counts.largest_layer * d if offload else counts.total * d
    est = Estimate({"weights": weights, "activations": calib + hessian + work, "overhead": overhead})
    if offload:
        est.notes.append("prune.offload: one decoder layer on the device at a time, the model in CPU memory "
                         f"({gib(counts.total * d)} GiB of host RAM)")
    return est


def evaluate_estimate(counts: ModelCounts, dtype: str, batch: int, seq: int, new_tokens: int,
                      overhead: float = 0.0, devices: int = 1) -> Estimate:
    """Evaluation on the main process: the whole model, the logits of one batch (model dtype and fp32) and the
    KV cache of a generation of `new_tokens` after `seq` tokens. `devices` > 1 (evaluate.device_map): the
    weights split evenly over that many devices; the activations counted whole on each (an upper bound: the
    logits live on the last device, the cache is split with the layers)."""
    d = DTYPE_BYTES.get(dtype, 2)
    logits = batch * seq * counts.vocab * (d + 4)
    cache = 2 * counts.layers * counts.kv_dim * batch * (seq + new_tokens) * d
    est = Estimate({"weights": counts.total * d / max(devices, 1), "activations": max(logits, cache),
                    "overhead": overhead})
    if devices > 1:
        est.notes.append(f"evaluate.device_map: the weights spread over {devices} devices")
    return est


# ----------------------------------------------------------------------------------------- the device
def device_memory() -> tuple[int, str]:
    """Total memory of the device the run would use: CUDA device 0, else the host's RAM."""
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            return int(props.total_memory), f"{props.name}"
    except Exception:  # noqa: BLE001 - no usable CUDA: the host
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")), "host RAM (no GPU)"
    except (ValueError, OSError, AttributeError):
        return 0, "unknown"


def gib(x: float) -> str:
    return f"{x / GiB:.1f}"


# ----------------------------------------------------------------------------------------- a recipe's stages
def _sau_args(unlearn: dict, objective: str, sau: bool):
    """A grid point's SAUConfig values (`config.settings_view`: no TrainingArguments built, no device checks)."""
    from ..config import settings_view

    values = {**{k: v for k, v in unlearn.items() if k != "args"}, **unlearn.get("args", {})}
    return settings_view({**values, "objective": objective, "sau": sau})


def _holds_masks(task, tasks: dict) -> bool:
    """Whether the model a task trains is a pruned one: its source, followed through the planned tasks (by name),
    is a pruning task."""
    seen, todo = set(), [task]
    while todo:
        t = todo.pop()
        for role in ("source", "model"):
            dep = tasks.get(t.deps.get(role))
            if dep is not None and dep.name not in seen:
                if dep.kind == "prune":
                    return True
                seen.add(dep.name)
                todo.append(dep)
    return False


def estimate_task(task, recipe, counts: ModelCounts, dist: Distributed, overhead: float = 0.0, *,
                  tasks: dict) -> Estimate | None:
    """The estimate of one planned task (`pipeline.stages.Task`), or None for stages that hold no model
    (`tasks`: the plan by name, to see whether the model is a pruned one)."""
    s, m = task.settings, recipe.model
    if task.kind == "train":
        t = s["train"]
        args = t.get("args", {})
        prec = training_precision(m.dtype, args.get("optim", t["optim"]), args.get("bf16", t["bf16"]),
                                  args.get("compensated_optimizer", "none"),
                                  args.get("low_precision_weights", "upcast"))
        return training_estimate(counts, prec, dist, batch=t["per_device_train_batch_size"], seq=t["max_length"],
                                 checkpointing=args.get("gradient_checkpointing", t["gradient_checkpointing"]),
                                 overhead=overhead)
    if task.kind in ("unlearn", "attack"):
        u = s.get("unlearn") or {**{k: v for k, v in vars(recipe.unlearn).items()}, "args": recipe.unlearn.args}
        sau = bool(s.get("sau", False)) and task.kind == "unlearn"
        a = _sau_args(u, s.get("objective", "graddiff"), sau)
        from ..objectives import OBJECTIVES

        try:
            objective = OBJECTIVES[a.objective](a)
            forwards, reference = 1 + bool(objective.uses_retain), bool(objective.needs_reference_model)
        except Exception:  # noqa: BLE001 - an objective that needs more than defaults: count the worst case
            forwards, reference = 2, True
        prec = training_precision(m.dtype, a.optim, a.bf16, a.compensated_optimizer or "none",
                                  a.low_precision_weights or "upcast")
        sparse = _holds_masks(task, tasks)
        update_copy = a.sau_redistribution_target == "update" and a.sau_redistribution in ("row", "param")
        est = training_estimate(counts, prec, dist, batch=a.per_device_train_batch_size, seq=a.max_length,
                                checkpointing=a.gradient_checkpointing, forwards=forwards, masks=sparse, sau=sau,
                                saliency_batch=a.saliency_batch_size, w_per=a.sau_redistribution,
                                update_copy=sau and update_copy, reference=reference, overhead=overhead)
        if task.kind == "attack":
            est.notes.append("an attack: counted as plain training with the unlearning settings (an upper bound)")
        return est
    if task.kind == "prune":
        return prune_estimate(counts, m.dtype, s["method"], s["num_samples"], s["seq_len"], overhead,
                              offload=bool(s.get("offload")))
    if task.kind == "evaluate":
        e = s["evaluate"]
        seq = e.get("max_length") or recipe.unlearn.max_length
        devices = dist.num_processes if recipe.evaluate.device_map else 1
        return evaluate_estimate(counts, m.dtype, e["batch_size"], seq, e["max_new_tokens"], overhead, devices)
    return None


def _signature(task, est: Estimate) -> tuple:
    return (task.kind, tuple(round(v) for v in est.components.values()),
            tuple(sorted((k, round(v)) for k, v in est.phases.items())))


def memory_report(recipe, tasks, dist: Distributed, device: tuple[int, str], counts: ModelCounts | None = None,
                  where: str = "", planned: list | None = None) -> tuple[list[str], list[str]]:
    """Lines of the dry run's memory table (one row per distinct estimate, with how many tasks share it) and
    its warnings (each stage whose peak exceeds the device's memory). `planned`: every task of the plan, when
    `tasks` is a selection of them (``--tasks``; a task's source may lie outside it)."""
    by_name = {t.name: t for t in [*(planned or []), *tasks]}
    total, device_name = device
    if counts is None:
        found = model_config(recipe.model)
        if found is None:
            return ([f"memory: the shape of {recipe.model.name_or_path!r} is not known offline (no config.json, not "
                     "in the Hugging Face cache, not in sau_trainer.pipeline.memory.KNOWN_MODELS): no estimate"], [])
        config, where = found
        try:
            counts = counts_from_config(config, where)
        except Exception as err:  # noqa: BLE001 - an architecture the meta-device count cannot read: say so
            return [f"memory: could not count the parameters of {where} ({type(err).__name__}: {err}): no "
                    "estimate"], []
    overhead = CUDA_OVERHEAD if "host RAM" not in device_name else 0.0
    groups: dict[tuple, list] = {}
    for t in tasks:
        est = estimate_task(t, recipe, counts, dist, overhead, tasks=by_name)
        if est is not None:
            groups.setdefault(_signature(t, est), [t, est, 0])[2] += 1
    big = any(est.peak >= GiB for _, est, _ in groups.values())
    unit, scale = ("GiB", GiB) if big else ("MiB", 1024 ** 2)

    def size(x: float) -> str:
        return f"{x / scale:.1f}"

    def count(n: int) -> str:
        return f"{n / 1e9:.2f}e9" if n >= 1e8 else f"{n / 1e6:.2f}e6"

    head = (f"memory per device (estimated, {unit}; {where or counts.source}: {count(counts.total)} parameters, "
            f"{count(counts.prunable)} prunable; training: {dist.describe()}; pruning and evaluation on the "
            f"main process's device; device: {device_name}, {gib(total)} GiB):")
    cols = ("weights", "gradients", "optimizer", "masks", "sau", "activations", "reference", "overhead")
    short = ("weights", "grads", "optim", "masks", "SAU", "activ", "ref", "other")
    lines = [head, f"  {'stage':8s} {'tasks':>5s} " + " ".join(f"{c:>7s}" for c in short) + f" {'peak':>7s}  first task"]
    warnings = []
    for task, est, n in groups.values():
        vals = " ".join(f"{size(est.components.get(c, 0.0)):>7s}" for c in cols)
        phase = ""
        if len(est.phases) > 1:
            phase = "  (" + ", ".join(f"{k} {size(v)}" for k, v in est.phases.items()) + ")"
        lines.append(f"  {task.kind:8s} {n:5d} {vals} {size(est.peak):>7s}  {task.name}{phase}")
        for note in est.notes:
            lines.append(f"  {'':8s} note: {note}")
        if total and est.peak > total:
            warnings.append(f"WARNING: {task.kind} ({task.name}{' and ' + str(n - 1) + ' more' if n > 1 else ''}) "
                            f"needs about {gib(est.peak)} GiB per device, more than the {gib(total)} GiB of "
                            f"{device_name}")
    return lines, warnings
