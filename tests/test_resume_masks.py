"""Resuming with sparsity masks other than the checkpoint's is refused (they were swapped in silently)."""

import pytest
import torch
from sau_testing import qa, sparse_model

from sau_trainer import SAUConfig, SAUTrainer
from sau_trainer.masks import SparsityMasks, check_resume_masks, prunable_parameters


def trainer_for(model, tokenizer, tiny_splits, out, masks=None, max_steps=2):
    args = SAUConfig(output_dir=str(out), report_to=[], per_device_train_batch_size=4, learning_rate=1e-3,
                     max_steps=max_steps, save_strategy="steps", save_steps=2, disable_tqdm=True, seed=0,
                     optim="adamw_torch", lr_scheduler_type="constant")
    return SAUTrainer(model, args, forget_dataset=qa(tiny_splits, "forget10", 8),
                      retain_dataset=qa(tiny_splits, "retain90", 8), processing_class=tokenizer, sparsity_masks=masks)


def test_resume_with_other_masks_is_refused(tokenizer, tiny_splits, tmp_path):
    trainer_for(sparse_model(tokenizer), tokenizer, tiny_splits, tmp_path).train()
    other = sparse_model(tokenizer, seed=5)  # pruned elsewhere: other masks
    masks = SparsityMasks.from_model(other)
    resumed = trainer_for(other, tokenizer, tiny_splits, tmp_path, masks=masks, max_steps=3)
    with pytest.raises(ValueError, match="its sparsity masks differ from the ones this trainer was given"):
        resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))


def test_equal_masks_pass_and_moved_masks_are_said(tokenizer, caplog):
    model = sparse_model(tokenizer)
    masks = SparsityMasks.from_model(model)
    check_resume_masks(masks, SparsityMasks.from_model(model), "ckpt")  # equal: nothing
    name = next(iter(prunable_parameters(model)))
    moved = SparsityMasks.from_model(model)
    moved.replace(name, ~moved.get(name))
    with caplog.at_level("INFO", logger="sau_trainer.masks"):
        check_resume_masks(masks, moved, "ckpt", moving=True)
    assert "moved during training" in caplog.text
    with pytest.raises(ValueError, match=f"entries in 1 of {len(masks)} matrices"):
        check_resume_masks(masks, moved, "ckpt")
    assert torch.equal(masks.get(name), SparsityMasks.from_model(model).get(name))
