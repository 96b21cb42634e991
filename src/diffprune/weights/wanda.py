"""Wanda: prune by |W_ij| * ||X_j||_2, the same share in every output row, no weight update."""

from __future__ import annotations

import torch

from diffprune.weights.calibrate import LayerStats
from diffprune.weights.config import PruneConfig
from diffprune.weights.masks import apply_mask, select


def wanda_scores(stats: LayerStats) -> torch.Tensor:
    w = stats.target.weight.detach()
    return w.reshape(w.shape[0], -1).abs().float() * stats.column_norms().to(w.device)[None, :]


@torch.no_grad()
def wanda_prune(stats: LayerStats, k: int, config: PruneConfig) -> None:
    apply_mask(stats.target.weight, select(wanda_scores(stats), k, config.nm, per_row=True))
