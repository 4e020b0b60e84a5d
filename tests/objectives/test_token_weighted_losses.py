"""WGA and SatImp: per-token weights and losses against float64 references on a tiny batch; stop-gradient
weights; the defaults (SatImp reproduces open-unlearning's yaml weights, gamma 0.1 and alpha 1.0)."""

import math

import pytest
import torch

from sau_trainer import SAUConfig
from sau_trainer.objectives import OBJECTIVES
from sau_trainer.objectives.losses import token_nll
from sau_trainer.objectives.satimp import satimp_loss, satimp_weights
from sau_trainer.objectives.wga import wga_loss, wga_weights


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 5, 7, generator=g) * 3
    labels = torch.tensor([[-100, -100, 3, 1, 6], [-100, 2, 0, -100, -100]])
    return logits, labels


def _reference(logits, labels, weight_of_p):
    """float64 loop: -(1/|A|) sum_{t in A} w(p_t) * (-log p_t) over shifted supervised positions."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    total, n, weights = 0.0, 0, []
    for i in range(labels.shape[0]):
        for t in range(1, labels.shape[1]):
            y = int(labels[i, t])
            if y == -100:
                continue
            lp = float(logp[i, t - 1, y])
            w = weight_of_p(math.exp(lp))
            weights.append(w)
            total += w * -lp
            n += 1
    return -total / n, weights


@pytest.mark.parametrize("beta", [1.0, 0.5, 3.0])
def test_wga_weights_and_loss_match_float64(beta):
    logits, labels = _batch()
    nll, mask = token_nll(logits, labels)
    want_loss, want_w = _reference(logits, labels, lambda p: p**beta)
    got_w = wga_weights(nll, beta)[mask].double()
    torch.testing.assert_close(got_w, torch.tensor(want_w, dtype=torch.float64), rtol=1e-5, atol=1e-7)
    assert float(wga_loss(nll, mask, beta)) == pytest.approx(want_loss, rel=1e-5)


@pytest.mark.parametrize("b1,b2", [(5.0, 1.0), (1.0, 2.0), (0.0, 1.0)])
def test_satimp_weights_and_loss_match_float64(b1, b2):
    logits, labels = _batch(1)
    nll, mask = token_nll(logits, labels)
    want_loss, want_w = _reference(logits, labels, lambda p: p**b1 * (1 - p) ** b2)
    got_w = satimp_weights(nll, b1, b2)[mask].double()
    torch.testing.assert_close(got_w, torch.tensor(want_w, dtype=torch.float64), rtol=1e-5, atol=1e-7)
    assert float(satimp_loss(nll, mask, b1, b2)) == pytest.approx(want_loss, rel=1e-5)


def test_satimp_weight_vanishes_on_memorised_tokens():
    """p^5 (1 - p) at p = 0.999 is about 1e-3, and it peaks at p = 5/6: the reason SatImp starts slowly."""
    p = torch.tensor([0.999, 5 / 6, 0.1], dtype=torch.float64)
    w = satimp_weights(-p.log(), 5.0, 1.0)
    torch.testing.assert_close(w, p**5 * (1 - p))
    assert float(w[0]) < 1e-3 < float(w[1])


@pytest.mark.parametrize("which", ["wga", "satimp"])
def test_weights_carry_no_gradient(which):
    """The gradient w.r.t. the logits is that of -(1/|A|) sum w_t * nll_t with w_t held constant."""
    logits, labels = _batch(2)
    logits = logits.double().requires_grad_(True)
    nll, mask = token_nll(logits, labels)
    loss = wga_loss(nll, mask, 2.0) if which == "wga" else satimp_loss(nll, mask, 5.0, 1.0)
    (grad,) = torch.autograd.grad(loss, logits)
    fixed = (wga_weights(nll, 2.0) if which == "wga" else satimp_weights(nll, 5.0, 1.0)).detach()
    nll2, _ = token_nll(logits, labels)
    (want,) = torch.autograd.grad(-(fixed * nll2 * mask).sum() / mask.sum(), logits)
    torch.testing.assert_close(grad, want)


def test_defaults(tmp_path):
    def objective(name):
        return OBJECTIVES[name](SAUConfig(output_dir=str(tmp_path), report_to=[], objective=name))

    wga, satimp = objective("wga"), objective("satimp")
    assert (wga.forget_weight, wga.retain_weight, wga.args.wga_beta) == (1.0, 1.0, 1.0)
    assert (satimp.forget_weight, satimp.retain_weight) == (0.1, 1.0)  # OU's yaml, not its class default
    assert (satimp.args.satimp_beta1, satimp.args.satimp_beta2) == (5.0, 1.0)
    assert not wga.needs_reference_model and not satimp.needs_reference_model


@pytest.mark.parametrize("field", ["wga_beta", "satimp_beta1", "satimp_beta2"])
def test_negative_exponent_is_rejected(tmp_path, field):
    with pytest.raises(ValueError, match=rf"{field}=-1.0 must be >= 0"):
        SAUConfig(output_dir=str(tmp_path), report_to=[], **{field: -1.0})
