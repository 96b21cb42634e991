"""Exact-count masks: which weights to zero, given a score per weight (lower score = pruned first).

Every selector zeroes exactly the number of weights asked for. Equal scores are broken by position (first
come first pruned), so the same scores always give the same mask.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch


_SELECT_DIRECTLY = 1 << 20  # tensors up to this size use torch.kthvalue
_SAMPLE = 1 << 18


def round_to_total(raw: Sequence[float], caps: Sequence[int], total: int) -> list[int]:
    """Whole numbers near ``raw`` (each at most its cap) that add up to exactly ``total``.

    Each value is rounded down; the remainder goes to the largest fractional parts (largest remainder method),
    earlier entries first on ties.
    """
    counts = [min(cap, math.floor(r)) for r, cap in zip(raw, caps)]
    left = total - sum(counts)
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order:
        if left <= 0:
            break
        if counts[i] < caps[i]:
            counts[i] += 1
            left -= 1
    return counts


def allocate(sizes: Sequence[int], sparsity: float) -> list[int]:
    """Weights to prune per tensor so that the total is exactly ``round(sparsity * sum(sizes))``."""
    return round_to_total([sparsity * n for n in sizes], sizes, round(sparsity * sum(sizes)))


def lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask (shape of ``scores``) with exactly ``k`` True at the lowest scores."""
    flat = scores.reshape(-1).float()
    n = flat.numel()
    if k <= 0:
        return torch.zeros_like(flat, dtype=torch.bool).view(scores.shape)
    if k >= n:
        return torch.ones_like(flat, dtype=torch.bool).view(scores.shape)
    if n > _SELECT_DIRECTLY:  # a bracketed selection is ~3x faster than kthvalue on large tensors
        threshold, _ = global_threshold([lambda: flat], [n], k, sample=_SAMPLE)
    else:
        threshold = torch.kthvalue(flat, k).values
    mask = flat < threshold
    need = k - int(torch.count_nonzero(mask))
    if need > 0:
        ties = torch.nonzero(flat == threshold).squeeze(1)[:need]
        mask[ties] = True
    return mask.view(scores.shape)


def lowest_per_row(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Mask over a ``[rows, cols]`` score matrix with ``k`` True in total, spread evenly over the rows.

    Every row loses ``k // rows`` weights and the first ``k % rows`` rows one more (Wanda's per-output
    comparison group, made exact at the matrix level).
    """
    rows, cols = scores.shape
    base, extra = divmod(k, rows)
    order = torch.argsort(scores.float(), dim=1, stable=True)
    mask = torch.zeros((rows, cols), dtype=torch.bool, device=scores.device)
    if base:
        mask.scatter_(1, order[:, :base], True)
    if extra:
        mask[torch.arange(extra, device=scores.device), order[:extra, base]] = True
    return mask


def n_of_m(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Mask over ``[rows, cols]`` scores that keeps the ``n`` highest of every ``m`` consecutive weights."""
    rows, cols = scores.shape
    groups = scores.float().reshape(rows, cols // m, m)
    order = torch.argsort(groups, dim=-1, stable=True)[..., : m - n]
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(-1, order, True)
    return mask.reshape(rows, cols)


def global_threshold(score_fns: Sequence[Callable[[], torch.Tensor]], sizes: Sequence[int], k: int,
                     sample: int = 2_000_000) -> tuple[torch.Tensor, int]:
    """The ``k``-th lowest score over several tensors without concatenating them.

    ``score_fns`` each return one tensor's scores (``sizes[i]`` values, computed on demand so that only one
    lives at a time). A strided sample brackets the threshold; a second pass counts what lies below the bracket
    and gathers what lies in it. Returns the threshold and how many of the scores equal to it must be pruned
    (in tensor order) to make exactly ``k``.
    """
    if k <= 0:
        raise ValueError("global_threshold needs k >= 1")
    total = sum(sizes)
    stride = max(1, total // sample)
    probe = torch.cat([fn().reshape(-1)[::stride].float().clone() for fn in score_fns])  # keep the sample only
    q = k / total
    lo_k = max(1, math.floor((q - 0.01) * probe.numel()))
    hi_k = min(probe.numel(), math.ceil((q + 0.01) * probe.numel()) + 1)
    lo = torch.kthvalue(probe, lo_k).values.item() if q > 0.01 else -math.inf
    hi = torch.kthvalue(probe, hi_k).values.item() if q < 0.99 else math.inf
    del probe
    for _ in range(3):
        below_lt, below_le, inside = 0, 0, []
        for fn in score_fns:
            s = fn().reshape(-1).float()
            below_lt += int(torch.count_nonzero(s < lo))
            below_le += int(torch.count_nonzero(s <= lo))
            inside.append(s[(s > lo) & (s <= hi)])  # values equal to lo are counted, not gathered
            del s
        if below_lt < k <= below_le:  # the threshold is lo itself (e.g. many exact zeros)
            return torch.tensor(lo), k - below_lt
        window = torch.cat(inside)
        del inside
        if below_le < k <= below_le + window.numel():
            threshold = torch.kthvalue(window, k - below_le).values
            under = below_le + int(torch.count_nonzero(window < threshold))
            return threshold, k - under
        lo, hi = (-math.inf, lo) if k <= below_lt else (hi, math.inf)
    raise AssertionError("global threshold search did not converge")


def select(scores: torch.Tensor, k: int, nm: tuple[int, int] | None = None, per_row: bool = False) -> torch.Tensor:
    """The mask for one ``[rows, cols]`` score matrix: N:M if ``nm``, else ``k`` lowest per matrix or per row."""
    if nm is not None:
        return n_of_m(scores, *nm)
    return lowest_per_row(scores, k) if per_row else lowest(scores, k)


@torch.no_grad()
def apply_mask(weight: torch.Tensor, mask: torch.Tensor) -> None:
    """Zero ``weight`` where ``mask`` (as a ``[rows, cols]`` matrix) is True, in place (any memory layout)."""
    weight.masked_fill_(mask.to(weight.device).reshape(weight.shape), 0)
