"""Find the highest per-component sparsities whose quality drop stays within a budget.

First each component alone: bisection over a sparsity grid (quality is assumed to fall as sparsity rises, which
the sweep shows for the methods here; the bisection finds one crossing of the budget). Then jointly: starting
from the single-component limits, one grid step is taken back at a time, always from the component whose step
back recovers the most quality, until the combination is within budget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from tqdm.auto import tqdm

from diffprune.errors import DiffpruneError
from diffprune.weights.calibrate import CalibrationConfig
from diffprune.weights.config import make_config, method_options
from diffprune.weights.prune import check_recipe, prune
from diffprune.weights.targets import DENOISER, DENOISERS, resolve_components
from diffprune.weights.sweep import LOWER_IS_BETTER, backup_weights, restore_weights


@dataclass
class SearchConfig:
    method: str = "magnitude"
    components: list[str] = field(default_factory=lambda: ["text_encoder", DENOISER])  # denoiser: unet or transformer
    budget: float = 0.02          # largest allowed quality drop, in the metric's units (0.02 = 2 points)
    metric: str = "accuracy_all"
    step: float = 0.025
    max_sparsity: float = 0.9
    pattern: str = "unstructured"
    include_conv: bool = False
    scope: str = "layer"
    seed: int = 0

    def validate(self) -> None:
        if self.budget < 0:
            raise DiffpruneError(f"the budget must be >= 0, got {self.budget:g}")
        if not 0 < self.step <= self.max_sparsity < 1:
            raise DiffpruneError("search needs 0 < step <= max_sparsity < 1")
        if self.pattern != "unstructured":
            raise DiffpruneError("search varies the sparsity; an N:M pattern fixes it")
        if not self.components:
            raise DiffpruneError("search needs at least one component")
        make_config(self.method, self.step, **method_options(self.method, scope=self.scope))

    def grid(self) -> list[float]:
        n = int(round(self.max_sparsity / self.step + 1e-9))
        return [round(self.step * i, 6) for i in range(1, n + 1)]


@dataclass
class SearchResult:
    metric: str
    budget: float
    dense: dict
    best: dict[str, float]
    value: float
    drop: float
    evaluations: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return vars(self)


class _Evaluator:
    def __init__(self, pipe, config: SearchConfig, score, calibration, progress: bool):
        self.pipe, self.config, self.score, self.calibration = pipe, config, score, calibration
        self.backup = backup_weights(pipe, config.components)
        self.dense = score(pipe)
        if config.metric not in self.dense:
            raise DiffpruneError(f"the suite reports no metric '{config.metric}' (it has: {', '.join(self.dense)})")
        self.cache: dict[tuple, float] = {}
        self.log: list[dict] = []
        self.bar = tqdm(desc="search", unit="eval", disable=not progress)

    def drop(self, value: float) -> float:
        base = self.dense[self.config.metric]
        return value - base if self.config.metric in LOWER_IS_BETTER else base - value

    def __call__(self, sparsities: dict[str, float]) -> float:
        key = tuple(sparsities.get(c, 0.0) for c in self.config.components)
        if key not in self.cache:
            c = self.config
            recipe = {name: make_config(c.method, s, **method_options(
                          c.method, scope=c.scope, seed=c.seed, include_conv=c.include_conv and name in DENOISERS))
                      for name, s in sparsities.items() if s > 0}
            try:
                if recipe:
                    prune(self.pipe, recipe, self.calibration)
                value = self.score(self.pipe)[c.metric]
            finally:
                restore_weights(self.pipe, self.backup)
            self.cache[key] = value
            self.log.append({"sparsities": dict(sparsities), "value": value, "drop": self.drop(value)})
            self.bar.update()
        return self.cache[key]

    def ok(self, sparsities: dict[str, float]) -> bool:
        return self.drop(self(sparsities)) <= self.config.budget + 1e-12


def search(pipe, config: SearchConfig, score: Callable[[object], dict],
           calibration: CalibrationConfig | None = None, *, progress: bool = False) -> SearchResult:
    config.validate()
    config = replace(config, components=resolve_components(pipe, config.components))
    check_recipe(pipe, {c: make_config(config.method, config.step, **method_options(
                            config.method, scope=config.scope, include_conv=config.include_conv and c in DENOISERS))
                        for c in config.components})
    ev = _Evaluator(pipe, config, score, calibration, progress)
    grid = config.grid()
    alone: dict[str, int] = {}
    for comp in config.components:  # bisection: index lo passes (-1 = dense), index hi fails
        lo, hi = -1, len(grid)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if ev.ok({comp: grid[mid]}):
                lo = mid
            else:
                hi = mid
        alone[comp] = lo
    current = dict(alone)
    as_sparsity = lambda idx: {c: (grid[i] if i >= 0 else 0.0) for c, i in idx.items()}  # noqa: E731
    while not ev.ok(as_sparsity(current)):
        options = []
        for comp, i in current.items():
            if i >= 0:
                trial = {**current, comp: i - 1}
                options.append((ev.drop(ev(as_sparsity(trial))), comp, trial))
        if not options:
            break
        current = min(options, key=lambda o: (o[0], o[1]))[2]
    best = as_sparsity(current)
    value = ev(best)
    ev.bar.close()
    return SearchResult(config.metric, config.budget, ev.dense, best, value, ev.drop(value), ev.log)
