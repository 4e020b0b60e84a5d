"""The moving mask (a study option, `sau_moving_mask`): projections keep the count (and N:M pattern) of every unit
after every optimizer step, per matrix or per row, and SAU selects among all entries."""

import pytest
import torch
from sau_testing import OPTIMIZERS, make_trainer, qa, saliency_callback, sparse_model
from transformers import TrainerCallback

from sau_trainer.masks import Layout, SparsityMasks, prunable_parameters
from sau_trainer.moving_mask import nm_pattern, project_nm, project_topk, unit_counts
from sau_trainer.sau import topk_count


# --------------------------------------------------------------------------- (b) the moving mask
def test_projections_keep_counts_and_pattern():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 16, generator=g)
    counts = torch.tensor([5])
    keep = project_topk(w, counts)
    assert int(keep.sum()) == 5 and float(w.abs()[keep].min()) >= float(w.abs()[~keep].max())
    rows = torch.arange(6) + 1
    assert project_topk(w, rows, "row").sum(1).tolist() == rows.tolist()
    nm = project_nm(w, 2, 4)
    assert nm_pattern(nm) == (2, 4) and (nm.reshape(6, 4, 4).sum(-1) == 2).all()
    assert nm_pattern(keep) is None
    experts = torch.randn(3, 4, 8, generator=g)
    kept = project_topk(experts, torch.tensor([1, 2, 3]), "matrix", Layout(experts=True))
    assert kept.reshape(3, -1).sum(1).tolist() == [1, 2, 3]
    ties = torch.ones(2, 4)  # ties go to the lower index
    assert project_topk(ties, torch.tensor([3])).reshape(-1).tolist() == [True] * 3 + [False] * 5


def _nm_sparse_model(tokenizer):
    model = sparse_model(tokenizer, sparsity=0.0)
    with torch.no_grad():
        for p in prunable_parameters(model).values():
            p.mul_(project_nm(p, 2, 4))
    return model


class _CountRecorder(TrainerCallback):
    """After every step (re-zero / projection done): the trainer's masks, the weights' support and the counts."""

    def __init__(self, trainer, unit):
        self.trainer, self.unit, self.records = trainer, unit, []

    def on_step_end(self, args, state, control, **kwargs):
        t = self.trainer
        rec = {}
        for n, p in prunable_parameters(t.model).items():
            m = t.sparsity_masks.get(n)
            assert not (p.detach()[~m] != 0).any(), n  # outside the mask: exactly zero
            rec[n] = (unit_counts(m, self.unit).tolist(), nm_pattern(m), m.clone())
        self.records.append(rec)


@pytest.mark.parametrize("optim", OPTIMIZERS)
@pytest.mark.parametrize("structure", ["unstructured", "2:4"])
def test_moving_mask_keeps_the_count_per_unit_after_every_step(tokenizer, tiny_splits, tmp_path, optim, structure):
    model = _nm_sparse_model(tokenizer) if structure == "2:4" else sparse_model(tokenizer, sparsity=0.7)
    start = SparsityMasks.from_model(model)
    unit = "matrix"
    want = {n: unit_counts(start.get(n), unit).tolist() for n in start.names}
    sau = optim != "sgd"  # plain (every entry trained) with SGD, SAU (G among all entries) with the others
    trainer = make_trainer(model, tokenizer, qa(tiny_splits, "forget10", 8), qa(tiny_splits, "retain90", 16), tmp_path,
                           optim=optim, sau=sau, sau_topk=0.5, sau_moving_mask=unit,
                           learning_rate=10.0 if optim == "sgd" else 2e-2,  # clipped SGD steps are tiny
                           weight_decay=0.1, max_steps=3, per_device_train_batch_size=4)
    rec = _CountRecorder(trainer, unit)
    trainer.add_callback(rec)
    trainer.train()
    assert len(rec.records) == 3
    for step in rec.records:
        for n, (counts, pattern, _) in step.items():
            assert counts == want[n]
            if structure == "2:4":
                assert pattern == (2, 4)
    moved = sum(int((rec.records[-1][n][2] & ~start.get(n)).sum()) for n in start.names)
    assert moved > 0  # the support moved: pruned capacity came back somewhere
    out = tmp_path / "saved"
    trainer.save_model(str(out))
    saved = SparsityMasks.load(out, model)
    for n, p in prunable_parameters(model).items():
        assert torch.equal(saved.get(n), trainer.sparsity_masks.get(n))
        assert not (p.detach()[~saved.get(n)] != 0).any()
    summary = trainer.moving_mask.summary(trainer.sparsity_masks)
    assert summary["moved"] and summary["replaced_entries"] == moved and summary["steps"] == 3
    assert summary["unit"] == ("n:m" if structure == "2:4" else "matrix")


def test_moving_mask_per_row(tokenizer, tiny_splits, tmp_path):
    model = sparse_model(tokenizer, sparsity=0.6)
    start = SparsityMasks.from_model(model)
    want = {n: start.get(n).sum(1).tolist() for n in start.names}
    trainer = make_trainer(model, tokenizer, qa(tiny_splits, "forget10", 8), qa(tiny_splits, "retain90", 16), tmp_path,
                           sau=False, sau_moving_mask="row", learning_rate=2e-2, max_steps=2)
    trainer.train()
    for n in start.names:
        assert trainer.sparsity_masks.get(n).sum(1).tolist() == want[n]
    assert trainer.moving_mask.summary(trainer.sparsity_masks)["moved"]


def test_moving_mask_sau_selects_among_all_entries(tokenizer, tiny_splits, tmp_path):
    model = sparse_model(tokenizer, sparsity=0.7)
    trainer = make_trainer(model, tokenizer, qa(tiny_splits, "forget10", 8), qa(tiny_splits, "retain90", 8), tmp_path,
                           sau_moving_mask="matrix", sau_topk=0.3, max_steps=1)
    state = saliency_callback(trainer).build_state()
    pruned_selected = 0
    for n in trainer.sparsity_masks.names:
        m, g = trainer.sparsity_masks.get(n), state.mask(n)
        assert int(g.sum()) == topk_count(int(m.sum()), 0.3)  # as many as k gives from the surviving count
        pruned_selected += int((g & ~m).sum())
    assert pruned_selected > 0
