"""The ``shapes`` suite: how well a (compressed) testbed pipeline draws what held-out prompts ask for.

Images are generated for fixed held-out prompts and seeds, read by the testbed's evaluator and scored per
attribute; the Frechet distance in the evaluator's feature space compares them with ground-truth renders of
the same prompts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..errors import DiffpruneError
from ..testbed.data import render_images, to_float
from ..testbed.evaluator import FEATURE_DIM, load_evaluator
from ..testbed.scoring import score_scene
from .frechet import frechet_distance
from .generate import generate, image_size
from .prompts import EvalPrompt, shapes_prompts

ATTRIBUTES = ("color", "shape", "size", "position", "count")


@dataclass
class ShapesSuiteConfig:
    prompts: int | None = None  # None: all 100 held-out prompts
    seed: int = 0
    steps: int = 20
    guidance_scale: float = 5.0
    batch_size: int = 25
    progress: bool = True
    split: str = "heldout"  # "train": prompts from the training split, for tuning and generalisation gaps


@dataclass
class ShapesResult:
    metrics: dict
    prompts: list[EvalPrompt]
    images: torch.Tensor = field(repr=False)
    per_prompt: list[dict] = field(repr=False, default_factory=list)
    readings: list = field(repr=False, default_factory=list)  # the evaluator's detections, one list per image

    def to_json(self) -> dict:
        return dict(self.metrics)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def score_images(images: torch.Tensor, prompts: list[EvalPrompt], evaluator, batch_size: int = 256):
    """Per-prompt attribute scores and the evaluator's readings of ``images``."""
    readings = evaluator.read(images, batch_size=batch_size)
    scores = [score_scene(p.scene, found) for p, found in zip(prompts, readings)]
    return scores, readings


def summarize(scores: list[dict], prompts: list[EvalPrompt]) -> dict:
    """Mean score per attribute. ``accuracy_cell`` is the grid cell on one-object prompts,
    ``accuracy_relation`` the caption's relation on two-object prompts, and ``accuracy_position`` the mean of
    the two (of whichever the prompts have)."""
    metrics = {"accuracy_all": _mean([s["all"] for s in scores])}
    for attr in ATTRIBUTES:
        metrics[f"accuracy_{attr}"] = _mean([s[attr] for s in scores if attr in s])
    n_objects = [len(p.scene.objects) for p in prompts]
    metrics["accuracy_cell"] = _mean([s["position"] for s, n in zip(scores, n_objects) if n == 1])
    metrics["accuracy_relation"] = _mean([s["position"] for s, n in zip(scores, n_objects) if n == 2])
    metrics["accuracy_position"] = _mean([v for v in (metrics["accuracy_cell"], metrics["accuracy_relation"])
                                          if v is not None])
    for n, key in ((1, "accuracy_all_one_object"), (2, "accuracy_all_two_objects")):
        metrics[key] = _mean([s["all"] for s, p in zip(scores, prompts) if len(p.scene.objects) == n])
    return metrics


def ground_truth(prompts: list[EvalPrompt], seed_offset: int = 0) -> torch.Tensor:
    """Renders of the prompts' scenes (float in [0, 1])."""
    return to_float(render_images([(p.scene, p.seed + seed_offset) for p in prompts]))


def shapes_metrics(images: torch.Tensor, prompts: list[EvalPrompt], evaluator=None):
    """The suite's scores of already generated ``images`` (one per prompt, in order, float in [0, 1]):
    ``(metrics, per-prompt scores, readings)``. Lets a caller time generation apart from scoring."""
    if len(images) != len(prompts):
        raise DiffpruneError(f"{len(images)} images for {len(prompts)} prompts")
    evaluator = evaluator or load_evaluator()
    scores, readings = score_images(images, prompts, evaluator)
    metrics = summarize(scores, prompts)
    truth = ground_truth(prompts)
    metrics["fd"] = frechet_distance(evaluator.features, FEATURE_DIM, truth, images)
    # the same distance between two sets of ground-truth renders: what "as good as the world" reads
    metrics["fd_ground_truth"] = frechet_distance(evaluator.features, FEATURE_DIM, truth,
                                                  ground_truth(prompts, seed_offset=7_919))
    return metrics, scores, readings


def run_shapes_suite(pipe, config: ShapesSuiteConfig | None = None, evaluator=None) -> ShapesResult:
    """Generate, read and score; see the module docstring. ``pipe`` must draw 64x64 shapes-world images."""
    config = config or ShapesSuiteConfig()
    start = time.perf_counter()
    prompts = shapes_prompts(config.prompts, config.seed, config.split)
    evaluator = evaluator or load_evaluator()
    size = image_size(pipe)
    if size != 64:  # checked before generating anything
        raise DiffpruneError(f"the shapes suite needs a pipeline drawing 64x64 images (the testbed's size); "
                             f"this one draws {size}x{size}")
    images = generate(pipe, prompts, steps=config.steps, guidance_scale=config.guidance_scale,
                      batch_size=config.batch_size, progress=config.progress, desc="shapes suite")
    metrics, scores, readings = shapes_metrics(images, prompts, evaluator)
    metrics.update(split=config.split, n_images=len(images), steps=config.steps,
                   guidance_scale=config.guidance_scale, seed=config.seed,
                   seconds=round(time.perf_counter() - start, 2))
    per_prompt = [{"caption": p.caption, "seed": p.seed, **s,
                   "read": [f"{d.size} {d.color} {d.shape} @{d.position}" for d in found]}
                  for p, s, found in zip(prompts, scores, readings)]
    return ShapesResult(metrics, prompts, images, per_prompt, readings)
