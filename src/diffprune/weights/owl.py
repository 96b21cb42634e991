"""OWL: outlier-weighted layer-wise sparsity. Blocks whose Wanda scores hold more outliers keep more weights."""

from __future__ import annotations

import torch

from diffprune.weights.calibrate import LayerStats
from diffprune.weights.config import OWLConfig
from diffprune.weights.masks import round_to_total
from diffprune.weights.wanda import wanda_scores


def outlier_ratio(block_stats: list[LayerStats], outlier_m: float) -> float:
    """Share of a block's Wanda scores (all its layers together) above ``outlier_m`` times their mean."""
    scores = torch.cat([wanda_scores(s).reshape(-1) for s in block_stats])
    return float((scores > outlier_m * scores.mean()).float().mean())


def block_sparsities(ratios: list[float], config: OWLConfig) -> list[float]:
    """Per-block sparsities: ratios mapped linearly onto a spread of ``2 * lam``, centred on the target."""
    lo, hi = min(ratios), max(ratios)
    spread = [(r - lo) / (hi - lo) * 2 * config.lam if hi > lo else 0.0 for r in ratios]
    mean = sum(spread) / len(spread)
    return [min(0.99, max(0.0, config.sparsity - (r - mean))) for r in spread]


def block_counts(block_sizes: list[list[int]], sparsities: list[float], total: int) -> list[list[int]]:
    """Weights to prune per layer: each block near its own sparsity, the component total exactly ``total``."""
    raw = [s * n for sizes, s in zip(block_sizes, sparsities) for n in sizes]
    flat_sizes = [n for sizes in block_sizes for n in sizes]
    for _ in range(50):  # scale the uncapped layers until the capped ones no longer lose mass
        free = sum(r for r, n in zip(raw, flat_sizes) if r < n)
        need = total - sum(n for r, n in zip(raw, flat_sizes) if r >= n)
        if free <= 0 or abs(need - free) < 0.5:
            break
        raw = [min(n, r * need / free) if r < n else n for r, n in zip(raw, flat_sizes)]
    counts = round_to_total(raw, flat_sizes, total)
    out, pos = [], 0
    for sizes in block_sizes:
        out.append(counts[pos:pos + len(sizes)])
        pos += len(sizes)
    return out
