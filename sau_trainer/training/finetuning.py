"""Plain supervised finetuning on QA/text rows (how the target and retain models are made, and the relearning
attack): a `transformers.Trainer` with this package's precision handling and console output, so Trainer glue."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from ..data.qa import QACollator, RowsDataset, tokenize_rows
from .callbacks import quiet_console
from .compensated import compensated_optimizer_cls_and_kwargs
from .precision import apply_precision_plan, check_precision

logger = logging.getLogger("sau_trainer.finetuning")  # its name before the move: users and tests set its level


def pin_memory_default() -> bool:
    """DataLoader ``pin_memory``: pinned host memory only speeds copies to an accelerator; without one, torch
    warns about it at every training run."""
    accelerator = getattr(torch, "accelerator", None)
    return bool(accelerator.is_available()) if accelerator is not None else torch.cuda.is_available()


def finetune(
    model: Any,
    tokenizer: Any,
    rows: Any,
    output_dir: str,
    num_train_epochs: float = 10,
    learning_rate: float = 1e-5,
    per_device_train_batch_size: int = 8,
    max_length: int | None = 512,
    seed: int = 0,
    save: bool = True,
    low_precision_weights: str = "upcast",
    compensated_optimizer: str = "none",
    trainer_cls: type | None = None,
    **training_args: Any,
):
    """Train `model` on `rows` (question/answer or text) with a plain `transformers.Trainer`.

    The loss is on answer tokens only (see `sau_trainer.data.qa`). Saves the model and tokenizer to
    `output_dir` when `save` is true and returns the model.

    `low_precision_weights` and `compensated_optimizer` mean what the `SAUConfig` fields of the same names
    mean (`sau_trainer.training.precision`): by default trainable bf16/fp16 weights that a rounding optimizer
    would not move are trained as fp32 master weights (logged), so finetuning a bf16-loaded model at lr 1e-5
    learns.
    `trainer_cls` replaces `transformers.Trainer` (same constructor), e.g. ``sparsity_preserving(Trainer)`` to
    keep a pruned model's zeros (the relearning attack of `sau_trainer.robustness` on sparse models).
    """
    data = RowsDataset(tokenize_rows(rows, tokenizer, max_length, name="training set", model=model), drop=("index",))
    defaults = dict(
        logging_steps=10, save_strategy="no", report_to=[], lr_scheduler_type="constant_with_warmup",
        warmup_steps=0, weight_decay=0.0, disable_tqdm=None, dataloader_pin_memory=pin_memory_default(),
    )
    defaults.update(training_args)
    args = TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=num_train_epochs,
        learning_rate=learning_rate,
        per_device_train_batch_size=per_device_train_batch_size,
        seed=seed,
        data_seed=seed,
        remove_unused_columns=False,
        **defaults,
    )
    cls_and_kwargs = None
    if compensated_optimizer != "none":
        cls_and_kwargs = compensated_optimizer_cls_and_kwargs(compensated_optimizer, args)
    plan = check_precision(model, args, optimizer_cls_and_kwargs=cls_and_kwargs, policy=low_precision_weights,
                           compensated=compensated_optimizer)
    apply_precision_plan(model, plan)
    made = _missing_folders(output_dir)  # the Trainer creates output_dir at once, even when nothing is saved
    try:
        trainer = (trainer_cls or Trainer)(model=model, args=args, train_dataset=data,
                                           data_collator=QACollator(tokenizer), processing_class=tokenizer,
                                           optimizer_cls_and_kwargs=cls_and_kwargs)
        quiet_console(trainer)  # with disable_tqdm: a log line per logging step, not a dict on stdout
        trainer.train()
        if save:
            trainer.save_model(output_dir)
    finally:
        _remove_if_empty(made)
    return model


def _missing_folders(path: str) -> list[str]:
    """``path`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    path = os.path.abspath(path)
    while path and not os.path.exists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        path = parent if parent != path else ""
    return missing


def _remove_if_empty(folders: list[str]) -> None:
    """Remove the folders this call created and left empty (``save=False``: no empty ``output_dir`` behind)."""
    for folder in folders:
        try:
            os.rmdir(folder)  # only an empty folder
        except OSError:
            return
