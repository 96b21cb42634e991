"""One entry point: prune a pipeline's components in place, each by its own method and sparsity.

Text encoders are pruned before the U-Net, and every calibrated method works block by block in forward order,
so each block is calibrated on the outputs of the already pruned blocks before it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm

from diffprune.anatomy import denoiser_name, is_denoiser, is_module
from diffprune.errors import DiffpruneError
from diffprune.history import record_step
from diffprune.results import StepResult
from diffprune.weights.calibrate import CalibrationConfig, Collector, run_sampling, run_text_encoder
from diffprune.weights.config import MagnitudeConfig, OWLConfig, PruneConfig, RandomConfig, SparseGPTConfig
from diffprune.weights.magnitude import magnitude_prune, random_prune
from diffprune.weights.masks import allocate
from diffprune.weights.owl import block_counts, block_sparsities, outlier_ratio
from diffprune.weights.sparsegpt import sparsegpt_prune
from diffprune.weights.targets import (DENOISERS, PRUNABLE_COMPONENTS, Target, check_pattern_fits, find_targets,
                                      groups_in_order)
from diffprune.weights.wanda import wanda_prune


@dataclass
class ComponentResult:
    method: str
    pattern: str
    target_sparsity: float
    layers: int
    weights: int            # weights in the pruned layers
    zeros: int              # zeros among them after pruning
    component_params: int
    component_zeros: int
    seconds: float
    sparsity: float = field(init=False)            # achieved, over the pruned layers
    component_sparsity: float = field(init=False)  # over every parameter of the component

    def __post_init__(self) -> None:
        self.sparsity = self.zeros / self.weights if self.weights else 0.0
        self.component_sparsity = self.component_zeros / self.component_params if self.component_params else 0.0


@dataclass
class PruneResult(StepResult):
    """Per pruned component: method, pattern, target and achieved sparsity, weights, seconds."""

    family: ClassVar[str] = "weights"
    components: dict[str, ComponentResult] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return round(sum(c.seconds for c in self.components.values()), 3)

    def summary(self) -> str:
        return "; ".join(f"{name}: {c.method} {c.pattern}, {c.sparsity:.1%} of {c.weights:,} weights zero"
                         for name, c in self.components.items())

    def to_json(self) -> dict:
        return {name: asdict(c) for name, c in self.components.items()}


def _components(pipe) -> dict[str, nn.Module]:
    if is_module(pipe):
        return {denoiser_name(pipe) if is_denoiser(pipe) else "text_encoder": pipe}
    return {n: getattr(pipe, n) for n in PRUNABLE_COMPONENTS if isinstance(getattr(pipe, n, None), nn.Module)}


def check_recipe(pipe, recipe: dict[str, PruneConfig]) -> dict[str, list[Target]]:
    """Validate everything before any weight changes; return each component's targets."""
    available = _components(pipe)
    if not recipe:
        raise DiffpruneError("nothing to prune: give a sparsity for at least one component")
    out = {}
    for name, config in recipe.items():
        if name not in PRUNABLE_COMPONENTS:
            raise DiffpruneError(f"'{name}' cannot be pruned (prunable components: {', '.join(PRUNABLE_COMPONENTS)})")
        if name not in available:
            raise DiffpruneError(f"the pipeline has no component '{name}' (it has: {', '.join(available) or 'none'})")
        if not isinstance(config, PruneConfig):
            raise DiffpruneError(f"{name}: expected a pruning config such as MagnitudeConfig, got {type(config).__name__}")
        config.validate()
        module = available[name]
        if any(p.device.type == "meta" for p in module.parameters()):
            raise DiffpruneError(f"{name} is on the meta device and has no weights to prune")
        if isinstance(config, OWLConfig) and name in DENOISERS:
            raise DiffpruneError(f"OWL assigns sparsity per text-encoder block; use another method for the {name}")
        if config.needs_calibration and is_module(pipe):
            raise DiffpruneError(f"{config.method} needs calibration through a full pipeline, not a bare module")
        targets = find_targets(module, include_conv=config.include_conv)
        if not targets:
            raise DiffpruneError(f"{name} has no layers to prune")
        grouped = next((t.name for t in targets if getattr(t.module, "groups", 1) > 1), None)
        if config.needs_calibration and grouped is not None:
            raise DiffpruneError(f"{config.method} calibrates dense input columns; {name}.{grouped} is a grouped "
                                 "(depthwise) convolution: prune convolutions by magnitude, or set include_conv=False (drop --conv)")
        check_pattern_fits(targets, config.nm, name)
        out[name] = targets
    return out


