"""Per-sample token gathers and scatters on (B, N, C) tensors, as whole-row copies.

``x.gather(1, index.expand(..., C))`` and ``scatter_`` move one element at a time; on a CPU they cost four to
ten times a row copy. Offsetting each sample's indices by ``b * N`` turns the batch into one (B·N, C) table,
where ``index_select`` / ``index_copy_`` / ``index_add_`` copy whole rows. Results are identical to the
element-wise forms (the same values are copied, and sums run in the same order).
"""

from __future__ import annotations

import torch


def flat_index(index: torch.Tensor, tokens: int) -> torch.Tensor:
    """(B, K) per-sample token indices into a sequence of ``tokens`` -> (B·K,) row indices of the (B·N, C) table."""
    offsets = torch.arange(index.shape[0], device=index.device).unsqueeze(1) * tokens
    return (index + offsets).flatten()


def take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, index[b, k], :]`` for a (B, N, C) tensor and (B, K) indices: (B, K, C)."""
    batch, tokens, channels = x.shape
    return x.reshape(batch * tokens, channels).index_select(0, flat_index(index, tokens)).view(
        batch, index.shape[1], channels)


def put(out: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``out[b, index[b, k], :] = values[b, k, :]`` in place (``out`` contiguous, indices unique per sample)."""
    batch, tokens, channels = out.shape
    out.view(batch * tokens, channels).index_copy_(0, flat_index(index, tokens),
                                                   values.reshape(-1, channels).to(out.dtype))
    return out


def mean_into(x: torch.Tensor, index: torch.Tensor, values: torch.Tensor,
              counts: torch.Tensor | None = None) -> torch.Tensor:
    """A copy of ``x`` (B, N, C) where each row ``index[b, k]`` becomes the mean of itself and every
    ``values[b, k]`` sent to it (``scatter_reduce(..., "mean", include_self=True)``). ``counts``: the
    :func:`into_counts` of ``index``, when the same index serves several calls."""
    batch, tokens, channels = x.shape
    flat = flat_index(index, tokens)
    total = x.reshape(batch * tokens, channels).clone().index_add_(0, flat, values.reshape(-1, channels))
    counts = into_counts(index, tokens, x.dtype) if counts is None else counts
    return (total / counts.unsqueeze(1)).view(batch, tokens, channels)


def into_counts(index: torch.Tensor, tokens: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """How many rows each of the B·N rows averages in :func:`mean_into` (itself included): (B·N,)."""
    flat = flat_index(index, tokens)
    ones = torch.ones(flat.shape[0], dtype=dtype, device=index.device)
    return torch.ones(index.shape[0] * tokens, dtype=dtype, device=index.device).index_add_(0, flat, ones)
