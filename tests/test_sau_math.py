import math
from fractions import Fraction

import pytest
import torch

from sau_trainer.sau import (
    SAUState,
    build_sau_state,
    redistribution_weights,
    select_topk,
    select_topk_global,
    topk_count,
)


def _case(shape=(6, 10), seed=0, sparsity=0.5, ties=False):
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(shape, generator=g)
    if ties:
        s = (s * 4).floor()  # few distinct values: many ties
    m = torch.rand(shape, generator=g) >= sparsity
    return s, m


def _reference_topk(s, m, k):
    """Stable sort on (-s, flat index) over the surviving entries, in float64 Python."""
    alive = [(-float(s.view(-1)[i]), i) for i in range(s.numel()) if m.view(-1)[i]]
    quota = math.ceil(Fraction(str(k)) * len(alive))
    out = torch.zeros(s.numel(), dtype=torch.bool)
    for _, i in sorted(alive)[:quota]:
        out[i] = True
    return out.view(s.shape)


def test_topk_count_reads_k_as_a_decimal():
    assert topk_count(10, 0.3) == 3  # 0.3 * 10 == 3.0000000000000004 in floats
    assert topk_count(11, 0.3) == 4
    assert topk_count(7, 1.0) == 7
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        topk_count(10, 0.0)


@pytest.mark.parametrize("k", [0.3, 0.5, 1.0, 0.01])
@pytest.mark.parametrize("ties", [False, True])
def test_matrix_scope_matches_reference(k, ties):
    s, m = _case(ties=ties)
    g = select_topk(s, m, k, "matrix")
    assert torch.equal(g, _reference_topk(s, m, k))
    assert int(g.sum()) == math.ceil(Fraction(str(k)) * int(m.sum()))
    assert not (g & ~m).any()  # G implies M


@pytest.mark.parametrize("k", [0.3, 0.75])
def test_row_scope_counts_per_row(k):
    s, m = _case((9, 17), seed=1, ties=True)
    g = select_topk(s, m, k, "row")
    for r in range(s.shape[0]):
        assert torch.equal(g[r], _reference_topk(s[r], m[r], k))
        assert int(g[r].sum()) == math.ceil(Fraction(str(k)) * int(m[r].sum()))


@pytest.mark.parametrize("ties", [False, True])
def test_global_scope_matches_concatenated_reference(ties):
    cases = {f"w{i}": _case((5 + i, 7), seed=i, ties=ties) for i in range(3)}
    sal = {n: c[0] for n, c in cases.items()}
    surv = {n: c[1] for n, c in cases.items()}
    got = select_topk_global(sal, surv, 0.3)
    flat_s = torch.cat([sal[n].reshape(-1) for n in cases])
    flat_m = torch.cat([surv[n].reshape(-1) for n in cases])
    ref = _reference_topk(flat_s, flat_m, 0.3)
    assert torch.equal(torch.cat([got[n].reshape(-1) for n in cases]), ref)


def test_redistribution_matrix_row_param_none_by_hand():
    s = torch.tensor([[4.0, 3.0, 2.0, 1.0], [1.0, 1.0, 6.0, 0.0]])
    m = torch.tensor([[True, True, False, False], [True, False, True, True]])
    g = torch.tensor([[True, False, False, False], [False, False, True, False]])
    # I_P = 2 + 1 + 1 = 4 ; I_G = 4 + 6 = 10
    w = redistribution_weights(s, m, g, alpha=0.5, mode="matrix")
    assert w.dim() == 0 and float(w) == pytest.approx(1 + 0.5 * 4 / 10)
    w_row = redistribution_weights(s, m, g, alpha=0.5, mode="row")
    assert w_row.shape == (2, 1)
    assert w_row[:, 0].tolist() == pytest.approx([1 + 0.5 * 3 / 4, 1 + 0.5 * 1 / 6])
    w_par = redistribution_weights(s, m, g, alpha=0.5, mode="param")
    mean_g = 10 / 2
    assert float(w_par[0, 0]) == pytest.approx(1 + 0.5 * 0.4 * min(4 / mean_g, 10))
    assert float(w_par[1, 2]) == pytest.approx(1 + 0.5 * 0.4 * min(6 / mean_g, 10))
    assert float(w_par[0, 1]) == 1.0  # not selected
    assert redistribution_weights(s, m, g, alpha=0.5, mode="none") is None


