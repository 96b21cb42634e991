"""One-shot layer pruning: score every removable unit once, choose the set for a target ratio, remove it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar

from diffprune.anatomy import denoiser_of, geometry, is_pipeline, is_transformer, unet_of
from diffprune.errors import DiffpruneError
from diffprune.history import record_step
from diffprune.measure.pipeline import denoiser_call_flops
from diffprune.measure.runtime import applied_runtime_patch
from diffprune.results import StepResult

from .criterion import CRITERIA, CalibrationSet, LayerCalibrationConfig, record_calibration, score_units
from .select import SOLVERS, select
from .surgery import remove_units
from .units import GRANULARITIES, Unit, enumerate_units, removable_units

BUDGETS = ("params", "flops")


@dataclass
class LayerPruningConfig:
    """Remove ``ratio`` of the denoiser's parameters (or FLOPs, ``budget="flops"``), choosing units by
    ``criterion`` at ``granularity`` (``block``: whole attention modules; ``layer``: transformer layers; a
    diffusion transformer's units are its blocks at either)."""

    ratio: float = 0.5
    budget: str = "params"
    criterion: str = "output-loss"
    granularity: str = "block"
    solver: str = "knapsack"
    calibration: LayerCalibrationConfig = field(default_factory=LayerCalibrationConfig)
    seed: int = 0
    expressible: bool = False  # only units whose removal a plain diffusers config describes (see below)

    def __post_init__(self) -> None:
        if self.expressible and self.granularity != "layer":
            raise DiffpruneError("expressible selection works on transformer layers: use granularity 'layer'")
        if not 0 <= self.ratio < 1:
            raise DiffpruneError(f"ratio must be in [0, 1), got {self.ratio}")
        for name, allowed in (("budget", BUDGETS), ("criterion", CRITERIA), ("granularity", GRANULARITIES),
                              ("solver", SOLVERS)):
            if getattr(self, name) not in allowed:
                raise DiffpruneError(f"unknown {name} '{getattr(self, name)}' (choose from {', '.join(allowed)})")


@dataclass
class LayerPruneResult(StepResult):
    """The units removed (or the preset built), their scores, and parameters and FLOPs before and after."""

    family: ClassVar[str] = "layers"
    removed: list[str]
    scores: dict[str, float]
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    config: LayerPruningConfig | None
    preset: str | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        n = len(self.removed)
        what = f"preset {self.preset}" if self.preset else f"{n} unit{'' if n == 1 else 's'} removed"
        return f"{what}: denoiser parameters -{self.params_ratio:.1%}, FLOPs -{self.flops_ratio:.1%}"

    def to_json(self) -> dict:
        return {"removed": list(self.removed), "preset": self.preset, "params_before": self.params_before,
                "params_after": self.params_after, "flops_before": self.flops_before,
                "flops_after": self.flops_after, "seconds": self.seconds,
                "criterion": None if self.config is None else self.config.criterion,
                "ratio": None if self.config is None else self.config.ratio}

    @property
    def params_ratio(self) -> float:
        return 1 - self.params_after / self.params_before

    @property
    def flops_ratio(self) -> float:
        return 1 - self.flops_after / self.flops_before


def _cost(unit: Unit, budget: str) -> int:
    return unit.params if budget == "params" else unit.flops


def expressible_units(unet, units: list[Unit]) -> list[Unit]:
    """Transformer layers whose removal a plain ``UNet2DConditionModel`` config can describe: never the first
    layer of a module (a module keeps at least one) and, when the last down stage has attention, neither the
    mid block's nor those of that stage's first module (diffusers gives the mid block that module's depth).
    SD-1.x/2.x have one layer per module, so nothing of theirs qualifies. Every removable block of a diffusion
    transformer qualifies (its config counts blocks per list)."""
    if is_transformer(unet):
        return [u for u in units if u.removable]
    tied = []
    if (unet.mid_block is not None and getattr(unet.mid_block, "attentions", None)
            and getattr(unet.down_blocks[-1], "attentions", None)):
        tied += ["mid_block.", f"down_blocks.{len(unet.down_blocks) - 1}.attentions.0."]
    return [u for u in units if u.kind == "layer" and u.removable and not u.name.endswith(".transformer_blocks.0")
            and not any(u.name.startswith(t) for t in tied)]


def plan(pipe, config: LayerPruningConfig, data: CalibrationSet | None = None, units: list[Unit] | None = None,
         progress: bool = False, scores: dict[str, float] | None = None) -> tuple[list[str], dict[str, float], list[Unit]]:
    """The units ``config`` would remove (without removing them), their scores, and all candidate units.
    ``scores`` (of ``config.criterion``, e.g. from an earlier call) skips scoring."""
    unet, g = denoiser_of(pipe, "layer pruning"), geometry(pipe)
    vae_factor, text_length = g.vae_scale_factor, g.text_length
    units = units or enumerate_units(unet, config.granularity, vae_scale_factor=vae_factor, text_length=text_length)
    candidates = expressible_units(unet, units) if config.expressible else removable_units(units)
    total = sum(p.numel() for p in unet.parameters()) if config.budget == "params" else \
        denoiser_call_flops(pipe).total
    limit = sum(_cost(u, config.budget) for u in candidates) / total
    if config.ratio >= limit:
        what = "expressible layers" if config.expressible else f"{config.granularity} granularity"
        raise DiffpruneError(f"ratio {config.ratio} is not below the most that can be removed with {what} "
                             f"by {config.budget}: {limit:.3f}")
    if scores is None:
        if config.criterion in ("output-loss", "taylor") and not is_pipeline(pipe) and \
                (data is None or config.criterion == "taylor"):
            raise DiffpruneError(f"the {config.criterion} criterion calibrates through a whole pipeline; a bare "
                                 "denoiser can be pruned by magnitude or random (or output-loss with recorded data)")
        if config.criterion in ("output-loss", "taylor") and data is None:
            data = record_calibration(pipe, config.calibration, progress=progress)
        scores = score_units(pipe, candidates, config.criterion, data, seed=config.seed, progress=progress)
    target = int(round(config.ratio * total))
    picked = select([scores[u.name] for u in candidates], [_cost(u, config.budget) for u in candidates], target,
                    config.solver)
    return [candidates[i].name for i in picked], scores, units


def _check_unpatched(unet) -> None:
    patch = applied_runtime_patch(unet)
    if patch is not None:
        raise DiffpruneError(f"the denoiser carries the run-time patch {patch[1]}; layer pruning changes the graph it "
                             "is installed on: remove it first (a recipe applies layers before tokens)")


def prune(pipe, config: LayerPruningConfig | None = None, data: CalibrationSet | None = None,
          progress: bool = False, *, scores: dict[str, float] | None = None) -> LayerPruneResult:
    """Score, select and remove in place; returns what was removed and the achieved ratios. ``pipe`` is a
    pipeline (U-Net or diffusion transformer: its blocks are the units), or a bare denoiser for the criteria that
    need no sampling (magnitude, random; output-loss with
    ``data`` recorded beforehand). ``scores`` of ``config.criterion`` from an earlier call (e.g.
    :func:`score_units` on the same U-Net) skip scoring, so one scoring serves several ratios."""
    start = time.perf_counter()
    config = config or LayerPruningConfig()
    unet = denoiser_of(pipe, "layer pruning")
    _check_unpatched(unet)
    params_before = sum(p.numel() for p in unet.parameters())
    flops_before = denoiser_call_flops(pipe).total
    removed, scores, units = plan(pipe, config, data, progress=progress, scores=scores)
    remove_units(unet, removed, {u.name: u for u in units})
    result = LayerPruneResult(removed=removed, scores=scores, params_before=params_before,
                              params_after=sum(p.numel() for p in unet.parameters()), flops_before=flops_before,
                              flops_after=denoiser_call_flops(pipe).total, config=config,
                              seconds=round(time.perf_counter() - start, 3))
    record_step(pipe, {"step": "prune-layers", "method": f"{config.criterion}, {config.granularity} granularity",
                       "removed": removed, "params_before": params_before, "params_after": result.params_after})
    return result


def apply_preset(pipe, preset: str) -> LayerPruneResult:
    """Replace ``pipe.unet`` by the handcrafted ``preset`` (BK-SDM) built from it, and record the step."""
    from .presets import build_preset

    start = time.perf_counter()
    if not is_pipeline(pipe):
        raise DiffpruneError("a preset replaces the pipeline's U-Net; for a bare U-Net use layers.build_preset, "
                             "which returns the new one")
    unet = unet_of(pipe, "a layer-pruning preset")
    _check_unpatched(unet)
    params_before = sum(p.numel() for p in unet.parameters())
    flops_before = denoiser_call_flops(pipe).total
    pipe.unet = build_preset(unet, preset)
    result = LayerPruneResult(removed=[], scores={}, params_before=params_before,
                              params_after=sum(p.numel() for p in pipe.unet.parameters()),
                              flops_before=flops_before, flops_after=denoiser_call_flops(pipe).total,
                              config=None, preset=preset, seconds=round(time.perf_counter() - start, 3))
    record_step(pipe, {"step": "prune-layers", "method": f"preset {preset}", "removed": [],
                       "params_before": params_before, "params_after": result.params_after})
    return result
