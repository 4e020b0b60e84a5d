import math

import pytest
import torch

from sau_trainer.pruning.nm import (
    Structure,
    check_nm,
    lowest_k_mask,
    nm_mask,
    num_pruned,
    parse_structure,
    resolve_sparsity,
)


def test_parse_structure():
    assert parse_structure("unstructured") == Structure()
    assert parse_structure(None) == Structure()
    assert parse_structure("2:4") == Structure(2, 4)
    assert parse_structure(" 4 : 8 ") == Structure(4, 8)
    assert str(parse_structure("1:4")) == "1:4" and parse_structure("1:4").sparsity == 0.75
    for bad in ("2-4", "abc", "4:4", "0:4", "5:4", "2:"):
        with pytest.raises(ValueError, match="structure"):
            parse_structure(bad)


def test_resolve_sparsity():
    assert resolve_sparsity(0.0, Structure()) == 0.0
    assert resolve_sparsity(None, Structure()) == 0.5
    assert resolve_sparsity(None, Structure(1, 4)) == 0.75
    assert resolve_sparsity(0.5, Structure(4, 8)) == 0.5
    for bad in (1.0, 1.5, -0.1, math.nan, "x"):
        with pytest.raises(ValueError, match="sparsity"):
            resolve_sparsity(bad, Structure())
    with pytest.raises(ValueError, match="implies sparsity 0.75"):
        resolve_sparsity(0.5, Structure(1, 4))


def test_lowest_k_mask_counts_and_ties():
    scores = torch.tensor([[3.0, 1.0, 1.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    keep = lowest_k_mask(scores, 2, dim=1)
    assert keep.tolist() == [[True, False, False, True], [False, False, True, True]]  # ties: lower index first
    keep = lowest_k_mask(scores, 5, dim=None)
    assert int((~keep).sum()) == 5 and keep[0, 0] and keep[0, 3] and keep[0, 1].item() is False
    assert lowest_k_mask(scores, 0, dim=None).all()


@pytest.mark.parametrize("dim", [None, 0, 1, -1])
def test_lowest_k_mask_agrees_with_a_stable_sort(dim):
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (6, 9), generator=g).float()  # many ties
    for k in (0, 1, 4, 8, 9):
        if dim is None:
            k = k * 6
            ref = torch.ones(54, dtype=torch.bool)
            ref[torch.sort(scores.reshape(-1), stable=True).indices[:k]] = False
            ref = ref.view(6, 9)
        else:
            if k > scores.shape[dim]:
                continue
            ref = torch.ones_like(scores, dtype=torch.bool)
            ref.scatter_(dim, torch.sort(scores, dim=dim, stable=True).indices.narrow(dim, 0, k), False)
        assert torch.equal(lowest_k_mask(scores, k, dim=dim), ref), (k, dim)


def test_nm_mask_exact_and_keeps_largest():
    torch.manual_seed(0)
    scores = torch.rand(16, 32)
    for n, m in ((2, 4), (4, 8), (1, 4)):
        keep = nm_mask(scores, n, m)
        assert check_nm(keep, n, m)
        groups_s = scores.reshape(16, -1, m)
        groups_k = keep.reshape(16, -1, m)
        kept_min = torch.where(groups_k, groups_s, torch.inf).amin(-1)
        dropped_max = torch.where(groups_k, -torch.inf, groups_s).amax(-1)
        assert (kept_min > dropped_max).all()
    assert not check_nm(torch.ones(2, 8, dtype=torch.bool), 2, 4)
    with pytest.raises(ValueError, match="multiple of 4"):
        nm_mask(torch.rand(4, 6), 2, 4)


def test_num_pruned_rounds_down_without_float_noise():
    assert num_pruned(10, 0.3) == 3  # 10 * 0.3 = 2.9999999999999996 in floats
    assert num_pruned(7, 0.5) == 3
