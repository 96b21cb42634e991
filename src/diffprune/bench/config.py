"""What ``diffprune bench`` runs: prompts, sampling settings, latency rounds and optional quality networks."""

from __future__ import annotations

from dataclasses import dataclass

from diffprune.errors import DiffpruneError


@dataclass(frozen=True)
class BenchConfig:
    """Every variant (the baseline and one per recipe) draws the same ``prompts`` with the same seeds.

    ``prompts``: how many prompts — the shapes testbed's held-out prompts, or the first N lines of
    ``prompts_file``. ``latency_repeats`` interleaved rounds time one image per variant. The optional local
    weights add CLIP score, PickScore and FID (``reference_images``: real images for FID).
    """

    prompts: int | None = 16
    prompts_file: str | None = None
    steps: int = 20
    guidance_scale: float = 5.0
    seed: int = 0
    batch_size: int = 25
    latency_repeats: int = 5
    latency_warmup: int = 1
    grid_prompts: int = 6
    clip_model: str | None = None
    pickscore_model: str | None = None
    pickscore_processor: str | None = None
    inception_weights: str | None = None
    reference_images: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.prompts is not None and self.prompts < 2:
            raise DiffpruneError("bench needs at least 2 prompts (the Frechet distance fits a Gaussian)")
        if min(self.steps, self.batch_size, self.latency_repeats, self.grid_prompts) < 1:
            raise DiffpruneError("bench: steps, batch_size, latency_repeats and grid_prompts must be at least 1")
        if self.latency_warmup < 0:
            raise DiffpruneError("bench: latency_warmup must be at least 0")