def _run_calibration(pipe, name: str, calibration: CalibrationConfig, collector: Collector) -> None:
    with collector:
        if name in DENOISERS:
            run_sampling(pipe, calibration, collector)
        else:
            run_text_encoder(pipe, name, calibration)


def _packs(groups: list[list[Target]], n: int) -> list[list[Target]]:
    """Consecutive blocks merged into at most ``n`` packs of similar weight counts."""
    if len(groups) <= n:
        return groups
    sizes = [sum(t.weight.numel() for t in g) for g in groups]
    per_pack, packs, current, filled = sum(sizes) / n, [], [], 0.0
    for g, size in zip(groups, sizes):
        current += g
        filled += size
        if filled >= per_pack * (len(packs) + 1) and len(packs) < n - 1:
            packs.append(current)
            current = []
    if current:
        packs.append(current)
    return packs


def _calibrated(pipe, name: str, targets: list[Target], config: PruneConfig, calibration: CalibrationConfig,
                counts: dict[str, int], progress: bool) -> None:
    groups = groups_in_order(targets)
    if name in DENOISERS:
        groups = _packs(groups, calibration.groups)
    hessian = isinstance(config, SparseGPTConfig)
    for group in tqdm(groups, desc=f"{name}: {config.method}", disable=not progress):
        collector = Collector(group, hessian=hessian)
        _run_calibration(pipe, name, calibration, collector)
        for t in group:
            stats = collector.stats[t.name]
            if hessian:
                sparsegpt_prune(stats, counts[t.name], config)
            else:
                wanda_prune(stats, counts[t.name], config)
        del collector


def _owl(pipe, name: str, targets: list[Target], config: OWLConfig, calibration: CalibrationConfig,
         progress: bool) -> None:
    groups = groups_in_order(targets)
    collector = Collector(targets, hessian=False)
    _run_calibration(pipe, name, calibration, collector)
    ratios = [outlier_ratio([collector.stats[t.name] for t in g], config.outlier_m) for g in groups]
    del collector
    sparsities = block_sparsities(ratios, config)
    total = round(config.sparsity * sum(t.weight.numel() for t in targets))
    per_block = block_counts([[t.weight.numel() for t in g] for g in groups], sparsities, total)
    counts = {t.name: k for g, ks in zip(groups, per_block) for t, k in zip(g, ks)}
    if config.base == "magnitude":
        magnitude_prune(targets, MagnitudeConfig(sparsity=config.sparsity), [counts[t.name] for t in targets])
    else:
        _calibrated(pipe, name, targets, config, calibration, counts, progress)


@torch.no_grad()
def prune(pipe, recipe: dict[str, PruneConfig], calibration: CalibrationConfig | None = None, *,
          progress: bool = False) -> PruneResult:
    """Prune ``pipe`` in place: ``recipe`` maps component names (``text_encoder``, ``text_encoder_2``,
    ``text_encoder_3``, ``unet`` or ``transformer``) to a config such as ``MagnitudeConfig(sparsity=0.35)``.
    Returns what was achieved.

    Calibrated methods (Wanda, OWL, SparseGPT) use ``calibration`` (default: 32 testbed prompts, 10 steps).
    """
    calibration = calibration or CalibrationConfig()
    calibration.validate()
    all_targets = check_recipe(pipe, recipe)
    components = _components(pipe)
    result = PruneResult()
    order = [n for n in PRUNABLE_COMPONENTS if n in recipe]
    for name in order:
        config, targets = recipe[name], all_targets[name]
        start = time.perf_counter()
        counts = dict(zip((t.name for t in targets), allocate([t.weight.numel() for t in targets], config.sparsity)))
        if isinstance(config, MagnitudeConfig):
            magnitude_prune(targets, config)
        elif isinstance(config, RandomConfig):
            random_prune(targets, config)
        elif isinstance(config, OWLConfig):
            _owl(pipe, name, targets, config, calibration, progress)
        else:
            _calibrated(pipe, name, targets, config, calibration, counts, progress)
        module = components[name]
        params = list(module.parameters())
        result.components[name] = ComponentResult(
            method=config.method, pattern=config.pattern, target_sparsity=config.sparsity, layers=len(targets),
            weights=sum(t.weight.numel() for t in targets),
            zeros=sum(t.weight.numel() - int(torch.count_nonzero(t.weight)) for t in targets),
            component_params=sum(p.numel() for p in params),
            component_zeros=sum(p.numel() - int(torch.count_nonzero(p)) for p in params),
            seconds=round(time.perf_counter() - start, 3))
    for name, r in result.components.items():
        record_step(pipe, {"step": "prune-weights", "component": name, "method": r.method, "pattern": r.pattern,
                           "sparsity": r.target_sparsity, "achieved": round(r.sparsity, 6)})
    return result
