"""``compress(pipe, recipe)``: every step of a recipe applied to one pipeline, in a fixed order.

1. **layers** — units removed (or a preset built), so that
2. **weights** are pruned on the final graph (calibrated masks see the layer-pruned U-Net), and then
3. **tokens** — the run-time token-pruning patch goes on last, on the U-Net that will actually run.

The whole recipe is checked against the pipeline before anything changes. Each step records itself in the
pipeline's history (``diffprune.save`` writes it to the manifest); the token step's spec is stored there too,
and ``diffprune.load`` re-applies it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from torch import nn
from tqdm.auto import tqdm

from diffprune.errors import DiffpruneError
from diffprune.history import record_step
from diffprune.layers import LayerPruneResult, LayerPruningConfig, apply_preset
from diffprune.layers import prune as prune_layers
from diffprune.tokens import apply as apply_tokens
from diffprune.tokens import applied_config, parse_spec
from diffprune.weights import PruneResult
from diffprune.weights import prune as prune_weights
from diffprune.weights.prune import check_recipe

from .spec import Recipe


@dataclass
class CompressResult:
    """What each step did, and how long it took."""

    recipe: Recipe
    layers: LayerPruneResult | None = None
    weights: PruneResult | None = None
    tokens: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        out: dict = {"recipe": self.recipe.to_dict(), "seconds": dict(self.seconds)}
        if self.layers is not None:
            out["layers"] = {"removed": self.layers.removed, "params_before": self.layers.params_before,
                             "params_after": self.layers.params_after, "flops_before": self.layers.flops_before,
                             "flops_after": self.layers.flops_after, "preset": self.layers.preset}
        if self.weights is not None:
            out["weights"] = self.weights.to_json()
        if self.tokens is not None:
            out["tokens"] = self.tokens
        return out


def check(pipe, recipe: Recipe) -> None:
    """Everything :func:`compress` needs from ``pipe`` and ``recipe``, checked before any change."""
    if isinstance(pipe, nn.Module):
        raise DiffpruneError("compress works on a whole pipeline (calibration samples through it); for a bare "
                             "module use the family functions (diffprune.weights.prune, diffprune.tokens.apply)")
    if type(getattr(pipe, "unet", None)).__name__ != "UNet2DConditionModel" and \
            (recipe.layers is not None or recipe.tokens is not None):
        raise DiffpruneError("layer and token pruning need a pipeline with a UNet2DConditionModel")
    if recipe.tokens is not None and applied_config(pipe) is not None:
        raise DiffpruneError("the pipeline already carries a token-pruning patch; remove it first")
    if recipe.weights:
        if recipe.layers is None:
            check_recipe(pipe, {c: w.config() for c, w in recipe.weights.items()})
        else:  # the U-Net changes before its weights are pruned: check what does not depend on its structure
            missing = [c for c in recipe.weights if getattr(pipe, c, None) is None]
            if missing:
                raise DiffpruneError(f"the pipeline has no component '{missing[0]}'")


def compress(pipe, recipe: Recipe, *, progress: bool = True) -> CompressResult:
    """Apply ``recipe`` to ``pipe`` in place (see the module docstring) and return what each step did."""
    check(pipe, recipe)
    result = CompressResult(recipe)
    steps = [name for name, present in (("layers", recipe.layers is not None), ("weights", bool(recipe.weights)),
                                        ("tokens", recipe.tokens is not None)) if present]
    bar = tqdm(steps, desc=f"compress {recipe.name or ''}".strip(), disable=not progress)
    for step in bar:
        bar.set_postfix_str(step)
        start = time.perf_counter()
        if step == "layers":
            layers = recipe.layers
            if layers.preset is not None:
                result.layers = apply_preset(pipe, layers.preset)
            else:
                config = LayerPruningConfig(ratio=layers.ratio, budget=layers.budget, criterion=layers.criterion,
                                            granularity=layers.granularity, solver=layers.solver,
                                            calibration=recipe.calibration.layers_config(), seed=layers.seed)
                result.layers = prune_layers(pipe, config, progress=progress)
        elif step == "weights":
            result.weights = prune_weights(pipe, {c: w.config() for c, w in recipe.weights.items()},
                                           recipe.calibration.weights_config(), progress=progress)
        else:
            config = parse_spec(recipe.tokens)
            apply_tokens(pipe, config)
            result.tokens = config.spec()
            record_step(pipe, {"step": "prune-tokens", "spec": result.tokens})
        result.seconds[step] = round(time.perf_counter() - start, 3)
    return result
