"""One recipe for every compression family, and :func:`compress`, which applies it."""

from .compress import CompressResult, check, compress
from .spec import CalibrationSpec, DistillStep, LayerStep, Recipe, WeightStep, example_recipes, load_recipe, recipe_from_specs

__all__ = ["CalibrationSpec", "CompressResult", "DistillStep", "LayerStep", "Recipe", "WeightStep", "check", "compress", "example_recipes",
           "load_recipe", "recipe_from_specs"]
