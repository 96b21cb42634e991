"""``compress(pipe, recipe)``: every step of a recipe applied to one pipeline, in a fixed order.

1. **layers** — units removed (or a preset built), so that
2. **weights** are pruned on the final graph (calibrated masks see the layer-pruned U-Net);
3. **distill** — the pruned U-Net retrained against a copy of the pipeline taken before step 1 (weight masks
   kept through training);
4. **tokens** — the run-time token-pruning patch goes on last, on the U-Net that will actually run.

The whole recipe is checked against the pipeline before anything changes. Each step records itself in the
pipeline's history (``diffprune.save`` writes it to the manifest); the token step's spec is stored there too,
and ``diffprune.load`` re-applies it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from tqdm.auto import tqdm

from diffprune.anatomy import describe_kind, has_transformer, has_unet, is_pipeline
from diffprune.distill import DistillResult, check_data_spec, check_pipelines, data_from_spec, distill
from diffprune.errors import DiffpruneError
from diffprune.layers import LayerPruneResult, LayerPruningConfig, apply_preset
from diffprune.layers import prune as prune_layers
from diffprune.results import StepResult
from diffprune.tokens import TokenPruneResult, applied_config, parse_spec
from diffprune.tokens import prune as prune_tokens
from diffprune.weights import PruneResult
from diffprune.weights import prune as prune_weights
from diffprune.weights.prune import check_recipe
from diffprune.weights.targets import resolve_components

from .spec import Recipe


@dataclass
class CompressResult:
    """One :class:`~diffprune.results.StepResult` per step that ran (``None`` for a step the recipe lacks)."""

    recipe: Recipe
    layers: LayerPruneResult | None = None
    weights: PruneResult | None = None
    distill: DistillResult | None = None
    tokens: TokenPruneResult | None = None

    @property
    def steps(self) -> list[StepResult]:
        """The steps' results, in the order they ran."""
        return [r for r in (self.layers, self.weights, self.distill, self.tokens) if r is not None]

    @property
    def seconds(self) -> dict[str, float]:
        return {r.family: r.seconds for r in self.steps}

    def to_json(self) -> dict:
        return {"recipe": self.recipe.to_dict(), "seconds": self.seconds,
                **{r.family: r.to_json() for r in self.steps}}


def weight_configs(pipe, recipe: Recipe) -> dict:
    """The recipe's weight-pruning configs by component, ``denoiser`` resolved to the pipeline's U-Net or
    transformer."""
    return {name: w.config() for name, w in zip(resolve_components(pipe, recipe.weights), recipe.weights.values())}


def check(pipe, recipe: Recipe, *, work_dir=None) -> None:
    """Everything :func:`compress` needs from ``pipe`` and ``recipe``, checked before any change."""
    if not is_pipeline(pipe):
        raise DiffpruneError(f"compress works on a whole pipeline (calibration samples through it), got "
                             f"{describe_kind(pipe)}; for a bare module use the family functions "
                             "(diffprune.weights.prune, diffprune.layers.prune, diffprune.tokens.prune)")
    if not (has_unet(pipe) or has_transformer(pipe)) and recipe.tokens is not None:
        raise DiffpruneError("token pruning needs a pipeline with a U-Net or a diffusion transformer")
    if not has_unet(pipe) and recipe.layers is not None and recipe.layers.preset is not None:
        raise DiffpruneError(f"layer-pruning presets (BK-SDM) are U-Net architectures; this pipeline has "
                             f"{describe_kind(pipe).split(' with ', 1)[-1]}: prune its blocks by a criterion "
                             "and a ratio instead")
    if (recipe.tokens is not None or recipe.distill is not None) and applied_config(pipe) is not None:
        raise DiffpruneError("the pipeline already carries a token-pruning patch; remove it first")
    if recipe.distill is not None:
        check_data_spec(recipe.distill.data)
        check_pipelines(pipe)  # the teacher will be a copy of it
        if recipe.distill.config().checkpoint_every and work_dir is None:
            raise DiffpruneError("a distill step with checkpoint_every needs a work folder (compress(..., work_dir=))")
    if recipe.weights:
        if recipe.layers is None:
            check_recipe(pipe, weight_configs(pipe, recipe))
        else:  # the U-Net changes before its weights are pruned: check what does not depend on its structure
            missing = [c for c in weight_configs(pipe, recipe) if getattr(pipe, c, None) is None]
            if missing:
                raise DiffpruneError(f"the pipeline has no component '{missing[0]}'")


def compress(pipe, recipe: Recipe, *, progress: bool = True, work_dir=None) -> CompressResult:
    """Apply ``recipe`` to ``pipe`` in place (see the module docstring) and return what each step did.
    ``work_dir``: where a distillation step keeps its log and checkpoints (none by default)."""
    check(pipe, recipe, work_dir=work_dir)
    result = CompressResult(recipe)
    steps = [name for name, present in (("layers", recipe.layers is not None), ("weights", bool(recipe.weights)),
                                        ("distill", recipe.distill is not None),
                                        ("tokens", recipe.tokens is not None)) if present]
    teacher = data = None
    if recipe.distill is not None:  # the original, and its training data, before any change
        teacher = copy.deepcopy(pipe)
        data = data_from_spec(recipe.distill.data, teacher, seed=recipe.distill.config().seed)
    bar = tqdm(steps, desc=f"compress {recipe.name or ''}".strip(), disable=not progress)
    for step in bar:
        bar.set_postfix_str(step)
        if step == "layers":
            layers = recipe.layers
            if layers.preset is not None:
                result.layers = apply_preset(pipe, layers.preset)
            else:
                config = LayerPruningConfig(ratio=layers.ratio, budget=layers.budget, criterion=layers.criterion,
                                            granularity=layers.granularity, solver=layers.solver,
                                            calibration=recipe.calibration.layers_config(), seed=layers.seed,
                                            expressible=layers.expressible)
                result.layers = prune_layers(pipe, config, progress=progress)
        elif step == "weights":
            result.weights = prune_weights(pipe, weight_configs(pipe, recipe), recipe.calibration.weights_config(),
                                           progress=progress)
        elif step == "distill":
            result.distill = distill(pipe, teacher, data, recipe.distill.config(), work_dir=work_dir,
                                     progress=progress)
        else:
            result.tokens = prune_tokens(pipe, parse_spec(recipe.tokens), progress=progress)
    return result
