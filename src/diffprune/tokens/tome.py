"""ToMe for Stable Diffusion, written for diffprune: bipartite soft matching with one destination token per
``stride x stride`` cell (chosen at random), merge before self-attention, unmerge (copy back) after it."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from .rows import into_counts, mean_into, put, take


@dataclass
class Matching:
    """Which tokens merge into which; ``merge`` shortens (B, N, C) to (B, N - r, C), ``unmerge`` restores it.

    The merged sequence is the sources that stay, then the destinations (``kept``, (B, N - r)); each of the
    ``r`` merged-away sources (``moving``) is averaged into the destination at ``into`` (a position in the
    merged sequence). Indices are built once per matching; merge and unmerge are whole-row copies and sums
    (:mod:`.rows`)."""

    kept: torch.Tensor    # (B, N - r) token indices of the merged sequence, in order
    moving: torch.Tensor  # (B, r) token indices merged away
    into: torch.Tensor    # (B, r) position in the merged sequence each one goes to

    counts: torch.Tensor | None = field(default=None, repr=False)  # rows averaged per merged token, once

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        if self.counts is None or self.counts.dtype != x.dtype:
            self.counts = into_counts(self.into, self.kept.shape[1], x.dtype)
        return mean_into(take(x, self.kept), self.into, take(x, self.moving), self.counts)

    def unmerge(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels = x.shape[0], x.shape[-1]
        out = x.new_empty(batch, self.kept.shape[1] + self.moving.shape[1], channels)
        put(out, self.kept, x)
        return put(out, self.moving, take(x, self.into))


@functools.lru_cache(maxsize=64)
def _cells(height: int, width: int, stride: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Top-left corner rows and columns of the ``stride x stride`` cells, and whether cells cut by the border
    can clamp two destinations onto one token."""
    rows, cols = -(-height // stride), -(-width // stride)
    return (torch.arange(rows).unsqueeze(1) * stride, torch.arange(cols).unsqueeze(0) * stride,
            bool(height % stride or width % stride))


def destination_grid(height: int, width: int, stride: int, generator: torch.Generator | None) -> torch.Tensor:
    """Token indices of one destination per ``stride x stride`` cell (random within the cell if a generator is
    given, else the cell's top-left); cells cut by the border still get one. Sorted."""
    top, left, ragged = _cells(height, width, stride)
    if generator is not None:
        offset = torch.randint(stride * stride, (top.shape[0], left.shape[1]), generator=generator)
        y = (top + offset // stride).clamp_max(height - 1)
        x = (left + offset % stride).clamp_max(width - 1)
    else:
        y, x = top, left
    index = (y * width + x).flatten()
    # offsets inside a cell break the row-major order: sort (and, where border cells clamp, drop duplicates)
    return index.unique() if ragged else index.sort().values


def bipartite_matching(metric: torch.Tensor, height: int, width: int, ratio: float, stride: int = 2,
                       generator: torch.Generator | None = None) -> Matching | None:
    """Match ``r = int(ratio * N)`` source tokens to their most similar destination (cosine on ``metric``,
    (B, N, C)); the most similar pairs merge. ``None`` when nothing would merge."""
    batch, n, _ = metric.shape
    if height * width != n:
        raise ValueError(f"{n} tokens do not form a {height}x{width} grid")
    dst_index = destination_grid(height, width, stride, generator)
    is_dst = torch.zeros(n, dtype=torch.bool)
    is_dst[dst_index] = True
    src_index = is_dst.logical_not_().nonzero().squeeze(1)
    r = min(int(ratio * n), src_index.numel())
    if r <= 0:
        return None
    device = metric.device
    sources, destinations = src_index.to(device), dst_index.to(device)
    unit = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    similarity = torch.matmul(unit[:, sources], unit[:, destinations].transpose(1, 2))
    best, target = similarity.max(dim=-1)
    order = best.argsort(dim=-1, descending=True, stable=True)
    merged, unmerged = order[:, :r], order[:, r:]
    staying = sources[unmerged]  # (B, N_src - r)
    kept = torch.cat([staying, destinations.expand(batch, -1)], dim=1)
    return Matching(kept=kept, moving=sources[merged], into=target.gather(1, merged) + staying.shape[1])
