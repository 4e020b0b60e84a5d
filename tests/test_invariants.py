"""SPEC section 3: the invariants of sparsity-preserving unlearning, each one a test."""

import pytest
import torch
from sau_testing import HAS_BNB, OPTIMIZERS, GradRecorder, make_trainer, qa, sparse_model

from sau_trainer.masks import SparsityMasks, prunable_parameters
from sau_trainer.sau import topk_count


def _pruned_all_zero(model, masks):
    return all(bool((p.detach()[~masks.get(n)] == 0).all()) for n, p in prunable_parameters(model).items())


@pytest.mark.parametrize("optim", OPTIMIZERS)
@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("accum", [1, 4])
def test_pruned_entries_stay_exactly_zero(tokenizer, tiny_splits, tmp_path, optim, bf16, accum):
    model = sparse_model(tokenizer)
    masks = SparsityMasks.from_model(model)
    assert max(p.numel() for p in prunable_parameters(model).values()) > 4096  # bnb's 8-bit path is used
    trainer = make_trainer(model, tokenizer, qa(tiny_splits, "forget10", 8), qa(tiny_splits, "retain90", 16), tmp_path,
                           optim=optim, bf16=bf16, gradient_accumulation_steps=accum, per_device_train_batch_size=2,
                           weight_decay=0.1, learning_rate=5e-3, max_steps=2)
    trainer.train()
    assert _pruned_all_zero(model, masks)
    if "8bit" in optim:  # the 8-bit state is really used (bitsandbytes keeps 32-bit state under 4096 entries)
        opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
        state = opt.state[model.model.layers[0].mlp.up_proj.weight]
        assert state["state1"].dtype == torch.uint8
    moved = sum(int((p.detach() != 0).sum()) for p in prunable_parameters(model).values())
    assert moved == sum(masks.num_surviving(n) for n in masks.names)  # nothing revived, nothing lost


@pytest.mark.parametrize("optim", ["adamw_torch", "sgd"])
@pytest.mark.parametrize("scope", ["matrix", "row", "global"])
def test_surviving_entries_outside_g_are_bit_identical(tokenizer, tiny_splits, tmp_path, optim, scope):
    model = sparse_model(tokenizer)
    before = {n: p.detach().clone() for n, p in prunable_parameters(model).items()}
    rec = GradRecorder(model)
    trainer = make_trainer(model, tokenizer, qa(tiny_splits, "forget10", 8), qa(tiny_splits, "retain90", 16), tmp_path,
                           optim=optim, sau_topk_scope=scope, callbacks=[rec])
    trainer.train()
    state, masks = trainer.sau_state, trainer.sparsity_masks
    changed_in_g = 0
    for name, p in prunable_parameters(model).items():
        g, m = state.mask(name), masks.get(name)
        outside = m & ~g
        assert torch.equal(p.detach()[outside], before[name][outside])
        for grads in rec.grads:
            assert (grads[name][~g] == 0).all()
        changed_in_g += int((p.detach()[g] != before[name][g]).sum())
    assert changed_in_g > 0


@pytest.mark.parametrize("scope", ["matrix", "row", "global"])
def test_selection_size_is_exact(tokenizer, tiny_splits, tmp_path, scope):
    model = sparse_model(tokenizer, sparsity=0.6)
    trainer = make_trainer(model, tokenizer, qa(tiny_splits, "forget10", 8), qa(tiny_splits, "retain90", 8), tmp_path,
                           sau_topk_scope=scope, sau_topk=0.3, max_steps=1)
    trainer.train()
    state, masks = trainer.sau_state, trainer.sparsity_masks
    if scope == "global":
        total = sum(masks.num_surviving(n) for n in masks.names)
        assert sum(int(state.mask(n).sum()) for n in masks.names) == topk_count(total, 0.3)
    for n in masks.names:
        g, m = state.mask(n), masks.get(n)
        assert not (g & ~m).any()
        if scope == "matrix":
            assert int(g.sum()) == topk_count(int(m.sum()), 0.3)
        elif scope == "row":
            assert g.sum(1).tolist() == [topk_count(int(c), 0.3) for c in m.sum(1)]


def test_k1_alpha0_equals_plain_bit_for_bit(tokenizer, tiny_splits, tmp_path):
    base = sparse_model(tokenizer).state_dict()
    results = []
    for sau in (False, True):
        model = sparse_model(tokenizer, state_dict=base)
        trainer = make_trainer(model, tokenizer, qa(tiny_splits, "forget10", 8), qa(tiny_splits, "retain90", 16),
                               tmp_path / str(sau), sau=sau, sau_topk=1.0, sau_alpha=0.0, max_steps=4,
                               gradient_accumulation_steps=2)
        trainer.train()
        results.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


def test_reweight_applied_once_per_optimizer_step(tokenizer, tiny_splits, tmp_path):
    """With accumulation, the SAU gradient is exactly (accumulated plain gradient) * G * W: no compounding."""
    base = sparse_model(tokenizer).state_dict()
    recorded = {}
    for sau in (False, True):
        model = sparse_model(tokenizer, state_dict=base)
        rec = GradRecorder(model)
        trainer = make_trainer(model, tokenizer, qa(tiny_splits, "forget10", 8), qa(tiny_splits, "retain90", 16),
                               tmp_path / str(sau), sau=sau, sau_alpha=1.0, max_steps=1, max_grad_norm=0.0,
                               gradient_accumulation_steps=4, per_device_train_batch_size=2, callbacks=[rec])
        trainer.train()
        recorded[sau] = (rec.grads[0], trainer)
    plain, (sau_grads, trainer) = recorded[False][0], recorded[True]
    for name, g_plain in plain.items():
        w = trainer.sau_state.weight(name)
        assert float(w) > 1.0
        expected = g_plain * trainer.sau_state.mask(name) * w
        torch.testing.assert_close(sau_grads[name], expected, rtol=1e-5, atol=1e-9)


def test_mask_and_reweight_come_before_clipping(tokenizer, tiny_splits, tmp_path):
    """The clipped norm is the norm of the SAU gradient (G * W applied), not of the raw gradient."""
    base = sparse_model(tokenizer).state_dict()
    plain_model = sparse_model(tokenizer, state_dict=base)
    rec = GradRecorder(plain_model, all_params=True)
    forget, retain = qa(tiny_splits, "forget10", 8), qa(tiny_splits, "retain90", 16)
    make_trainer(plain_model, tokenizer, forget, retain, tmp_path / "plain", sau=False, max_steps=1,
                 max_grad_norm=0.0, gradient_accumulation_steps=2, callbacks=[rec]).train()
    raw = rec.grads[0]  # M applied, no clipping
    trainer = make_trainer(sparse_model(tokenizer, state_dict=base), tokenizer, forget, retain, tmp_path / "sau",
                           sau_alpha=1.0, max_steps=1, max_grad_norm=1e-3, gradient_accumulation_steps=2)
    trainer.train()
    state = trainer.sau_state
    sq = 0.0
    for name, g in raw.items():
        if name in state.selected:
            g = g * state.mask(name) * state.weight(name)
        sq += float(g.double().square().sum())
    logged = next(h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h)
    assert logged == pytest.approx(sq**0.5, rel=1e-4)
    assert logged != pytest.approx(sum(float(g.double().square().sum()) for g in raw.values()) ** 0.5, rel=1e-2)




def test_rezero_after_every_step_even_if_something_moves_pruned_weights(tokenizer, tiny_splits, tmp_path):
    """Like bitsandbytes' 8-bit AdamW, a callback moves pruned entries before each step; they end at zero."""
    from transformers import TrainerCallback

    model = sparse_model(tokenizer)
    masks = SparsityMasks.from_model(model)
    seen = []

    class Mover(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kw):
            seen.append(_pruned_all_zero(model, masks))
            with torch.no_grad():
                for n, p in prunable_parameters(model).items():
                    p[~masks.get(n)] = 0.5

    class UnknownAdamW(torch.optim.AdamW):  # not known to keep zeros (a subclass may change the step): re-zeroed
        pass

    from sau_trainer import SAUConfig, SAUTrainer

    args = SAUConfig(output_dir=str(tmp_path), report_to=[], per_device_train_batch_size=4, max_steps=3,
                     save_strategy="no", disable_tqdm=True, seed=0, lr_scheduler_type="constant")
    trainer = SAUTrainer(model, args, forget_dataset=qa(tiny_splits, "forget10", 8),
                         retain_dataset=qa(tiny_splits, "retain90", 8), processing_class=tokenizer, callbacks=[Mover()],
                         optimizer_cls_and_kwargs=(UnknownAdamW, {"lr": 1e-3}))
    trainer.train()
    assert seen == [True, True, True]  # re-zeroed after each step, before the next one
    assert _pruned_all_zero(model, masks)


@pytest.mark.parametrize("optim", ["adamw_torch", pytest.param("adamw_bnb_8bit", marks=pytest.mark.skipif(
    not HAS_BNB, reason="bitsandbytes"))])
@pytest.mark.parametrize("redistribution", ["matrix", "param"])
def test_update_mode_keeps_zeros_in_bf16(tokenizer, tiny_splits, tmp_path, optim, redistribution):
    model = sparse_model(tokenizer)
    masks = SparsityMasks.from_model(model)
    trainer = make_trainer(model, tokenizer, qa(tiny_splits, "forget10", 8), qa(tiny_splits, "retain90", 8), tmp_path,
                           optim=optim, bf16=True, sau_redistribution_target="update", sau_alpha=1.0,
                           sau_redistribution=redistribution, weight_decay=0.1, gradient_accumulation_steps=2,
                           per_device_train_batch_size=2, max_steps=2)
    trainer.train()
    assert _pruned_all_zero(model, masks)
