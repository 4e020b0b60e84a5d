"""Retain-aware saliency (a study option): the score f / (r + eps * mean r), against a float64 Fisher reference
inside the trainer, and its need for a retain set."""

import copy

import pytest
import torch
from sau_testing import make_trainer, qa, saliency_callback, sparse_model

from sau_trainer.masks import prunable_parameters
from sau_trainer.objectives import forward_nll
from sau_trainer.objectives.losses import mean_token_nll
from sau_trainer.sau import retain_aware_score, select_topk, topk_count


# --------------------------------------------------------------------------- (a) retain-aware saliency
def test_retain_aware_score_formula():
    f = torch.tensor([[4.0, 1.0], [0.0, 2.0]])
    r = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    floor = 0.5 * r.double().mean()
    want = f.double() / (r.double() + floor)
    torch.testing.assert_close(retain_aware_score(f, r, eps=0.5).double(), want, rtol=1e-6, atol=0)
    # scale-free: rescaling both saliencies leaves the score's order (and value, up to the forget scale) alone
    torch.testing.assert_close(retain_aware_score(3 * f, 3 * r, eps=0.5), retain_aware_score(f, r, eps=0.5))
    assert torch.equal(retain_aware_score(f, torch.zeros_like(r)), f)  # no retain signal: the forget saliency
    with pytest.raises(ValueError, match="saliency_retain_eps"):
        retain_aware_score(f, r, eps=0.0)


def test_retain_aware_saliency_matches_float64_reference(tokenizer, tiny_splits, tmp_path):
    model = sparse_model(tokenizer, attn_implementation="eager")
    forget, retain = qa(tiny_splits, "forget10", 10), qa(tiny_splits, "retain90", 40)
    trainer = make_trainer(model, tokenizer, forget, retain, tmp_path, objective="ga", saliency_retain_aware=True,
                           saliency_retain_eps=0.05, per_device_train_batch_size=4, sau_topk=0.3)
    cb = saliency_callback(trainer)
    got_f, got_r = cb.saliency(), cb.retain_saliency()
    state = cb.build_state()

    ref_model = copy.deepcopy(model).double()
    ref_params = prunable_parameters(ref_model)

    def fisher(rows):
        acc = {n: torch.zeros_like(p) for n, p in ref_params.items()}
        batches = list(trainer.saliency_batches(max_examples=len(forget), rows=rows))
        for batch in batches:
            loss = mean_token_nll(*forward_nll(ref_model, batch)[:2])
            for n, g in zip(ref_params, torch.autograd.grad(loss, list(ref_params.values())), strict=True):
                acc[n] += g.square()
        return {n: v / len(batches) for n, v in acc.items()}, batches

    ref_f, _ = fisher(trainer.train_dataset.rows)
    ref_r, r_batches = fisher(trainer.retain_rows)
    assert sum(b["input_ids"].shape[0] for b in r_batches) == len(forget)  # as many retain examples as forget ones
    agree, total = 0, 0
    for n in ref_f:
        tol = dict(rtol=2e-3, atol=1e-3)
        torch.testing.assert_close(got_f[n].double(), ref_f[n], rtol=tol["rtol"], atol=tol["atol"] * float(ref_f[n].max()))
        torch.testing.assert_close(got_r[n].double(), ref_r[n], rtol=tol["rtol"], atol=tol["atol"] * float(ref_r[n].max()))
        ref_score = ref_f[n] / (ref_r[n] + 0.05 * ref_r[n].mean())
        score = retain_aware_score(got_f[n], got_r[n], 0.05).double()
        torch.testing.assert_close(score, ref_score, rtol=5e-3, atol=2e-3 * float(ref_score.max()))
        m = trainer.sparsity_masks.get(n)
        g, g_ref = state.mask(n), select_topk(ref_score, m, 0.3)
        assert int(g.sum()) == topk_count(int(m.sum()), 0.3)  # the count is k's
        agree, total = agree + int((g & g_ref).sum()), total + int(g_ref.sum())
        # it selects by the ratio, not by the forget saliency alone
        assert not torch.equal(g, select_topk(got_f[n], m, 0.3))
    assert agree / total > 0.99
    assert state.settings["saliency_retain_aware"] is True


def test_retain_aware_needs_a_retain_set(tokenizer, tiny_splits, tmp_path):
    model = sparse_model(tokenizer)
    with pytest.raises(ValueError, match="needs a retain set"):
        make_trainer(model, tokenizer, qa(tiny_splits, "forget10", 4), None, tmp_path, objective="ga",
                     saliency_retain_aware=True)
