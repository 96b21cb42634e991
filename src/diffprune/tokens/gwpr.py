"""Token importance: G-WPR on an attention map (weighted PageRank by power iteration), the cross-attention
entropy variant, and the per-sample split of tokens into kept and pruned."""

from __future__ import annotations

import math

import torch


def gwpr_scores(attention: torch.Tensor, iterations: int = 5) -> torch.Tensor:
    """Importance of each token from a row-stochastic map ``attention[b, j, i]`` (query j attends to key i).

    Starts from the uniform distribution and applies ``s_i <- sum_j A[j, i] s_j`` ``iterations`` times: a token
    is important when important tokens attend to it. Rows summing to 1 keep ``s`` a distribution. (B, N) out.
    """
    batch, n, _ = attention.shape
    scores = torch.full((batch, 1, n), 1.0 / n, dtype=attention.dtype, device=attention.device)
    for _ in range(iterations):
        scores = torch.bmm(scores, attention)
    return scores.squeeze(1)


def cross_entropy_scores(cross_attention: torch.Tensor) -> torch.Tensor:
    """Importance of image tokens from their (head-averaged) cross-attention rows ``p[b, i, text]``: a row
    concentrated on few text tokens (low entropy) ranks high, a uniform one low. Returns ``-entropy``."""
    p = cross_attention.clamp_min(1e-12)
    return (p * p.log()).sum(-1)


def kept_count(n: int, ratio: float) -> int:
    """Tokens kept when ``ratio`` of ``n`` are removed (at least one)."""
    return max(1, n - math.floor(ratio * n + 1e-9))


def split_tokens(scores: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample indices of the ``keep`` highest-scoring tokens and of the rest, each in spatial order.

    Ties go to the lower index (what a stable descending sort would choose), so the split is deterministic. Found
    from the ``keep``-th largest score (one top-k) and masks, without sorting: sorting the rows costs CPUs ten
    times a top-k, and this runs at every pruning block of every call.
    """
    batch, n = scores.shape
    keep = min(max(keep, 0), n)
    index = torch.arange(n, device=scores.device).expand(batch, n)
    if keep == 0:
        return index[:, :0], index
    scores = scores.masked_fill(scores.isnan(), float("-inf"))  # a not-a-number score ranks last
    threshold = scores.topk(keep, dim=1).values[:, -1:]  # (B, 1): the keep-th largest score
    above = scores > threshold
    tied = scores == threshold  # exactly keep tokens are chosen, without reading the count back (no device sync)
    chosen = above | (tied & (tied.cumsum(1) <= keep - above.sum(1, keepdim=True)))
    # chosen tokens go to the front in spatial order, the others behind them: one scatter of the indices
    before = chosen.cumsum(1)
    target = torch.where(chosen, before - 1, index - before + keep)
    both = torch.empty_like(before).scatter_(1, target, index)
    return both[:, :keep], both[:, keep:]
