"""Quality against sparsity: prune one component at a time over a grid, evaluate each point, find the collapse.

Each point starts from the dense weights (restored in place, so no second copy of the pipeline is built) and is
scored with the same evaluation suite, prompts and seeds as the dense model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from tqdm.auto import tqdm

from diffprune.errors import DiffpruneError
from diffprune.weights.calibrate import CalibrationConfig
from diffprune.weights.config import make_config, method_options
from diffprune.weights.prune import check_recipe, prune
from diffprune.weights.targets import DENOISER, DENOISERS, resolve_components

LOWER_IS_BETTER = ("fd", "fid")


@dataclass
class SweepConfig:
    methods: list[str] = field(default_factory=lambda: ["magnitude"])
    components: list[str] = field(default_factory=lambda: ["text_encoder", DENOISER])  # denoiser: unet or transformer
    sparsities: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    metric: str = "accuracy_all"
    pattern: str = "unstructured"
    include_conv: bool = False
    scope: str = "layer"
    seed: int = 0
    collapse_fraction: float = 0.5  # collapse: quality falls below this share of the dense model's

    def validate(self) -> None:
        if not self.methods or not self.components or not self.sparsities:
            raise DiffpruneError("a sweep needs at least one method, component and sparsity")
        for s in self.sparsities:
            if not 0 <= s < 1:
                raise DiffpruneError(f"sparsities must be in [0, 1), got {s:g}")
        for m in self.methods:
            for s in self.sparsities:
                make_config(m, s, **method_options(m, pattern=self.pattern, scope=self.scope))
        if not 0 < self.collapse_fraction < 1:
            raise DiffpruneError("collapse_fraction must be in (0, 1)")


@dataclass
class SweepPoint:
    method: str
    component: str
    sparsity: float
    metrics: dict
    achieved: float
    seconds: float


@dataclass
class SweepResult:
    metric: str
    dense: dict
    points: list[SweepPoint] = field(default_factory=list)

    def curve(self, method: str, component: str) -> list[tuple[float, float]]:
        return sorted((p.sparsity, p.metrics[self.metric]) for p in self.points
                      if p.method == method and p.component == component)

    def drop(self, value: float) -> float:
        """How much worse than dense (positive = worse), in the metric's own units."""
        base = self.dense[self.metric]
        return value - base if self.metric in LOWER_IS_BETTER else base - value

    def collapse(self, method: str, component: str, fraction: float = 0.5) -> float | None:
        """Lowest sparsity whose quality is below ``fraction`` of dense (above ``1/fraction`` x for FD/FID)."""
        base = self.dense[self.metric]
        for s, v in self.curve(method, component):
            bad = v > base / fraction if self.metric in LOWER_IS_BETTER else v < base * fraction
            if bad:
                return s
        return None

    def to_json(self, fraction: float = 0.5) -> dict:
        pairs = sorted({(p.method, p.component) for p in self.points})
        return {"metric": self.metric, "dense": self.dense,
                "points": [vars(p) for p in self.points],
                "collapse": {f"{m}/{c}": self.collapse(m, c, fraction) for m, c in pairs}}


def backup_weights(pipe, components: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """A copy of the named components' weights, for :func:`restore_weights`."""
    return {c: {k: v.detach().clone() for k, v in getattr(pipe, c).state_dict().items()} for c in components}


@torch.no_grad()
def restore_weights(pipe, backup: dict[str, dict[str, torch.Tensor]]) -> None:
    for c, state in backup.items():
        getattr(pipe, c).load_state_dict(state)


def run_sweep(pipe, config: SweepConfig, score: Callable[[object], dict], calibration: CalibrationConfig | None = None,
              *, progress: bool = False) -> SweepResult:
    """Evaluate ``score(pipe)`` (a dict of metrics) on the dense pipeline and at every grid point."""
    config.validate()
    config = replace(config, components=resolve_components(pipe, config.components))
    recipes = {(m, c, s): {c: make_config(m, s, **method_options(
                               m, pattern=config.pattern, scope=config.scope, seed=config.seed,
                               include_conv=config.include_conv and c in DENOISERS))}
               for m in config.methods for c in config.components for s in config.sparsities}
    for recipe in recipes.values():
        check_recipe(pipe, recipe)  # every point is checked before the first (long) evaluation
    dense = score(pipe)
    if config.metric not in dense or not isinstance(dense[config.metric], (int, float)):
        raise DiffpruneError(f"the suite reports no metric '{config.metric}' (it has: {', '.join(dense)})")
    result = SweepResult(config.metric, dense)
    backup = backup_weights(pipe, config.components)
    try:
        for (m, c, s), recipe in tqdm(recipes.items(), desc="sweep", disable=not progress):
            start = time.perf_counter()
            pruned = prune(pipe, recipe, calibration)
            metrics = score(pipe)
            result.points.append(SweepPoint(m, c, s, metrics, pruned.components[c].sparsity,
                                            round(time.perf_counter() - start, 2)))
            restore_weights(pipe, backup)
    finally:
        restore_weights(pipe, backup)
    return result


def plot_sweep(result: SweepResult, fraction: float = 0.5):
    """A matplotlib figure: one panel per component, one line per method, dense level and collapse marked."""
    from matplotlib.figure import Figure

    components = sorted({p.component for p in result.points})
    methods = sorted({p.method for p in result.points})
    fig = Figure(figsize=(5 * len(components), 3.8), dpi=110)
    axes = fig.subplots(1, len(components), squeeze=False)
    for ax, comp in zip(axes[0], components):
        ax.axhline(result.dense[result.metric], color="gray", linestyle="--", label="dense")
        for method in methods:
            curve = result.curve(method, comp)
            if not curve:
                continue
            line, = ax.plot([s * 100 for s, _ in curve], [v for _, v in curve], marker="o", label=method)
            at = result.collapse(method, comp, fraction)
            if at is not None:
                value = dict(curve)[at]
                ax.plot([at * 100], [value], marker="X", markersize=12, color=line.get_color())
                ax.annotate(f"collapse {at:.0%}", (at * 100, value), textcoords="offset points", xytext=(5, 8),
                            fontsize=8, color=line.get_color())
        ax.set_title(comp)
        ax.set_xlabel("sparsity of pruned layers (%)")
        ax.set_ylabel(result.metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def fmt_table(result: SweepResult, fraction: float = 0.5) -> list[list]:
    """Rows ``[method, component, sparsity, metric, drop]`` for a report table."""
    rows = []
    for p in sorted(result.points, key=lambda p: (p.component, p.method, p.sparsity)):
        v = p.metrics[result.metric]
        rows.append([p.method, p.component, f"{p.sparsity:.1%}", v, result.drop(v)])
    return rows
