"""Ranking image tokens in a diffusion-transformer block from its attention, and choosing for every pruned token
the kept token it copies.

The image-image part of a (joint) attention map, renormalised per row, is the softmax of the queries over the
image keys alone, so the map is built from the block's image queries and keys only: ``(B, N, N)`` with the
``full`` scorer, or the rows of one query per ``stride x stride`` cell with the ``strided`` one. Sana's linear
attention needs no map at all for G-WPR: its power iteration runs in O(N) through the factorised kernel.
"""

from __future__ import annotations

import torch

from .gwpr import kept_count, split_tokens
from .recovery import kept_positions, most_attended_kept, most_similar_kept
from .rows import take

#: scores (batch x heads x rows x keys) held at once while building attention rows
_CHUNK = 1 << 22


def split_heads(x: torch.Tensor, heads: int, norm) -> torch.Tensor:
    """(B, S, heads * D) projections -> (B, S, heads, D), with the attention's q/k norm applied as the model
    applies it (over one head's D, or across heads)."""
    dim = x.shape[-1] // heads
    if norm is None:
        return x.unflatten(-1, (heads, dim))
    declared = getattr(norm, "dim", None) or getattr(norm, "normalized_shape", None)
    if declared is not None and tuple(declared) == (dim,):
        return norm(x.unflatten(-1, (heads, dim)))
    return norm(x).unflatten(-1, (heads, dim))


def image_query_key(query: torch.Tensor, key: torch.Tensor, attn, text_tokens: int = 0, rotary=None):
    """The image part of a block's queries and keys as (B, heads, N, D): ``query`` / ``key`` are the outputs of
    the attention's projections (text first when the block projects the joint sequence, ``text_tokens`` of it);
    ``rotary`` is the (cos, sin) of the image tokens (Flux)."""
    heads = attn.heads
    q = split_heads(query, heads, getattr(attn, "norm_q", None))[:, text_tokens:]
    k = split_heads(key, heads, getattr(attn, "norm_k", None))[:, text_tokens:]
    if rotary is not None:
        from diffusers.models.embeddings import apply_rotary_emb

        q, k = apply_rotary_emb(q, rotary, sequence_dim=1), apply_rotary_emb(k, rotary, sequence_dim=1)
    return q.transpose(1, 2), k.transpose(1, 2)


