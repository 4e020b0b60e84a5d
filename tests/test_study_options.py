"""The study's three candidate improvements (issue 17): retain-aware saliency, the moving mask, adaptive k."""

import copy
import importlib.util

import pytest
import torch
from sau_testing import make_trainer, qa, sparse_model
from transformers import TrainerCallback

from sau_trainer import SAUConfig
from sau_trainer.callbacks import SaliencyCallback
from sau_trainer.masks import Layout, SparsityMasks, prunable_parameters
from sau_trainer.moving_mask import nm_pattern, project_nm, project_topk, unit_counts
from sau_trainer.objectives import forward_nll
from sau_trainer.objectives.losses import mean_token_nll
from sau_trainer.sau import retain_aware_score, select_mass, select_topk, topk_count

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
OPTIMIZERS = ["adamw_torch", "adamw_torch_fused", "sgd",
              pytest.param("adamw_bnb_8bit", marks=pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes")),
              pytest.param("paged_adamw_8bit", marks=pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes"))]


def _saliency_callback(trainer):
    return next(c for c in trainer.callback_handler.callbacks if isinstance(c, SaliencyCallback))


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
    cb = _saliency_callback(trainer)
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


# --------------------------------------------------------------------------- (c) adaptive k
@pytest.mark.parametrize("scope", ["matrix", "row"])
@pytest.mark.parametrize("experts", [False, True])
@pytest.mark.parametrize("mass", [0.1, 0.5, 0.9, 1.0])
def test_select_mass_selects_the_stated_mass(scope, experts, mass):
    g = torch.Generator().manual_seed(int(mass * 10) + 2 * experts)
    shape = (3, 6, 20) if experts else (6, 20)
    s = torch.rand(shape, generator=g) ** 4  # a skewed distribution
    s[..., 0, :3] = 0.0  # zero saliencies (never needed to reach a mass)
    alive = torch.rand(shape, generator=g) > 0.4
    layout = Layout(experts=True) if experts else Layout()
    sel = select_mass(s, alive, mass, scope, layout)
    assert not (sel & ~alive).any()
    units = (layout.units(s).double(), layout.units(alive), layout.units(sel))
    rows = units[0].shape[0] * (units[0].shape[1] if scope == "row" else 1)
    sv, av, gv = (u.reshape(rows, -1) for u in units)
    for i in range(rows):
        total = float((sv[i] * av[i]).sum())
        chosen = sv[i][gv[i]]
        assert float(chosen.sum()) >= mass * total * (1 - 1e-12)  # holds the stated mass
        if chosen.numel():  # and is the smallest such set: without its smallest entry it falls short
            assert float(chosen.sum() - chosen.min()) < mass * total
            rest = sv[i][av[i] & ~gv[i]]
            assert rest.numel() == 0 or float(chosen.min()) >= float(rest.max())  # the top entries
    if mass == 1.0:
        assert torch.equal(sel, alive & (s > 0))


def test_select_mass_all_zero_unit_selects_nothing():
    assert not select_mass(torch.zeros(4, 5), torch.ones(4, 5, dtype=torch.bool), 0.5).any()


def test_adaptive_k_in_the_trainer(tokenizer, tiny_splits, tmp_path):
    model = sparse_model(tokenizer)
    trainer = make_trainer(model, tokenizer, qa(tiny_splits, "forget10", 8), qa(tiny_splits, "retain90", 8), tmp_path,
                           sau_topk_mass=0.5, max_steps=1)
    cb = _saliency_callback(trainer)
    saliency = cb.saliency()
    state = cb.build_state()
    fractions = []
    for n, s in saliency.items():
        m = trainer.sparsity_masks.get(n)
        g = state.mask(n)
        assert torch.equal(g, select_mass(s, m, 0.5))
        s64 = s.double()
        assert float(s64[g].sum()) >= 0.5 * float(s64[m].sum()) * (1 - 1e-12)
        fractions.append(int(g.sum()) / int(m.sum()))
    assert len({round(f, 4) for f in fractions}) > 1  # k differs between matrices
    assert max(fractions) < 0.5  # saliency is concentrated: half the mass takes fewer than half the entries
    assert state.settings["sau_topk_mass"] == 0.5


def test_study_options_are_validated():
    base = dict(output_dir="/tmp/unused", report_to=[])
    for kw, match in [(dict(sau_topk_mass=0.0), "sau_topk_mass"), (dict(sau_topk_mass=1.5), "sau_topk_mass"),
                      (dict(sau_moving_mask="yes"), "sau_moving_mask"), (dict(saliency_retain_eps=-1), "eps"),
                      (dict(sau_topk_mass=0.5, sau_topk_scope="global"), "global"),
                      (dict(sau_moving_mask="row", sau_topk_scope="global"), "global")]:
        with pytest.raises(ValueError, match=match):
            SAUConfig(**base, **kw)
    # off by default, and then absent from the settings saved with G and W (old checkpoints still resume)
    settings = SAUConfig(**base).sau_settings()
    assert not {"saliency_retain_aware", "sau_topk_mass", "sau_moving_mask"} & set(settings)


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
    state = _saliency_callback(trainer).build_state()
    pruned_selected = 0
    for n in trainer.sparsity_masks.names:
        m, g = trainer.sparsity_masks.get(n), state.mask(n)
        assert int(g.sum()) == topk_count(int(m.sum()), 0.3)  # as many as k gives from the surviving count
        pruned_selected += int((g & ~m).sum())
    assert pruned_selected > 0
