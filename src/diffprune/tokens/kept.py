"""What a token-pruning site reports to observers each time it chooses its kept tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KeptTokens:
    """What one site (a U-Net attention block, or the ranking block of a DiT segment) kept in one denoiser
    call: ``kept`` (batch, kept count) token indices into the ``tokens`` = height x width tokens of ``grid``,
    row-major."""

    site: str
    timestep: float | None
    tokens: int
    grid: tuple[int, int] | None
    kept: torch.Tensor
