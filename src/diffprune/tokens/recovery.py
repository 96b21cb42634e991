"""Similarity-based recovery: before the next convolution every pruned token gets the output of its most
similar kept token, the similarity read from the pruning layer's attention map."""

from __future__ import annotations

import torch


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, index[b, k], :]`` for a (B, N, C) tensor and (B, K) indices."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def most_similar_kept(attention: torch.Tensor, kept: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """For each pruned token, the position (in ``kept``) of the kept token it attends to most.

    ``attention`` is (B, N, N) with rows = queries; only the (pruned x kept) part is read. (B, P) out.
    """
    rows = attention.gather(1, pruned.unsqueeze(-1).expand(-1, -1, attention.shape[-1]))
    return rows.gather(2, kept.unsqueeze(1).expand(-1, pruned.shape[1], -1)).argmax(-1)


def refill(at_prune: torch.Tensor, kept_out: torch.Tensor, kept: torch.Tensor, pruned: torch.Tensor,
           source: torch.Tensor, copy: str = "state") -> torch.Tensor:
    """The full (B, N, C) grid after the layers that ran on kept tokens only.

    - ``at_prune``: all tokens at the pruning point; ``kept_out``: the kept tokens after the later layers;
    - ``source``: for each pruned token, its most similar kept token (index into ``kept``);
    - ``copy="state"``: a pruned token becomes a copy of its source's output; ``"delta"``: it keeps its own state
      and adds the update its source received after the pruning point.
    """
    channels = at_prune.shape[-1]
    out = at_prune.new_empty(at_prune.shape[0], kept.shape[1] + pruned.shape[1], channels)  # both scatters fill it
    out.scatter_(1, kept.unsqueeze(-1).expand(-1, -1, channels), kept_out)
    copied = gather_tokens(kept_out, source)
    if copy == "delta":
        source_before = gather_tokens(gather_tokens(at_prune, kept), source)
        copied = gather_tokens(at_prune, pruned) + (copied - source_before)
    out.scatter_(1, pruned.unsqueeze(-1).expand(-1, -1, channels), copied)
    return out
