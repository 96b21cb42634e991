"""The testbed's fixed scene lists: what the ``shapes`` suite evaluates (held-out split) and what calibration
and tuning use (training split). Each list is drawn once with fixed seeds, so it never changes."""

from __future__ import annotations

import random

from .world import Scene, sample_scene, single_object_scenes, split_of

N_TWO_OBJECT = 28  # with the 72 one-object scenes: 100


def fixed_scenes(split: str) -> list[Scene]:
    """The fixed scene list of a split (``"heldout"`` or ``"train"``): 72 one-object scenes and
    ``N_TWO_OBJECT`` two-object scenes, shuffled once so that any prefix mixes both kinds."""
    singles = [s for s in single_object_scenes() if split_of(s) == split]
    if split == "train":  # as many one-object scenes as the held-out list has, drawn once with a fixed seed
        singles = random.Random(2025).sample(singles, 72)
    rng, pairs, seen = random.Random(2024 if split == "heldout" else 2026), [], set()
    while len(pairs) < N_TWO_OBJECT:
        scene = sample_scene(rng, split, two_object_prob=1.0)
        if scene.caption not in seen:
            seen.add(scene.caption)
            pairs.append(scene)
    scenes = singles + pairs
    random.Random(7).shuffle(scenes)  # so that any prefix mixes one- and two-object prompts
    return scenes


def training_captions(n: int) -> list[str]:
    """The first ``n`` captions of the training split's fixed list (at most 100), for calibration."""
    return [s.caption for s in fixed_scenes("train")[:n]]
