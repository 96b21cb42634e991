"""What to prune and how: one small config dataclass per method, validated before any work starts.

Every config carries the target ``sparsity`` of its component, the ``pattern`` (``"unstructured"`` or N:M such
as ``"2:4"``: keep N of every M consecutive input weights of a row) and whether ``nn.Conv2d`` layers are pruned
besides ``nn.Linear``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from diffprune.errors import DiffpruneError

_NM = re.compile(r"^(\d+):(\d+)$")


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """``None`` for unstructured, else ``(n, m)``: keep ``n`` of every ``m`` consecutive weights."""
    if pattern == "unstructured":
        return None
    match = _NM.match(pattern or "")
    if not match:
        raise DiffpruneError(f"unknown pattern '{pattern}' (use 'unstructured' or N:M such as 2:4 or 4:8)")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise DiffpruneError(f"pattern {pattern}: N:M keeps N of every M weights, so 0 < N < M")
    return n, m


@dataclass
class PruneConfig:
    """Fields shared by every method."""

    sparsity: float = 0.5
    pattern: str = "unstructured"
    include_conv: bool = False  # also prune nn.Conv2d (weights flattened to [C_out, C_in*kh*kw])

    method = "base"
    needs_calibration = False

    def validate(self) -> None:
        if not isinstance(self.sparsity, (int, float)) or not 0 <= self.sparsity < 1:
            raise DiffpruneError(f"sparsity must be in [0, 1), got {self.sparsity}")
        nm = parse_pattern(self.pattern)
        if nm is not None:
            n, m = nm
            if abs(self.sparsity - (m - n) / m) > 1e-9:
                raise DiffpruneError(f"pattern {self.pattern} fixes the sparsity at {(m - n) / m:g}; "
                                     f"got {self.sparsity:g}")

    @property
    def nm(self) -> tuple[int, int] | None:
        return parse_pattern(self.pattern)


@dataclass
class MagnitudeConfig(PruneConfig):
    """Zero the smallest |W|: one threshold per weight matrix (``scope="layer"``) or one over the component."""

    scope: str = "layer"
    method = "magnitude"

    def validate(self) -> None:
        super().validate()
        if self.scope not in ("layer", "global"):
            raise DiffpruneError(f"magnitude scope must be 'layer' or 'global', got '{self.scope}'")
        if self.scope == "global" and self.nm is not None:
            raise DiffpruneError("an N:M pattern is per row; it cannot use a global threshold")


@dataclass
class RandomConfig(PruneConfig):
    """Zero a seeded random choice of weights: the floor every other method must beat."""

    seed: int = 0
    method = "random"


@dataclass
class WandaConfig(PruneConfig):
    """Score |W_ij| * ||X_j||_2 from calibration inputs; every output row loses the same share."""

    method = "wanda"
    needs_calibration = True


@dataclass
class OWLConfig(PruneConfig):
    """Outlier-weighted layer-wise sparsity: blocks with more outlier scores keep more weights.

    A block's outlier ratio is the share of its Wanda scores above ``outlier_m`` times their mean; ratios are
    mapped linearly onto ``[-lam, +lam]`` around the target and each block is pruned by ``base``.
    """

    base: str = "magnitude"
    outlier_m: float = 7.0
    lam: float = 0.08
    method = "owl"
    needs_calibration = True

    def validate(self) -> None:
        super().validate()
        if self.base not in ("magnitude", "wanda"):
            raise DiffpruneError(f"OWL base must be 'magnitude' or 'wanda', got '{self.base}'")
        if self.nm is not None:
            raise DiffpruneError("OWL sets a different sparsity per block; it cannot use an N:M pattern")
        if not 0 <= self.lam < 1 or self.outlier_m <= 0:
            raise DiffpruneError("OWL needs outlier_m > 0 and 0 <= lam < 1")


@dataclass
class SparseGPTConfig(PruneConfig):
    """Optimal-brain-surgeon pruning: masks from W^2 / diag(H^-1)^2, the kept weights updated to compensate."""

    block_size: int = 128
    damping: float = 0.01
    method = "sparsegpt"
    needs_calibration = True

    def validate(self) -> None:
        super().validate()
        if self.block_size < 1 or not 0 < self.damping < 1:
            raise DiffpruneError("SparseGPT needs block_size >= 1 and 0 < damping < 1")


METHODS: dict[str, type[PruneConfig]] = {
    "magnitude": MagnitudeConfig, "random": RandomConfig, "wanda": WandaConfig, "owl": OWLConfig,
    "sparsegpt": SparseGPTConfig,
}


def method_options(method: str, **options) -> dict:
    """The ``options`` that ``method`` uses. For sweeps and searches, whose settings are shared by every method
    they run (``scope`` belongs to magnitude, ``seed`` to random); a single prune passes its options to
    :func:`make_config` as given, where an unused one is an error."""
    cls = METHODS.get(method)
    if cls is None:
        raise DiffpruneError(f"unknown pruning method '{method}' (choose from {', '.join(METHODS)})")
    return {k: v for k, v in options.items() if k in cls.__dataclass_fields__}


def make_config(method: str, sparsity: float, **options) -> PruneConfig:
    """A validated config for ``method`` by name. Options given as ``None`` count as not given; an option the
    method does not use is an error (``wanda`` with ``scope="global"`` would otherwise be silently ignored)."""
    cls = METHODS.get(method)
    if cls is None:
        raise DiffpruneError(f"unknown pruning method '{method}' (choose from {', '.join(METHODS)})")
    fields = cls.__dataclass_fields__
    given = {k: v for k, v in options.items() if v is not None}
    unused = [k for k in given if k not in fields]
    if unused:
        usable = ", ".join(k for k in fields if k != "sparsity")
        raise DiffpruneError(f"{method} does not use the option '{unused[0]}' (its options: {usable})")
    if not isinstance(sparsity, (int, float)) or isinstance(sparsity, bool):
        raise DiffpruneError(f"sparsity must be a number, got {sparsity!r}")
    config = cls(sparsity=sparsity, **given)
    config.validate()
    return config
