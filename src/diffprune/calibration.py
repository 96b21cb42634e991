"""Calibration prompts, one rule for every family that calibrates (weight pruning, layer pruning).

``num_prompts`` prompts are taken from the user's list, repeated from the start when the list is shorter;
without a list, the shapes testbed's fixed training-split captions are used (held-out prompts are never
calibrated on).
"""

from __future__ import annotations

from collections.abc import Sequence

from diffprune.errors import DiffpruneError
from diffprune.testbed.scenes import training_captions


def calibration_prompts(prompts: Sequence[str] | None, num_prompts: int) -> list[str]:
    """Exactly ``num_prompts`` calibration prompts (see the module docstring)."""
    if num_prompts < 1:
        raise DiffpruneError("calibration needs at least one prompt")
    if prompts is None:
        captions = training_captions(100)
        return [captions[i % len(captions)] for i in range(num_prompts)]
    usable = [p for p in prompts if p.strip()]
    if not usable:
        raise DiffpruneError("the calibration prompt list is empty")
    return [usable[i % len(usable)] for i in range(num_prompts)]
