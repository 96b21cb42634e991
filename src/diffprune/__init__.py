"""diffprune: make Stable Diffusion pipelines smaller and faster, and measure what it cost.

The public API: :func:`load` / :func:`save` for pipelines, :mod:`diffprune.measure` for honest numbers,
:class:`Report` for Markdown/JSON/PNG reports, and one subpackage per compression family:
:mod:`diffprune.weights`, :mod:`diffprune.layers` and :mod:`diffprune.tokens`.
"""

__version__ = "0.1.0"

from diffprune.errors import DiffpruneError  # noqa: E402
from diffprune.io import load  # noqa: E402
from diffprune.saving import save  # noqa: E402
from diffprune.measure import measure_pipeline as measure  # noqa: E402
from diffprune import layers, tokens, weights  # noqa: E402  (each registers its storage formats)


__all__ = ["DiffpruneError", "__version__", "layers", "load", "measure", "save", "tokens", "weights"]
