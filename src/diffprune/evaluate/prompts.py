"""The fixed prompt lists evaluations run on, each prompt with its own seed.

A prompt's seed depends only on its place in the list, never on batching or the number of processes, so any
sharding of the work gives the same images.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from ..errors import DiffpruneError
from ..prompt_files import read_prompt_file
from ..testbed.world import Scene, sample_scene, single_object_scenes, split_of

N_TWO_OBJECT = 28  # with the 72 held-out one-object scenes: 100 prompts


@dataclass(frozen=True)
class EvalPrompt:
    caption: str
    seed: int
    scene: Scene | None = None  # known for shapes-world prompts: the ground truth


def _scenes(split: str) -> list[Scene]:
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


def shapes_prompts(n: int | None = None, seed: int = 0, split: str = "heldout") -> list[EvalPrompt]:
    """The held-out shapes prompts (100: every held-out one-object scene and 28 two-object scenes), or the
    first ``n`` of them; ``seed`` shifts every prompt's generation seed.

    ``split="train"`` gives 100 prompts of the same make-up from the training split (72 one-object scenes,
    28 two-object scenes), to measure the generalisation gap or tune sampler settings without touching the
    held-out prompts.
    """
    if split not in ("heldout", "train"):
        raise DiffpruneError(f"unknown split '{split}' (choose heldout or train)")
    scenes = _scenes(split)
    if n is not None and not 1 <= n <= len(scenes):
        raise DiffpruneError(f"--prompts must be between 1 and {len(scenes)}, got {n}")
    return [EvalPrompt(s.caption, seed * 100_003 + i, s) for i, s in enumerate(scenes[:n])]


def file_prompts(path: str | Path, n: int | None = None, seed: int = 0) -> list[EvalPrompt]:
    """Prompts from a text file, one per line (blank lines and lines starting with ``#`` skipped)."""
    captions = read_prompt_file(path)
    if n is not None:
        if n < 1:
            raise DiffpruneError(f"--prompts must be at least 1, got {n}")
        captions = captions[:n]
    return [EvalPrompt(c, seed * 100_003 + i) for i, c in enumerate(captions)]
