"""The saliency pass over a model: a diagonal Fisher estimate of how much each weight encodes the forget set.

``batch`` granularity: ``s = (1/B) sum_b (grad L_f(b))^2`` over the B forget batches, with ``L_f(b)``
the batch's mean answer NLL (so ``s`` depends on the batch size). ``example`` granularity:
``s = (1/N) sum_i (grad L_f(x_i))^2``, one backward per example. Each gradient is folded into
``s`` (fp32) as soon as it is accumulated, by a post-accumulate-grad hook, and then freed: the
pass needs 4 bytes per target parameter beyond a plain forward+backward. Across processes the
sums and counts are all-reduced, so every rank ends with the same ``s``. The model runs in train
mode (so gradient checkpointing stays on) with its dropout modules off. The model (weights,
grads, train/eval mode, requires_grad flags, hooks) and the RNG state are left as they were found.

Gradient checkpointing: torch's *reentrant* checkpoint (transformers 4.57's default) gives a block's
parameters no gradient when none of the block's inputs requires grad, and here everything but the
targets is frozen, the embeddings included, so the backward would fail with "element 0 of tensors does
not require grad". For that case the pass makes the input embeddings' output require grad, by a
forward hook that it removes afterwards (what ``enable_input_require_grads`` does in transformers,
and what 5.x does itself whenever checkpointing is on). Non-reentrant checkpointing needs nothing.

The arithmetic (folding a gradient in, the mean): `sau_trainer.core.saliency`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.saliency import accumulate_, mean_, split_examples
from ..parallel.shards import local
from ..progress import show_progress as show_bar

LossFn = Callable[[nn.Module, dict], torch.Tensor]


def _uses_reentrant_checkpointing(model: nn.Module) -> bool:
    """True when a module of `model` recomputes its forward with torch's reentrant checkpoint.

    transformers stores the checkpoint function as ``functools.partial(checkpoint, **kwargs)`` on every
    module with a ``gradient_checkpointing`` flag; torch treats a missing or None ``use_reentrant`` as
    reentrant, and so does this test (an unknown function is assumed reentrant: the fix is harmless).
    """
    for m in model.modules():
        if getattr(m, "gradient_checkpointing", False) is True:
            kwargs = getattr(getattr(m, "_gradient_checkpointing_func", None), "keywords", None) or {}
            if kwargs.get("use_reentrant") is not False:
                return True
    return False


def _require_input_grads(model: nn.Module) -> torch.utils.hooks.RemovableHandle:
    """A removable forward hook that makes the input embeddings' output require grad."""
    get = getattr(model, "get_input_embeddings", None)
    try:
        embeddings = get() if get is not None else None
    except NotImplementedError:
        embeddings = None
    if not isinstance(embeddings, nn.Module):
        raise ValueError(
            f"The saliency pass cannot run through reentrant gradient checkpointing on {type(model).__name__}: "
            "it freezes every parameter but its targets and needs the input embeddings' output to require "
            "grad, but the model exposes no input embeddings (get_input_embeddings). Use non-reentrant "
            "checkpointing: gradient_checkpointing_kwargs={'use_reentrant': False}."
        )

    def hook(module, args, output):
        if isinstance(output, torch.Tensor) and not output.requires_grad:
            output.requires_grad_(True)

    return embeddings.register_forward_hook(hook)


def require_input_grads_if_reentrant(model: nn.Module) -> torch.utils.hooks.RemovableHandle | None:
    """For training with frozen parameters under reentrant checkpointing: the input-grad hook, or None.

    `SAUTrainer` freezes parameters (``sau_dense_params="freeze"``, objectives that train a few layers);
    under transformers 4.57's default reentrant checkpointing their blocks would then get no gradient or
    fail. transformers 5.x adds the same hook whenever checkpointing is on, so there this changes nothing.
    The caller removes the handle when training ends.
    """
    if all(p.requires_grad for p in model.parameters()) or not _uses_reentrant_checkpointing(model):
        return None
    return _require_input_grads(model)


