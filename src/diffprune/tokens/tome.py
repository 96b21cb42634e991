"""ToMe for Stable Diffusion, written for diffprune: bipartite soft matching with one destination token per
``stride x stride`` cell (chosen at random), merge before self-attention, unmerge (copy back) after it."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Matching:
    """Which tokens merge into which; ``merge`` shortens (B, N, C) to (B, N - r, C), ``unmerge`` restores it."""

    sources: torch.Tensor      # (B, N_src) token indices of the source set
    destinations: torch.Tensor  # (B, N_dst) token indices of the destination set
    unmerged: torch.Tensor     # (B, N_src - r) positions (in sources) that stay
    merged: torch.Tensor       # (B, r) positions (in sources) merged away
    target: torch.Tensor       # (B, r) position (in destinations) each merged source goes to

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[-1]
        src = _take(x, self.sources)
        dst = _take(x, self.destinations)
        keep = _take(src, self.unmerged)
        moving = _take(src, self.merged)
        dst = dst.scatter_reduce(1, self.target.unsqueeze(-1).expand(-1, -1, channels), moving, reduce="mean",
                                 include_self=True)
        return torch.cat([keep, dst], dim=1)

    def unmerge(self, x: torch.Tensor) -> torch.Tensor:
        n_keep = self.unmerged.shape[1]
        keep, dst = x[:, :n_keep], x[:, n_keep:]
        batch, channels = x.shape[0], x.shape[-1]
        n = self.sources.shape[1] + self.destinations.shape[1]
        out = x.new_empty(batch, n, channels)
        _put(out, self.destinations, dst)
        _put(out, _take_index(self.sources, self.unmerged), keep)
        _put(out, _take_index(self.sources, self.merged), _take(dst, self.target))
        return out


def _take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _take_index(index: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    return index.gather(1, positions)


def _put(out: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> None:
    out.scatter_(1, index.unsqueeze(-1).expand(-1, -1, out.shape[-1]), values)


def destination_grid(height: int, width: int, stride: int, generator: torch.Generator | None) -> torch.Tensor:
    """Token indices of one destination per ``stride x stride`` cell (random within the cell if a generator is
    given, else the cell's top-left); cells cut by the border still get one."""
    rows, cols = -(-height // stride), -(-width // stride)
    if generator is not None:
        offset = torch.randint(stride * stride, (rows, cols), generator=generator)
    else:
        offset = torch.zeros(rows, cols, dtype=torch.long)
    dy, dx = offset // stride, offset % stride
    y = (torch.arange(rows).unsqueeze(1) * stride + dy).clamp_max(height - 1)
    x = (torch.arange(cols).unsqueeze(0) * stride + dx).clamp_max(width - 1)
    return (y * width + x).flatten().unique()


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
    src_index = torch.arange(n)[~is_dst]
    r = min(int(ratio * n), src_index.numel())
    if r <= 0:
        return None
    device = metric.device
    sources = src_index.to(device).expand(batch, -1)
    destinations = dst_index.to(device).expand(batch, -1)
    unit = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    similarity = torch.bmm(_take(unit, sources), _take(unit, destinations).transpose(1, 2))
    best, target = similarity.max(dim=-1)
    order = best.argsort(dim=-1, descending=True, stable=True)
    merged, unmerged = order[:, :r], order[:, r:]
    return Matching(sources=sources, destinations=destinations, unmerged=unmerged, merged=merged,
                    target=target.gather(1, merged))
