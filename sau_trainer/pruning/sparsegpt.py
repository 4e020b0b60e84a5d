"""SparseGPT: one-shot pruning with Hessian-based mask selection and weight reconstruction
(Frantar and Alistarh, 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
One-Shot", arXiv 2301.00774).

For a linear layer with calibration inputs X, pruning should keep ``W X`` close in the least-squares
sense; the Hessian of that loss (per output row) is ``H = X^T X``. SparseGPT walks the input columns
left to right. For column j it takes the Cholesky row of ``H_F^{-1}`` (F = columns j..end not yet
processed), zeroes the pruned entries of column j and spreads each removed weight's error over the
remaining columns by the optimal-brain-surgeon update ``delta = -w / [H_F^{-1}]_jj * [H_F^{-1}]_j,:``.
Updates are applied lazily in blocks of 128 columns. The mask is chosen by the OBS saliency
``w^2 / [H_F^{-1}]_jj^2`` (with the Cholesky-factor diagonal): for unstructured sparsity once per
block (adaptive mask selection), for N:M at the start of every group of M columns.

Written from the paper; the authors' Apache-2.0 code was only read for facts (1% dampening of the
mean diagonal, block size 128, dead inputs given unit curvature).
"""

from __future__ import annotations

import logging

import torch

from .nm import Structure, lowest_k_mask, num_pruned

logger = logging.getLogger(__name__)


def inverse_hessian_cholesky(hessian: torch.Tensor, percdamp: float = 0.01, dtype=torch.float32) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp I)^{-1}``, ``damp = percdamp * mean(diag H)``.

    Inputs that never fire (``H_jj = 0``) get unit curvature so H stays invertible. If the Cholesky
    factorisation still fails, the dampening is raised tenfold (up to three times) with a warning.
    """
    damp = percdamp
    for attempt in range(4):
        H = hessian.detach().to(dtype).clone()  # damped in place: at most two (cols x cols) buffers alive
        diag = torch.diagonal(H)
        diag[diag == 0] = 1.0
        diag += damp * diag.mean()
        L, info = torch.linalg.cholesky_ex(H)
        del H, diag
        if int(info) == 0:
            Hinv = torch.cholesky_inverse(L)
            del L
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            del Hinv
            if int(info) == 0:
                if attempt:
                    logger.warning("SparseGPT: Hessian needed dampening %.3g of its mean diagonal", damp)
                return U
        damp *= 10
    raise ValueError(
        "SparseGPT could not factorise the layer Hessian even with 1000x dampening; the calibration "
        "activations are degenerate (NaN/inf?). Check the model's dtype and the calibration data."
    )


@torch.no_grad()
def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    n: int = 0,
    m: int = 0,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune one (out, in) weight with the (in, in) Hessian ``X^T X``; returns ``(new_weight, keep_mask)``.

    Unstructured: each block of columns loses its exact share of ``int(numel * sparsity)`` weights, so
    the whole matrix ends with exactly that many zeros. N:M (``n`` kept of every ``m``): exact per group.
    The new weight has `weight`'s dtype; computation is float32 (float64 for a float64 weight).
    Dead input columns are not zeroed beyond the mask, so the zeros are exactly the mask's.
    """
    rows, cols = weight.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"hessian has shape {tuple(hessian.shape)}, expected ({cols}, {cols})")
    if m and (cols % m or blocksize % m):
        raise ValueError(f"{n}:{m} needs in_features ({cols}) and blocksize ({blocksize}) to be multiples of {m}")
    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    W = weight.detach().to(dtype).clone()
    Hinv = inverse_hessian_cholesky(hessian.to(W.device), percdamp, dtype)
    keep = torch.ones(rows, cols, dtype=torch.bool, device=W.device)
    total = rows * cols

    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = torch.diagonal(Hinv1)
        keep1 = torch.ones_like(W1, dtype=torch.bool)
        if not m:
            k_block = num_pruned(total, sparsity * i2 / cols) - num_pruned(total, sparsity * i1 / cols)
            keep1 = lowest_k_mask(W1.pow(2) / d.pow(2).unsqueeze(0), k_block, dim=None)
        for i in range(count):
            if m and i % m == 0:
                scores = W1[:, i : i + m].pow(2) / d[i : i + m].pow(2).unsqueeze(0)
                keep1[:, i : i + m] = lowest_k_mask(scores, m - n, dim=1)
            w = W1[:, i]
            q = w * keep1[:, i]
            Q1[:, i] = q
            err = (w - q) / d[i]
            W1[:, i:] -= err.unsqueeze(1) * Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        keep[:, i1:i2] = keep1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

    new = W.to(weight.dtype)
    new.mul_(keep)  # pruned entries stay exactly zero whatever the cast did
    return new, keep


def relative_reconstruction_error(old: torch.Tensor, new: torch.Tensor, hessian: torch.Tensor) -> float:
    """``||(W - W') X||_F^2 / ||W X||_F^2`` computed from ``H = X^T X``."""
    H = hessian.to(device=old.device, dtype=torch.float32)
    delta = old.float() - new.float()
    num = ((delta @ H) * delta).sum()
    den = ((old.float() @ H) * old.float()).sum()
    return float(num / den.clamp_min(torch.finfo(torch.float32).tiny))


class SparseGPTPruner:
    """Registry entry: needs the Hessian ``X^T X`` of each linear's inputs; reconstructs the survivors."""

    name = "sparsegpt"
    statistic = "hessian"

    def prune(self, weight: torch.Tensor, stat: torch.Tensor, sparsity: float, structure: Structure,
              blocksize: int = 128, percdamp: float = 0.01, **options):
        new, mask = sparsegpt_prune(weight, stat, sparsity, structure.n, structure.m, blocksize, percdamp)
        return new, mask, {"rel_error": relative_reconstruction_error(weight, new, stat)}
