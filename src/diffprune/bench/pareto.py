"""The quality-versus-cost Pareto front: the variants no other variant beats on both at once."""

from __future__ import annotations

from collections.abc import Sequence


def pareto_front(costs: Sequence[float], qualities: Sequence[float]) -> list[int]:
    """Indices of the points that no other point dominates (cost no higher and quality no lower, one of them
    strictly), ordered by cost. Points with a missing (``None``) quality are never on the front."""
    points = [(c, q, i) for i, (c, q) in enumerate(zip(costs, qualities)) if q is not None and c is not None]
    front = []
    for c, q, i in points:
        dominated = any(c2 <= c and q2 >= q and (c2 < c or q2 > q) for c2, q2, _ in points)
        if not dominated:
            front.append((c, -q, i))
    return [i for _, _, i in sorted(front)]


def plot_pareto(names: Sequence[str], costs: Sequence[float], qualities: Sequence[float], *, xlabel: str,
                ylabel: str, ax) -> None:
    """Scatter every variant on ``ax``, label it, and join the Pareto front."""
    labels: dict[tuple[float, float], list[str]] = {}  # variants at the same point share one label
    for name, c, q in zip(names, costs, qualities):
        if q is not None and c is not None:
            labels.setdefault((c, q), []).append(name)
    for (c, q), group in labels.items():
        ax.scatter([c], [q], s=36, color="#4C72B0", zorder=3)
        ax.annotate(", ".join(group), (c, q), textcoords="offset points", xytext=(5, 4), fontsize=8)
    front = pareto_front(costs, qualities)
    if len(front) > 1:
        ax.plot([costs[i] for i in front], [qualities[i] for i in front], color="#C44E52", lw=1.2,
                label="Pareto front", zorder=2)
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
