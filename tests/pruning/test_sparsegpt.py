"""SparseGPT against a float64 optimal-brain-surgeon loop written out column by column."""

import pytest
import torch

from sau_trainer.pruning import magnitude_mask, sparsegpt_prune, wanda_mask
from sau_trainer.pruning.nm import check_nm, lowest_k_mask, num_pruned


def reference_sparsegpt(W, H, sparsity, n=0, m=0, blocksize=128, percdamp=0.01):
    """Float64 SparseGPT without the Cholesky trick or lazy batching.

    At column j the inverse Hessian of the not-yet-processed columns F = j..end is inverted directly;
    each pruned weight w of column j is removed with the OBS update ``W[r, F] -= w / Hinv_F[0,0] *
    Hinv_F[0, :]``. Masks: unstructured per block of `blocksize` columns, chosen at the block start;
    N:M per group at the group start; saliency ``w^2 / [inv(H[c:, c:])]_00``.
    """
    W = W.double().clone()
    H = H.double().clone()
    rows, cols = W.shape
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    H += percdamp * torch.diagonal(H).mean() * torch.eye(cols, dtype=torch.float64)
    inv_diag = torch.tensor([torch.linalg.inv(H[c:, c:])[0, 0] for c in range(cols)], dtype=torch.float64)
    keep = torch.ones(rows, cols, dtype=torch.bool)
    total = rows * cols
    for j in range(cols):
        if not m and j % blocksize == 0:
            end = min(j + blocksize, cols)
            k = num_pruned(total, sparsity * end / cols) - num_pruned(total, sparsity * j / cols)
            keep[:, j:end] = lowest_k_mask(W[:, j:end] ** 2 / inv_diag[j:end], k, dim=None)
        if m and j % m == 0:
            keep[:, j:j + m] = lowest_k_mask(W[:, j:j + m] ** 2 / inv_diag[j:j + m], m - n, dim=1)
        Hinv_F = torch.linalg.inv(H[j:, j:])
        for r in range(rows):
            if not keep[r, j]:
                W[r, j:] -= W[r, j] / Hinv_F[0, 0] * Hinv_F[0, :]
                W[r, j] = 0.0
    return W, keep


def layer_problem(rows=12, cols=32, tokens=96, seed=0, dead=(5,)):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(tokens, cols, generator=g) @ (torch.eye(cols) + 0.5 * torch.randn(cols, cols, generator=g))
    X[:, list(dead)] = 0.0  # an input that never fires
    W = torch.randn(rows, cols, generator=g)
    return W, X, X.T @ X / tokens


@pytest.mark.parametrize("sparsity,n,m,blocksize", [(0.5, 0, 0, 8), (0.3, 0, 0, 12), (0.5, 2, 4, 8), (0.5, 4, 8, 16)])
def test_matches_float64_reference(sparsity, n, m, blocksize):
    W, X, H = layer_problem()
    ref_W, ref_keep = reference_sparsegpt(W, H, sparsity, n, m, blocksize)
    # in float64 the lazy, Cholesky-based implementation is the same computation up to rounding
    new64, keep64 = sparsegpt_prune(W.double(), H.double(), sparsity, n, m, blocksize=blocksize)
    assert torch.equal(keep64, ref_keep)
    torch.testing.assert_close(new64, ref_W, rtol=1e-9, atol=1e-9)
    # the float32 path (the one used on models) picks the same mask and agrees to float32 precision
    new32, keep32 = sparsegpt_prune(W, H, sparsity, n, m, blocksize=blocksize)
    assert new32.dtype == torch.float32
    assert torch.equal(keep32, ref_keep)
    torch.testing.assert_close(new32.double(), ref_W, rtol=1e-4, atol=1e-4)
    # pruned entries exactly zero, exact counts, and the survivors really were updated
    assert torch.equal(new32 != 0, keep32)
    if m:
        assert check_nm(keep32, n, m)
    else:
        assert int((~keep32).sum()) == num_pruned(W.numel(), sparsity)
    assert not torch.allclose(new32[keep32], W[keep32])


def test_unstructured_count_is_exact_per_matrix_with_uneven_blocks():
    W, _, H = layer_problem(rows=7, cols=50, dead=())
    for sparsity in (0.1, 0.37, 0.5, 0.9):
        _, keep = sparsegpt_prune(W, H, sparsity, blocksize=16)
        assert int((~keep).sum()) == num_pruned(W.numel(), sparsity)


def test_reconstruction_beats_magnitude_and_wanda():
    W, X, H = layer_problem(rows=32, cols=64, tokens=256, seed=1, dead=())

    def err(new):
        return float(((W - new) @ X.T).pow(2).sum() / (W @ X.T).pow(2).sum())

    for n, m in ((0, 0), (2, 4)):
        sgpt, _ = sparsegpt_prune(W, H, 0.5, n, m, blocksize=16)
        mag = W * magnitude_mask(W, 0.5, n, m)
        wan = W * wanda_mask(W, X.pow(2).sum(0), 0.5, n, m)
        assert err(sgpt) < 0.7 * err(mag)
        assert err(sgpt) < 0.8 * err(wan)


def test_zero_sparsity_leaves_weight_alone_and_bad_shapes_raise():
    W, _, H = layer_problem()
    new, keep = sparsegpt_prune(W, H, 0.0)
    assert keep.all() and torch.allclose(new, W, atol=1e-5)
    with pytest.raises(ValueError, match="hessian has shape"):
        sparsegpt_prune(W, H[:-1, :-1], 0.5)
    with pytest.raises(ValueError, match="multiples of 4"):
        sparsegpt_prune(W[:, :30], H[:30, :30], 0.5, 2, 4)


def test_bfloat16_weight_keeps_dtype_and_zeros():
    W, _, H = layer_problem()
    new, keep = sparsegpt_prune(W.bfloat16(), H, 0.5, 2, 4, blocksize=8)
    assert new.dtype == torch.bfloat16
    assert torch.equal(new == 0, ~keep)


def test_indefinite_hessian_gets_more_dampening_and_nan_is_a_clear_error(caplog):
    W, _, H = layer_problem(dead=())
    H = H.clone()
    H[0, 1] = H[1, 0] = 3 * H[0, 0]  # not positive definite with 1% dampening
    with caplog.at_level("WARNING"):
        new, keep = sparsegpt_prune(W, H, 0.5, blocksize=8)
    assert "dampening" in caplog.text and torch.isfinite(new).all()
    assert int((~keep).sum()) == W.numel() // 2
    with pytest.raises(ValueError, match="could not factorise"):
        sparsegpt_prune(W, torch.full_like(H, float("nan")), 0.5)