def compute_saliency(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    loss_fn: LossFn,
    params: dict[str, nn.Parameter],
    granularity: str = "batch",
    max_examples: int | None = None,
    loss_scale: float = 1.0,
    autocast: Callable | None = None,
    show_progress: bool = True,
    sharded_grads: Callable[[nn.Parameter], torch.Tensor | None] | None = None,
    backward: Callable[[torch.Tensor], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-parameter fp32 saliency for `params` (name -> parameter of `model`) over `batches`.

    `loss_fn(model, batch)` returns the scalar forget loss of a batch. `loss_scale` multiplies the
    loss before backward (fp16 without underflow) and is divided out squared. `autocast` is an
    optional context-manager factory for mixed precision.

    `sharded_grads` (FSDP2, `sau_trainer.parallel.shards`): a function giving a parameter's local gradient shard after
    backward (already reduced across ranks by the backward). Then every rank passes every batch, the
    saliency of each parameter is its local shard, nothing is all-reduced, and no parameter is frozen (the
    sharded model's flags stay as FSDP saw them); the gradients are read after each backward and dropped.
    Under DeepSpeed ZeRO `sharded_grads` gives the full gradient (DeepSpeed's accessor) and `backward` runs the
    engine's backward (which reduces the gradients and replaces them at every call).
    """
    if granularity not in ("batch", "example"):
        raise ValueError(f"saliency_granularity must be 'batch' or 'example', got {granularity!r}")
    targets = {id(p): name for name, p in params.items()}
    if sharded_grads is not None:
        saliency = {}  # made at the first gradient: its shape is the gradient's (ZeRO-3 parameters are empty)
    else:
        saliency = {name: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for name, p in params.items()}
    was_training = {m: m.training for m in model.modules()}
    requires_grad = {p: p.requires_grad for p in model.parameters()}
    old_grads = {p: p.grad for p in model.parameters()}

    def fold(p: torch.Tensor) -> None:
        accumulate_(saliency, targets[id(p)], p.grad.detach())
        p.grad = None

    handles = []
    try:
        for p in model.parameters():
            p.grad = None
            if sharded_grads is None:
                p.requires_grad_(id(p) in targets)
        if sharded_grads is None:
            for p in params.values():
                handles.append(p.register_post_accumulate_grad_hook(fold))
        if _uses_reentrant_checkpointing(model):
            handles.append(_require_input_grads(model))
        # Train mode keeps gradient checkpointing on (HF checkpoints only while training); dropout is switched off.
        model.train()
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.eval()
        count, seen = 0, 0
        with torch.random.fork_rng(devices=[p.device for p in params.values() if p.device.type == "cuda"][:1]):
            for batch in tqdm(batches, desc="saliency", disable=not show_bar(show_progress), leave=False):
                if max_examples is not None and seen >= max_examples:
                    break
                if max_examples is not None and seen + batch["input_ids"].shape[0] > max_examples:
                    batch = {k: v[: max_examples - seen] for k, v in batch.items()}
                seen += batch["input_ids"].shape[0]
                units = split_examples(batch) if granularity == "example" else [batch]
                for unit in units:
                    with autocast() if autocast is not None else torch.enable_grad():
                        loss = loss_fn(model, unit)
                    if backward is None:
                        (loss * loss_scale).backward()
                    else:
                        backward(loss * loss_scale)
                    count += 1
                    if sharded_grads is not None:
                        with torch.no_grad():
                            for name, p in params.items():
                                g = sharded_grads(p)
                                if g is not None:
                                    accumulate_(saliency, name, g)
                            for p in model.parameters():
                                p.grad = None
        if sharded_grads is not None:
            for name, p in params.items():  # never reached by a gradient: zero saliency of the gradient's shape
                if name not in saliency:
                    shape = getattr(p, "ds_shape", None) or local(p).shape
                    saliency[name] = torch.zeros(shape, dtype=torch.float32, device=local(p).device)
            saliency = {name: saliency[name] for name in params}
        count_t = torch.tensor(float(count), device=next(iter(saliency.values())).device)
        if sharded_grads is None and torch.distributed.is_available() and torch.distributed.is_initialized():
            for s in saliency.values():
                torch.distributed.all_reduce(s)
            torch.distributed.all_reduce(count_t)
        mean_(saliency, count_t.item(), loss_scale)
    finally:
        for h in handles:
            h.remove()
        for m, mode in was_training.items():
            m.training = mode
        for p, flag in requires_grad.items():
            p.requires_grad_(flag)
            p.grad = old_grads[p]
    return saliency
