"""The fixed prompt lists evaluations run on, each prompt with its own seed.

A prompt's seed depends only on its place in the list, never on batching or the number of processes, so any
sharding of the work gives the same images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import DiffpruneError
from ..prompt_files import read_prompt_file
from ..testbed.scenes import fixed_scenes
from ..testbed.world import Scene

@dataclass(frozen=True)
class EvalPrompt:
    caption: str
    seed: int
    scene: Scene | None = None  # known for shapes-world prompts: the ground truth


def shapes_prompts(n: int | None = None, seed: int = 0, split: str = "heldout") -> list[EvalPrompt]:
    """The held-out shapes prompts (100: every held-out one-object scene and 28 two-object scenes), or the
    first ``n`` of them; ``seed`` shifts every prompt's generation seed.

    ``split="train"`` gives 100 prompts of the same make-up from the training split (72 one-object scenes,
    28 two-object scenes), to measure the generalisation gap or tune sampler settings without touching the
    held-out prompts.
    """
    if split not in ("heldout", "train"):
        raise DiffpruneError(f"unknown split '{split}' (choose heldout or train)")
    scenes = fixed_scenes(split)
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