def test_param_redistribution_is_capped_at_ten():
    s = torch.tensor([1000.0, 1.0, 1.0, 1.0, 5.0])
    m = torch.tensor([True, True, True, True, False])
    g = torch.tensor([True, True, True, True, False])
    w = redistribution_weights(s, m, g, alpha=1.0, mode="param")
    ratio = 5.0 / 1003.0
    assert float(w[0]) == pytest.approx(1 + ratio * min(1000 / (1003 / 4), 10))
    s2 = torch.tensor([1e6, 1.0, 1.0] + [1.0] * 20 + [50.0])
    m2 = torch.ones(24, dtype=torch.bool)
    m2[-1] = False
    w2 = redistribution_weights(s2, m2, m2, alpha=1.0, mode="param")
    assert float(w2[0]) == pytest.approx(1 + (50 / float(s2[:-1].double().sum())) * 10)


def test_zero_selected_saliency_gives_w_one():
    s = torch.zeros(3, 4)
    m = torch.ones(3, 4, dtype=torch.bool)
    m[0, 0] = False
    g = select_topk(s, m, 0.5)
    assert float(redistribution_weights(s, m, g, 0.1, "matrix")) == 1.0
    assert torch.equal(redistribution_weights(s, m, g, 0.1, "row"), torch.ones(3, 1))


def test_nan_saliency_is_rejected():
    s, m = _case()
    s[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        select_topk(s, m, 0.3)


def test_state_save_load_roundtrip(tmp_path):
    sal = {f"w{i}": _case((8, 9), seed=i)[0] for i in range(2)}
    surv = {f"w{i}": _case((8, 9), seed=i)[1] for i in range(2)}
    state = build_sau_state(sal, surv, 0.3, 0.1, "row", "row", settings={"sau_topk": 0.3})
    state.extra["ref"] = torch.arange(5.0)
    state.save(tmp_path)
    back = SAUState.load(tmp_path)
    assert back.settings == {"sau_topk": 0.3} and back.stats == state.stats
    for n in sal:
        assert torch.equal(back.mask(n), state.mask(n))
        assert torch.equal(back.weights[n], state.weights[n])
    assert torch.equal(back.extra["ref"], torch.arange(5.0))


@pytest.mark.parametrize("scope", ["matrix", "row"])
@pytest.mark.parametrize("k", [1 / 3, 0.1 * 3])
def test_many_digit_k_on_a_large_matrix(scope, k):
    """k's exact fraction has a 16-digit numerator: the count must not overflow."""
    g = torch.Generator().manual_seed(0)
    s = torch.rand(256, 1024, generator=g)
    m = torch.rand(256, 1024, generator=g) >= 0.5
    sel = select_topk(s, m, k, scope)
    if scope == "matrix":
        assert int(sel.sum()) == topk_count(int(m.sum()), k) > 0
    else:
        assert sel.sum(1).tolist() == [topk_count(int(c), k) for c in m.sum(1)]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_apply_sau_writes_exact_zeros_outside_g_whatever_grad_and_w_hold(bad):
    """The DeepSpeed path's ``grad * G * W``: entries outside G are +0.0 even where the gradient or a per-entry W
    is NaN or infinite (``nan * 0`` and ``inf * 0`` are NaN: the zeros must be written after the product)."""
    from sau_trainer.sau import apply_sau_

    grad = torch.randn(4, 6)
    selected = torch.rand(4, 6, generator=torch.Generator().manual_seed(1)) > 0.5
    weight = torch.full((4, 6), 1.5)
    grad[~selected] = bad
    weight[~selected] = bad
    out = apply_sau_(grad.clone(), selected, weight)
    assert torch.equal(out[~selected], torch.zeros(int((~selected).sum())))
    assert not torch.signbit(out[~selected]).any()
    assert torch.equal(out[selected], grad[selected] * 1.5)


@pytest.mark.parametrize("w_shape", [(), (6, 1), (6, 10)])
def test_apply_sau_keeps_w_in_fp32_for_bf16_gradients(w_shape):
    """``grad * G * W`` for a bf16 gradient is the float64 product rounded once to bf16 (a bf16 copy of W=1.12
    would be 1.1171875), and a per-entry W is used as it is, not copied to the gradient's dtype."""
    from sau_trainer.sau import apply_sau_

    g = torch.Generator().manual_seed(0)
    grad = (torch.randn(6, 10, generator=g) * 3).to(torch.bfloat16)
    selected = torch.rand(6, 10, generator=g) > 0.3
    weight = torch.full(w_shape, 1.12) + (torch.rand(w_shape, generator=g) * 1e-3 if w_shape else 0.0)
    expected = torch.where(selected, grad.double() * weight.double(), torch.zeros((), dtype=torch.float64))
    out = apply_sau_(grad.clone(), selected, weight)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, expected.to(torch.bfloat16))
    rounded_w = torch.where(selected, grad.double() * weight.to(torch.bfloat16).double(), torch.zeros(()).double())
    assert not torch.equal(out, rounded_w.to(torch.bfloat16)), "the test must tell the two roundings apart"
