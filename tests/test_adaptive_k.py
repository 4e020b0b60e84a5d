"""Adaptive k (a study option, `sau_topk_mass`): the selection holds the stated saliency mass with the fewest
entries, alone and inside the trainer; the study options are validated."""

import pytest
import torch
from sau_testing import make_trainer, qa, saliency_callback, sparse_model

from sau_trainer import SAUConfig
from sau_trainer.masks import Layout
from sau_trainer.sau import select_mass


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
    cb = saliency_callback(trainer)
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
