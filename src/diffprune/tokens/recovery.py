"""Similarity-based recovery: before the next convolution every pruned token gets the output of its most
similar kept token, the similarity read from the pruning layer's attention map."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .rows import flat_index, put, take


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, index[b, k], :]`` for a (B, N, C) tensor and (B, K) indices."""
    return take(x, index)


def kept_positions(kept: torch.Tensor, tokens: int) -> torch.Tensor:
    """(B, N): each token's position in ``kept`` (B, K), or -1 where it is not kept."""
    batch, count = kept.shape
    position = torch.full((batch, tokens), -1, dtype=torch.long, device=kept.device)
    return position.scatter_(1, kept, torch.arange(count, device=kept.device).expand(batch, -1))


def most_attended_kept(attention: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """For each row of ``attention`` (B, M, N), the position in ``kept`` (B, K, token indices in spatial order)
    of the kept key it attends to most; ties to the lower token index. (B, M) out.

    Reads the kept columns only: a gather of K of the N columns, then a max over K, costs a third of masking the
    pruned columns and taking the argmax over all N (the same result: positions in ``kept`` follow token order,
    and ``max`` returns the first maximal index)."""
    batch, rows, _ = attention.shape
    columns = attention.gather(2, kept.unsqueeze(1).expand(batch, rows, kept.shape[1]))
    return columns.max(-1).indices


def most_similar_kept(attention: torch.Tensor, kept: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """For each pruned token, the position (in ``kept``) of the kept token it attends to most.

    ``attention`` is (B, N, N) with rows = queries; only the pruned tokens' rows are read. (B, P) out.
    """
    return most_attended_kept(take(attention, pruned), kept)


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
    put(out, kept, kept_out)
    copied = gather_tokens(kept_out, source)
    if copy == "delta":
        source_before = gather_tokens(gather_tokens(at_prune, kept), source)
        copied = gather_tokens(at_prune, pruned) + (copied - source_before)
    return put(out, pruned, copied)


def fill_index(kept: torch.Tensor, pruned: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """(B, N): for every token, the position in ``kept`` of the row it takes at recovery with ``copy="state"``
    (its own if kept, its source's if pruned)."""
    batch, count = kept.shape
    fill = torch.empty(batch, count + pruned.shape[1], dtype=torch.long, device=kept.device)
    fill.scatter_(1, kept, torch.arange(count, device=kept.device).expand(batch, -1))
    return fill.scatter_(1, pruned, source)


@dataclass(frozen=True)
class Selection:
    """One block's choice (kept, pruned, copy sources), with the row indices of its two copies computed once:
    choosing the kept tokens and, for ``copy="state"``, refilling the grid are then one ``index_select`` each,
    however many calls reuse the choice."""

    kept: torch.Tensor
    pruned: torch.Tensor
    source: torch.Tensor
    kept_rows: torch.Tensor   # (B·K,) rows of the kept tokens in the (B·N, C) table
    fill_rows: torch.Tensor   # (B·N,) rows of the (B·K, C) kept outputs that refill the grid

    @classmethod
    def of(cls, kept: torch.Tensor, pruned: torch.Tensor, source: torch.Tensor) -> "Selection":
        tokens = kept.shape[1] + pruned.shape[1]
        return cls(kept, pruned, source, flat_index(kept, tokens),
                   flat_index(fill_index(kept, pruned, source), kept.shape[1]))

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """The kept tokens of ``x`` (B, N, C): (B, K, C); the same as :func:`gather_tokens`."""
        batch, tokens, channels = x.shape
        return x.reshape(batch * tokens, channels).index_select(0, self.kept_rows).view(batch, -1, channels)

    def refill(self, at_prune: torch.Tensor, kept_out: torch.Tensor, copy: str = "state") -> torch.Tensor:
        """:func:`refill` of this choice; ``state`` copies in one row gather (the same values)."""
        if copy != "state":
            return refill(at_prune, kept_out, self.kept, self.pruned, self.source, copy)
        batch, count, channels = kept_out.shape
        return kept_out.reshape(batch * count, channels).index_select(0, self.fill_rows).view(
            batch, at_prune.shape[1], channels).to(at_prune.dtype)
