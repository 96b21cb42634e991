"""Calibration, one rule for every family that calibrates (weight pruning, layer pruning): which prompts, how
many, and which noise.

``num_prompts`` prompts are taken from the user's list, repeated from the start when the list is shorter;
without a list, the shapes testbed's fixed training-split captions are used (held-out prompts are never
calibrated on). Prompt ``k`` of a run seeded ``seed`` is sampled from the noise of generator seed
``seed * 100_003 + k``, so runs with neighbouring seeds share no noise, and weight and layer pruning calibrated
with the same settings see the same samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from diffprune.errors import DiffpruneError
from diffprune.testbed.scenes import training_captions

#: defaults shared by every calibrated method (and by a recipe's calibration)
DEFAULT_NUM_PROMPTS = 16
DEFAULT_STEPS = 10
DEFAULT_GUIDANCE_SCALE = 5.0
DEFAULT_BATCH_SIZE = 8
SEED_STRIDE = 100_003


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


def calibration_generators(seed: int, start: int, count: int) -> list[torch.Generator]:
    """CPU generators for prompts ``start .. start + count - 1`` of a calibration run seeded ``seed``."""
    return [torch.Generator(device="cpu").manual_seed(seed * SEED_STRIDE + start + i) for i in range(count)]
