"""How stages load models and build their Trainer settings: the recipe's dtype and attention, TrainingArguments
keywords from a section (gradient accumulation from the effective batch size, the names the installed transformers
knows)."""

from __future__ import annotations

from typing import Any

from .schema import TrainerSettings
from .tasks import Context


def _warmup_kwargs(steps: float) -> dict:
    """Warm-up keywords: a float below 1 is a fraction of all steps. transformers 5.x takes it as
    `warmup_steps` (and has no `warmup_ratio`); 4.x needs an int `warmup_steps` and takes the fraction as
    `warmup_ratio`. Both round the fraction up to whole steps."""
    import transformers

    if steps >= 1 or steps == 0:
        return {"warmup_steps": int(steps)}
    if int(transformers.__version__.split(".")[0]) < 5:
        return {"warmup_steps": 0, "warmup_ratio": steps}
    return {"warmup_steps": steps}


def _pin_memory() -> bool:
    from ..finetuning import pin_memory_default

    return pin_memory_default()


def _checkpointing_kwargs(on: bool) -> dict:
    """The checkpointing flag under its name in the installed transformers: 5.x renamed TrainingArguments'
    ``gradient_checkpointing`` to ``activation_checkpointing`` and warns (FutureWarning) whenever the old one is
    given, False included; 4.57 knows only the old one."""
    from dataclasses import fields

    from transformers import TrainingArguments

    new = "activation_checkpointing" in {f.name for f in fields(TrainingArguments)}
    return {"activation_checkpointing" if new else "gradient_checkpointing": on}


def _trainer_kwargs(sec: TrainerSettings, ctx: Context) -> dict:
    """TrainingArguments keywords from a section (gradient accumulation from the effective batch size)."""
    import torch

    num_processes = ctx.num_processes
    ga = sec.gradient_accumulation_steps
    if sec.effective_batch_size is not None:
        per_step = sec.per_device_train_batch_size * num_processes
        if sec.effective_batch_size % per_step:
            raise ValueError(f"effective_batch_size={sec.effective_batch_size} is not a multiple of "
                             f"per_device_train_batch_size x processes = {per_step}.")
        ga = sec.effective_batch_size // per_step
    kwargs = dict(
        num_train_epochs=sec.num_train_epochs, per_device_train_batch_size=sec.per_device_train_batch_size,
        gradient_accumulation_steps=ga, lr_scheduler_type=sec.lr_scheduler_type,
        **_warmup_kwargs(sec.warmup_steps),
        weight_decay=sec.weight_decay, optim=sec.optim, bf16=sec.bf16,
        **_checkpointing_kwargs(sec.gradient_checkpointing), logging_steps=sec.logging_steps,
        save_strategy="no", report_to=[], ddp_timeout=ctx.recipe.distributed_timeout_s,
        dataloader_pin_memory=_pin_memory(),  # no pinned memory (and no warning) without an accelerator
    )
    if num_processes > 1 and not torch.cuda.is_available():
        kwargs["use_cpu"] = True  # else TrainingArguments rebuilds a non-distributed state on a CPU-only group
    kwargs.update(sec.args)
    return kwargs


def _dtype(name: str):
    import torch

    return "auto" if name == "auto" else getattr(torch, name)


def load_model(ctx: Context, ref: str, device=None, device_map: str | None = None):
    """A causal LM from a task directory or a Hub id / path, in the recipe's dtype: on `device`, or placed by
    accelerate with `device_map` (e.g. ``"auto"``: spread over the visible GPUs, then the CPU; `device` unused)."""
    from ..modeling import load_causal_lm  # a pickle checkpoint torch refuses: one clear line

    m = ctx.recipe.model
    kwargs: dict[str, Any] = {"dtype": _dtype(m.dtype)}
    if m.attn_implementation:
        kwargs["attn_implementation"] = m.attn_implementation
    if device_map is not None:
        return load_causal_lm(ctx.model_source(ref), device_map=device_map, **kwargs)
    model = load_causal_lm(ctx.model_source(ref), **kwargs)
    if device is not None:
        model.to(device)
    return model
