"""diffprune: make Stable Diffusion pipelines smaller and faster, and measure what it cost.

The public API: :func:`load` / :func:`save` for pipelines, :mod:`diffprune.measure` for honest numbers,
:class:`Report` for Markdown/JSON/PNG reports, one subpackage per compression family
(:mod:`diffprune.weights`, :mod:`diffprune.layers`, :mod:`diffprune.tokens`; each entry point returns a
:class:`StepResult`), and :class:`Recipe` / :func:`compress` composing them.
"""

__version__ = "0.1.0"

from diffprune.errors import DiffpruneError  # noqa: E402
from diffprune.io import load  # noqa: E402
from diffprune.saving import save  # noqa: E402
from diffprune.measure import measure_pipeline as measure  # noqa: E402
from diffprune import layers, tokens, weights  # noqa: E402  (each registers its storage formats)
from diffprune.results import StepResult  # noqa: E402
from diffprune.recipe import Recipe, compress  # noqa: E402


__all__ = ["DiffpruneError", "Recipe", "StepResult", "__version__", "compress", "layers", "load", "measure", "save",
           "tokens", "weights"]
