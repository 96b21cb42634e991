"""One recipe for every compression family, and :func:`compress`, which applies it."""

from .compress import CompressResult, check, compress
from .spec import CalibrationSpec, LayerStep, Recipe, WeightStep

__all__ = ["CalibrationSpec", "CompressResult", "LayerStep", "Recipe", "WeightStep", "check", "compress"]