def strided_queries(height: int, width: int, stride: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-left token of every ``stride x stride`` cell of a height x width grid (row-major), and for
    every token the position of its cell's token in that list."""
    ys, xs = torch.arange(0, height, stride), torch.arange(0, width, stride)
    rows = (ys.unsqueeze(1) * width + xs.unsqueeze(0)).flatten()
    cell_cols = -(-width // stride)
    y, x = torch.arange(height).unsqueeze(1) // stride, torch.arange(width).unsqueeze(0) // stride
    cells = (y * cell_cols + x).flatten()
    return rows.to(device), cells.to(device)


def attention_rows(q: torch.Tensor, k: torch.Tensor, rows: torch.Tensor | None, *, linear: bool = False,
                   scale: float | None = None) -> torch.Tensor:
    """Head-averaged attention of the queries ``rows`` (all when ``None``) over every key: (B, M, N), float32,
    rows summing to 1. ``linear``: Sana's ReLU kernel instead of the softmax."""
    batch, heads, n, dim = k.shape
    queries = q if rows is None else q[:, :, rows]
    if not linear:  # scaled on the queries' side: D wide, not N (and as the explicit and fused kernels scale)
        queries = queries.float() * (scale if scale is not None else dim**-0.5)
    m = queries.shape[2]
    out = torch.empty(batch, m, n, dtype=torch.float32, device=q.device)
    key_t = k.float().transpose(-1, -2)
    if linear:
        key_t = key_t.relu()
        key_sum = key_t.sum(-1, keepdim=True)  # (B, H, D, 1)
    step = max(1, _CHUNK // max(1, batch * heads * n))
    for start in range(0, m, step):
        chunk = queries[:, :, start:start + step].float()
        if linear:
            chunk = chunk.relu()
            weights = torch.matmul(chunk, key_t) / (torch.matmul(chunk, key_sum) + 1e-15)
        else:
            weights = torch.matmul(chunk, key_t).softmax(-1)
        torch.mean(weights, 1, out=out[:, start:start + step])
    return out


def gwpr_from_rows(attention: torch.Tensor, rows: torch.Tensor | None, iterations: int) -> torch.Tensor:
    """G-WPR importance (B, N) from the attention rows of the queries ``rows`` (all: the exact power iteration).
    With a subset, each iteration weights the sampled queries by their current importance."""
    batch, m, n = attention.shape
    weights = torch.full((batch, 1, m), 1.0 / m, dtype=attention.dtype, device=attention.device)
    scores = None
    for _ in range(iterations):
        scores = torch.bmm(weights, attention).squeeze(1)
        picked = scores if rows is None else scores[:, rows]
        weights = (picked / picked.sum(-1, keepdim=True).clamp_min(1e-30)).unsqueeze(1)
    return scores


def linear_gwpr(q: torch.Tensor, k: torch.Tensor, iterations: int) -> torch.Tensor:
    """Exact G-WPR on the head-averaged map of a ReLU linear attention, never building it:
    ``A_h[i, j] = relu(q_i) . relu(k_j) / sum_j' relu(q_i) . relu(k_j')``. (B, N) out."""
    qr, kr = q.float().relu(), k.float().relu()
    denominator = torch.matmul(qr, kr.sum(2).unsqueeze(-1)).squeeze(-1) + 1e-15  # (B, H, N)
    scores = torch.full(qr.shape[:1] + qr.shape[2:3], 1.0 / qr.shape[2], device=q.device)
    for _ in range(iterations):
        carried = torch.einsum("bn,bhn,bhnd->bhd", scores, denominator.reciprocal(), qr)
        scores = torch.einsum("bhnd,bhd->bn", kr, carried) / qr.shape[1]
    return scores


def choose(scores: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept and pruned token indices per sample, each in spatial order (ties to the lower index)."""
    return split_tokens(scores, keep)


def copy_sources(attention: torch.Tensor, rows: torch.Tensor | None, cells: torch.Tensor | None,
                 kept: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """For every pruned token, the position in ``kept`` of the token it copies: the kept token its own query
    (``full``: ``rows`` and ``cells`` ``None``) or its cell's query attends to most; a cell whose query token is
    itself kept copies that token. (B, P) out."""
    if rows is None:
        return most_similar_kept(attention, kept, pruned)
    own = kept_positions(kept, attention.shape[-1])[:, rows]  # (B, M): a query token that is kept copies itself
    best = torch.where(own >= 0, own, most_attended_kept(attention, kept))
    return best.gather(1, cells[pruned])


def similar_sources(states: torch.Tensor, kept: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """For every pruned token, the position in ``kept`` of the kept token whose state (``states``: B, N, C) is
    closest in cosine similarity; ties to the lower token index. (B, P) out."""
    unit = torch.nn.functional.normalize(states.float(), dim=-1)
    similarity = torch.bmm(take(unit, pruned), take(unit, kept).transpose(1, 2))  # (B, P, K)
    return similarity.max(-1).indices


def nearest_sources(height: int, width: int, kept: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """For every pruned token, the position in ``kept`` of the closest kept token on the height x width grid
    (squared Euclidean distance; ties to the lower token index). (B, P) out."""
    def yx(index):
        return torch.div(index, width, rounding_mode="floor"), index % width

    (py, px), (ky, kx) = yx(pruned), yx(kept)
    distance = (py.unsqueeze(-1) - ky.unsqueeze(1)) ** 2 + (px.unsqueeze(-1) - kx.unsqueeze(1)) ** 2
    return distance.min(-1).indices


def pick_sources(source: str, kept: torch.Tensor, pruned: torch.Tensor, *, states: torch.Tensor,
                 grid: tuple[int, int], attention: torch.Tensor | None, rows: torch.Tensor | None = None,
                 cells: torch.Tensor | None = None) -> torch.Tensor:
    """The copy source of every pruned token by the configured ``source``: ``similarity`` of the ``states`` at the
    pruning point (B, N, C), ``nearest`` on the ``grid``, or ``attention`` (:func:`copy_sources`). (B, P) out."""
    if source == "similarity":
        return similar_sources(states, kept, pruned)
    if source == "nearest":
        return nearest_sources(*grid, kept, pruned)
    return copy_sources(attention, rows, cells, kept, pruned)


def rank_tokens(query: torch.Tensor, key: torch.Tensor, ratio: float, *, grid: tuple[int, int] | None = None,
                scorer: str = "full", query_stride: int = 2, iterations: int = 5, linear: bool = False,
                scale: float | None = None) -> torch.Tensor:
    """The image tokens G-WPR keeps from queries and keys (B, heads, N, D): (B, kept) indices in spatial order.
    ``scorer`` ``strided`` needs the ``grid`` (rows, columns) of the N tokens. For comparing scorers offline."""
    rows = None
    if scorer == "strided":
        if grid is None or grid[0] * grid[1] != key.shape[2]:
            raise ValueError("the strided scorer needs the token grid (rows, columns)")
        rows, _ = strided_queries(grid[0], grid[1], query_stride, key.device)
    if linear and rows is None:
        scores = linear_gwpr(query, key, iterations)
    else:
        scores = gwpr_from_rows(attention_rows(query, key, rows, linear=linear, scale=scale), rows, iterations)
    return choose(scores, kept_count(key.shape[2], ratio))[0]
