import pytest
import torch

from sau_trainer.pruning import magnitude_mask, wanda_mask, wanda_scores
from sau_trainer.pruning.calibration import SquaredNormAccumulator
from sau_trainer.pruning.nm import check_nm


def test_scores_are_weight_times_input_norm():
    W = torch.tensor([[1.0, -2.0], [-3.0, 0.5]])
    X = torch.tensor([[3.0, 0.0], [4.0, 1.0]])  # column norms 5 and 1
    acc = SquaredNormAccumulator(2, "cpu")
    acc.add(X[:1])
    acc.add(X[1:])
    torch.testing.assert_close(acc.value(), torch.tensor([25.0, 1.0]))
    torch.testing.assert_close(wanda_scores(W, acc.value()), torch.tensor([[5.0, 2.0], [15.0, 0.5]]))


def test_exact_per_row_and_nm():
    torch.manual_seed(0)
    W, norms = torch.randn(16, 40), torch.rand(40) * 10
    for sparsity in (0.25, 0.5, 0.7):
        keep = wanda_mask(W, norms, sparsity)
        assert (keep.sum(1) == 40 - int(40 * sparsity)).all()  # every row loses the same number
    keep = wanda_mask(W, norms, 0.5, 2, 4)
    assert check_nm(keep, 2, 4)
    # within a row the kept scores all beat the dropped ones
    s = wanda_scores(W, norms)
    keep = wanda_mask(W, norms, 0.5)
    assert (torch.where(keep, s, torch.inf).amin(1) >= torch.where(keep, -torch.inf, s).amax(1)).all()
    with pytest.raises(ValueError, match="one entry per input channel"):
        wanda_mask(W, norms[:-1], 0.5)


@pytest.mark.parametrize("n,m", [(0, 0), (2, 4)])
def test_planted_large_norm_channels_are_kept(n, m):
    """Small weights on a few very active inputs matter: Wanda keeps them, magnitude drops them."""
    g = torch.Generator().manual_seed(0)
    rows, cols, planted = 32, 64, [3, 17, 40, 41]
    X = torch.randn(512, cols, generator=g)
    X[:, planted] *= 30.0
    W = torch.randn(rows, cols, generator=g)
    small = 0.2 + 0.1 * torch.rand(rows, len(planted), generator=g)  # well below the median |w| of 0.67
    W[:, planted] = small * torch.randn(rows, len(planted), generator=g).sign()
    acc = SquaredNormAccumulator(cols, "cpu")
    acc.add(X)

    wanda_keep = wanda_mask(W, acc.value(), 0.5, n, m)
    mag_keep = magnitude_mask(W, 0.5, n, m)
    assert wanda_keep[:, planted].float().mean() == 1.0
    assert mag_keep[:, planted].float().mean() < 0.2

    def out_err(keep):
        return float(((W - W * keep) @ X.T).pow(2).sum() / (W @ X.T).pow(2).sum())

    assert out_err(wanda_keep) < 0.5 * out_err(mag_keep)
