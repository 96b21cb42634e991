"""Magnitude pruning (per matrix or one threshold over the component) and the random-pruning floor."""

from __future__ import annotations

import torch

from diffprune.weights.config import MagnitudeConfig, RandomConfig
from diffprune.weights.masks import allocate, apply_mask, global_threshold, select
from diffprune.weights.targets import Target


def _matrix(t: Target) -> torch.Tensor:
    return t.weight.detach().reshape(t.weight.shape[0], -1)


@torch.no_grad()
def magnitude_prune(targets: list[Target], config: MagnitudeConfig, counts: list[int] | None = None) -> None:
    """Zero the smallest |W|. ``counts`` overrides how many weights each target loses (OWL uses this)."""
    if config.scope == "global":
        _global(targets, round(config.sparsity * sum(t.weight.numel() for t in targets)))
        return
    counts = counts if counts is not None else allocate([t.weight.numel() for t in targets], config.sparsity)
    for t, k in zip(targets, counts):
        apply_mask(t.weight, select(_matrix(t).abs(), k, config.nm))


def _global(targets: list[Target], k: int) -> None:
    if k <= 0:
        return
    fns = [lambda t=t: _matrix(t).abs() for t in targets]
    threshold, ties_left = global_threshold(fns, [t.weight.numel() for t in targets], k)
    for t in targets:
        scores = _matrix(t).abs().float()
        mask = scores < threshold.to(scores.device)
        if ties_left > 0:
            ties = torch.nonzero((scores == threshold).reshape(-1)).squeeze(1)[:ties_left]
            mask.view(-1)[ties] = True
            ties_left -= ties.numel()
        apply_mask(t.weight, mask)


@torch.no_grad()
def random_prune(targets: list[Target], config: RandomConfig) -> None:
    """Zero a seeded uniform random choice of weights (exact count per tensor, N:M respected)."""
    counts = allocate([t.weight.numel() for t in targets], config.sparsity)
    for i, (t, k) in enumerate(zip(targets, counts)):
        g = torch.Generator().manual_seed(config.seed * 1_000_003 + i)
        scores = torch.rand(_matrix(t).shape, generator=g)
        apply_mask(t.weight, select(scores, k, config.nm))
