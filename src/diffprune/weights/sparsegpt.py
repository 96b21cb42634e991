"""SparseGPT: prune a layer column block by column block, updating the kept weights to cancel the error.

For a layer with inputs X, H = 2 X^T X. Weights are removed where w^2 / [H^-1]_jj^2 is smallest, and each
removal's error is spread over the not-yet-processed columns through the upper Cholesky factor of H^-1 (the
optimal-brain-surgeon update). Columns are handled in blocks: the mask of a block is chosen when the block is
reached, from weights already updated for the earlier blocks' errors.
"""

from __future__ import annotations

import warnings

import torch

from diffprune.weights.calibrate import LayerStats
from diffprune.weights.config import SparseGPTConfig
from diffprune.weights.masks import allocate, lowest, n_of_m


def _inverse_factor(h: torch.Tensor, damping: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damping * mean(diag H) * I)^-1, damping raised if H is too ill-posed."""
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    mean_diag = h.diagonal().mean().clamp_min(1e-8)
    for factor in (1.0, 10.0, 100.0):
        chol, info = torch.linalg.cholesky_ex(h + damping * factor * mean_diag * eye)
        if int(info) == 0:
            inv = torch.cholesky_inverse(chol)
            upper, info = torch.linalg.cholesky_ex(inv, upper=True)
            if int(info) == 0:
                return upper
    warnings.warn("SparseGPT: the Hessian is not positive definite even with extra damping; using the identity "
                  "(no weight update) for this layer", stacklevel=3)
    return eye


@torch.no_grad()
def sparsegpt_prune(stats: LayerStats, k: int, config: SparseGPTConfig) -> None:
    weight = stats.target.weight
    h = stats.hessian().clone()
    w = weight.detach().reshape(weight.shape[0], -1).float().clone().to(h.device)
    rows, cols = w.shape
    dead = h.diagonal() == 0  # inputs that never fire: their weights cannot matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    hinv = _inverse_factor(h, config.damping)
    nm = config.nm
    bs = config.block_size if nm is None else max(nm[1], config.block_size // nm[1] * nm[1])
    starts = list(range(0, cols, bs))
    block_counts = allocate([rows * (min(s + bs, cols) - s) for s in starts], k / (rows * cols)) if nm is None else None
    if block_counts is not None and sum(block_counts) != k:  # allocate rounds the share; force the exact total
        block_counts[-1] += k - sum(block_counts)
    for b, i1 in enumerate(starts):
        i2 = min(i1 + bs, cols)
        w1 = w[:, i1:i2].clone()
        hinv1 = hinv[i1:i2, i1:i2]
        d = hinv1.diagonal()
        err1 = torch.zeros_like(w1)
        mask1 = lowest(w1.pow(2) / d.pow(2)[None, :], block_counts[b]) if nm is None else None
        for i in range(i2 - i1):
            col = w1[:, i]
            if nm is not None and i % nm[1] == 0:
                j = min(i + nm[1], i2 - i1)
                group = w1[:, i:j].pow(2) / d[i:j].pow(2)[None, :]
                if mask1 is None:
                    mask1 = torch.zeros_like(w1, dtype=torch.bool)
                mask1[:, i:j] = n_of_m(group, nm[0], nm[1])
            kept = col.masked_fill(mask1[:, i], 0.0)
            e = (col - kept) / d[i]
            w1[:, i:] -= e[:, None] * hinv1[i, i:][None, :]
            w1[:, i] = kept
            err1[:, i] = e
        w[:, i1:i2] = w1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    weight.copy_(w.reshape(weight.shape).to(weight.device, weight.dtype))
