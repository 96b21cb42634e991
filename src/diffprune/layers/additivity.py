"""The additivity check behind one-shot selection: for random sets of units, the real output loss of removing
the set against the sum of each criterion's single-unit scores. A criterion whose sums track the real loss
(high correlation) can be scored once and optimised as a sum; one whose sums do not cannot."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .criterion import CalibrationSet, output_loss
from .units import Unit


@dataclass
class AdditivityResult:
    sets: list[list[str]]
    real: list[float]                    # output loss of removing each set
    summed: dict[str, list[float]]       # per criterion: the sum of its single-unit scores over each set

    def pearson(self, criterion: str) -> float:
        return _pearson(self.summed[criterion], self.real)

    def spearman(self, criterion: str) -> float:
        return _pearson(_ranks(self.summed[criterion]), _ranks(self.real))


def _pearson(x: Sequence[float], y: Sequence[float]) -> float:
    a, b = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    a, b = a - a.mean(), b - b.mean()
    denominator = float(a.norm() * b.norm())
    return float((a * b).sum()) / denominator if denominator > 0 else float("nan")


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    for rank, i in enumerate(order):
        ranks[i] = float(rank)
    return ranks


def random_sets(units: Sequence[Unit], count: int, sizes: tuple[int, int], seed: int = 0) -> list[list[str]]:
    """``count`` random sets of ``sizes[0]..sizes[1]`` distinct units (seeded)."""
    rng = random.Random(seed)
    names = [u.name for u in units]
    low, high = max(1, sizes[0]), min(len(names), sizes[1])
    return [sorted(rng.sample(names, rng.randint(low, high))) for _ in range(count)]


def additivity(unet, data: CalibrationSet, units: Sequence[Unit], scores: dict[str, dict[str, float]],
               count: int = 30, sizes: tuple[int, int] = (2, 6), seed: int = 0,
               progress: bool = False) -> AdditivityResult:
    """Measure the real output loss of ``count`` random sets and each criterion's summed scores for them."""
    sets = random_sets(units, count, sizes, seed)
    table = {u.name: u for u in units}
    real = [output_loss(unet, data, s, table) for s in tqdm(sets, desc="additivity", disable=not progress)]
    summed = {c: [sum(by_unit[n] for n in s) for s in sets] for c, by_unit in scores.items()}
    return AdditivityResult(sets=sets, real=real, summed=summed)


def plot_additivity(result: AdditivityResult):
    """One scatter panel per criterion: summed single-unit score against the real loss of the set."""
    from matplotlib.figure import Figure

    criteria = list(result.summed)
    fig = Figure(figsize=(3.2 * len(criteria), 3.2), dpi=110)
    for i, criterion in enumerate(criteria):
        ax = fig.add_subplot(1, len(criteria), i + 1)
        ax.scatter(result.summed[criterion], result.real, s=12, color="#4C72B0")
        ax.set_title(f"{criterion}\nPearson {result.pearson(criterion):.3f}, "
                     f"Spearman {result.spearman(criterion):.3f}", fontsize=8)
        ax.set_xlabel("sum of single-unit scores", fontsize=8)
        if i == 0:
            ax.set_ylabel("output loss of removing the set", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig
