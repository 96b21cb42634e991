"""Choosing the units to remove: the set with the smallest summed score whose cost (parameters or FLOPs) reaches
a target, by exact 0/1 dynamic programming, and greedy rules for comparison.

Costs are integers. Large ones (parameters of SD models) are counted in bins: each unit's cost is rounded
down and the target up, so any set the solver accepts truly reaches the target; ``bins`` sets the resolution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from diffprune.errors import DiffpruneError

SOLVERS = ("knapsack", "greedy-score", "greedy-ratio")


def _binned(costs: Sequence[int], target: int, bins: int | None) -> tuple[list[int], int]:
    total = sum(costs)
    if bins is None or total <= bins:
        return [int(c) for c in costs], int(target)
    size = total / bins
    return [int(c // size) for c in costs], int(math.ceil(target / size))


def _check(scores, costs, target) -> None:
    if any(not math.isfinite(v) for v in scores):
        raise DiffpruneError("a unit's score is not finite (NaN or inf); cannot choose by it")
    if len(scores) != len(costs):
        raise DiffpruneError("scores and costs differ in length")
    if any(c < 0 for c in costs):
        raise DiffpruneError("costs must not be negative")
    if sum(costs) < target:
        raise DiffpruneError(f"the removable units hold {sum(costs):,}, less than the target {target:,}")


def knapsack_min_cover(scores: Sequence[float], costs: Sequence[int], target: int,
                       bins: int | None = 4000) -> list[int]:
    """Indices of the subset with the smallest summed score whose summed cost is at least ``target``.

    Exact on the (binned) integer costs: ``best[c]`` is the cheapest score reaching cost ``c`` (capped at the
    target); ``O(n x target_bins)`` time, a parent table for the backtrack.
    """
    _check(scores, costs, target)
    if target <= 0:
        return []
    weights, cap = _binned(costs, target, bins)
    if sum(weights) < cap:  # rounding down lost the target: only everything is sure to reach it
        return list(range(len(scores)))
    inf = float("inf")
    best = [0.0] + [inf] * cap
    parents: list[list[int]] = []  # parents[i][c]: state before taking item i to reach c, or -1 if not taken
    for score, w in zip(scores, weights):
        new, parent = best[:], [-1] * (cap + 1)
        for c, value in enumerate(best):
            if value == inf:
                continue
            reach = min(cap, c + w)
            if value + score < new[reach]:
                new[reach], parent[reach] = value + score, c
        parents.append(parent)
        best = new
    if best[cap] == inf:
        raise DiffpruneError("no set of the removable units reaches the target")
    chosen, c = [], cap
    for i in range(len(scores) - 1, -1, -1):
        if parents[i][c] >= 0:
            chosen.append(i)
            c = parents[i][c]
    if sum(costs[i] for i in chosen) < target:  # cannot happen with floor/ceil binning; never return a short set
        raise DiffpruneError("internal error: the chosen set misses the target")
    return sorted(chosen)


def greedy_cover(scores: Sequence[float], costs: Sequence[int], target: int, rule: str = "score") -> list[int]:
    """Add units in ascending ``score`` (``rule="score"``) or score per cost (``"ratio"``) until the target."""
    _check(scores, costs, target)
    if rule == "score":
        order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    elif rule == "ratio":
        order = sorted(range(len(scores)), key=lambda i: (scores[i] / max(costs[i], 1), i))
    else:
        raise DiffpruneError(f"unknown greedy rule '{rule}'")
    chosen, total = [], 0
    for i in order:
        if total >= target:
            break
        if costs[i] > 0:
            chosen.append(i)
            total += costs[i]
    return sorted(chosen)


def select(scores: Sequence[float], costs: Sequence[int], target: int, solver: str = "knapsack",
           bins: int | None = 4000) -> list[int]:
    if solver == "knapsack":
        return knapsack_min_cover(scores, costs, target, bins)
    if solver in ("greedy-score", "greedy-ratio"):
        return greedy_cover(scores, costs, target, solver.split("-")[1])
    raise DiffpruneError(f"unknown solver '{solver}' (choose from {', '.join(SOLVERS)})")
