"""Sparsity preservation for any Trainer: trl's SFTTrainer and DPOTrainer through `sparsity_preserving`.

A tiny 50%-sparse Llama trained a few steps (gradient accumulation 2, torch AdamW and bitsandbytes 8-bit AdamW):
every pruned entry stays exactly zero and the survivors move; the same run with the plain trl trainer loses the
zeros (which is why this exists). SAU-selected updates under SFTTrainer: only the entries of ``G`` move.
"""

from __future__ import annotations

import pytest
import torch
from sau_testing import qa, sparse_model

from sau_trainer import SparsityMasks, compute_sau_state, prunable_parameters, sparsity_preserving
from sau_trainer.sau import topk_count

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

OPTIMS = ["adamw_torch", pytest.param("adamw_bnb_8bit", marks=pytest.mark.slow)]


def _common(out, optim, **kw):
    return dict(output_dir=str(out), report_to=[], max_steps=3, per_device_train_batch_size=2,
                gradient_accumulation_steps=2, learning_rate=1e-3, optim=optim, weight_decay=0.0, save_strategy="no",
                disable_tqdm=True, use_cpu=True, seed=0, logging_steps=1, **kw)


def _sft(tokenizer, tiny_splits, out, optim, trainer_cls, **extra):
    model = sparse_model(tokenizer)
    rows = qa(tiny_splits, "forget10", 8)
    data = datasets.Dataset.from_list([{"prompt": r["question"], "completion": " " + r["answer"]} for r in rows])
    args = trl.SFTConfig(**_common(out, optim), max_length=64)
    return model, trainer_cls(model=model, args=args, train_dataset=data, processing_class=tokenizer, **extra)


def _dpo(tokenizer, tiny_splits, out, optim, trainer_cls):
    model = sparse_model(tokenizer)
    rows = qa(tiny_splits, "forget10", 8)
    data = datasets.Dataset.from_list([{"prompt": r["question"], "chosen": " I don't know.", "rejected": " " + r["answer"]}
                                       for r in rows])
    args = trl.DPOConfig(**_common(out, optim), max_length=64)
    ref = sparse_model(tokenizer)  # the same weights (seeded); trl would otherwise load it from the Hub by name
    return model, trainer_cls(model=model, ref_model=ref, args=args, train_dataset=data, processing_class=tokenizer)


@pytest.mark.parametrize("optim", OPTIMS)
@pytest.mark.parametrize("build", [_sft, _dpo], ids=["sft", "dpo"])
def test_trl_trainers_keep_zeros(build, optim, tokenizer, tiny_splits, tmp_path):
    model, trainer = build(tokenizer, tiny_splits, tmp_path / "sp", optim, sparsity_preserving(getattr(
        trl, "SFTTrainer" if build is _sft else "DPOTrainer")))
    masks = SparsityMasks.from_model(model)
    before = {n: p.detach().clone() for n, p in prunable_parameters(model).items()}
    trainer.train()
    assert masks.count_nonzero_pruned(model) == 0
    params = prunable_parameters(model)
    moved = sum(int(((params[n] != before[n]) & masks.get(n)).sum()) for n in params)
    assert moved > 0.5 * sum(masks.num_surviving(n) for n in params), "the survivors must train"
    trainer.save_model(str(tmp_path / "saved"))
    assert torch.equal(SparsityMasks.load(tmp_path / "saved").get(next(iter(params))), masks.get(next(iter(params))))

    # the plain trl trainer on the same sparse start loses the zeros
    plain_model, plain = build(tokenizer, tiny_splits, tmp_path / "plain", optim,
                               getattr(trl, "SFTTrainer" if build is _sft else "DPOTrainer"))
    plain.train()
    assert masks.count_nonzero_pruned(plain_model) > 0


def test_sau_selected_updates_under_sft(tokenizer, tiny_splits, tmp_path):
    """The documented recipe: G and W from the forget set, then any trl trainer trains only G."""
    model = sparse_model(tokenizer)
    forget = qa(tiny_splits, "forget10", 8)
    state = compute_sau_state(model, tokenizer, forget, k=0.3)
    masks = SparsityMasks.from_model(model)
    params = prunable_parameters(model)
    for n in params:
        assert int(state.mask(n).sum()) == topk_count(masks.num_surviving(n), 0.3)
    before = {n: p.detach().clone() for n, p in params.items()}
    _, trainer = _sft(tokenizer, tiny_splits, tmp_path, "adamw_torch", sparsity_preserving(trl.SFTTrainer),
                      sau_state=state)
    trainer.model.load_state_dict(model.state_dict())  # the same start as the saliency pass saw
    trainer.train()
    params = prunable_parameters(trainer.model)
    for n, p in params.items():
        g = state.mask(n)
        assert torch.equal(p[~g], before[n][~g]), "entries outside G (pruned ones included) must not move"
        assert (p[g] != before[n][g]).any()


def test_bad_sau_state_is_refused(tokenizer, tiny_splits, tmp_path):
    from sau_trainer.sau import SAUState

    bad = SAUState(selected={"model.not_a_layer.weight": torch.zeros(1, dtype=torch.uint8)},
                   shapes={"model.not_a_layer.weight": (1,)})
    with pytest.raises(ValueError, match="not a prunable weight"):
        _sft(tokenizer, tiny_splits, tmp_path, "adamw_torch", sparsity_preserving(trl.SFTTrainer), sau_state=bad)
