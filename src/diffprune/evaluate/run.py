"""One entry point for every suite: ``evaluate(source_or_pipe, EvalConfig(suite=...))``, and its report."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import DiffpruneError
from .prompts import EvalPrompt, file_prompts, shapes_prompts

SUITES = ("shapes", "fidelity", "clip", "pickscore", "fid")


@dataclass
class EvalConfig:
    suite: str = "shapes"
    prompts: int | None = None  # how many prompts (default: the whole list)
    prompts_file: str | None = None  # one prompt per line; default: the held-out shapes prompts
    seed: int = 0
    steps: int = 20
    guidance_scale: float = 5.0
    batch_size: int = 25
    reference: str | None = None  # fidelity: the uncompressed source (default: "shapes")
    clip_model: str | None = None
    pickscore_model: str | None = None
    pickscore_processor: str | None = None
    inception_weights: str | None = None
    reference_images: str | None = None  # fid: a folder of real images (default for shapes prompts: renders)
    progress: bool = True
    split: str = "heldout"  # shapes prompts: "heldout" (default) or "train"


@dataclass
class EvalResult:
    suite: str
    metrics: dict
    captions: list[str]
    images: torch.Tensor = field(repr=False)
    reference_images: torch.Tensor | None = field(default=None, repr=False)
    per_prompt: list[dict] = field(default_factory=list, repr=False)

    def to_json(self) -> dict:
        return dict(self.metrics)


def _as_pipe(source, dtype=None, device=None):
    if isinstance(source, (str, os.PathLike)):
        from ..io import load

        return load(source, dtype=dtype, device=device)
    return source


def _prompts(config: EvalConfig) -> list[EvalPrompt]:
    if config.prompts_file:
        return file_prompts(config.prompts_file, config.prompts, config.seed)
    return shapes_prompts(config.prompts, config.seed, config.split)


def evaluate(source, config: EvalConfig | None = None, *, dtype=None, device=None) -> EvalResult:
    """Run ``config.suite`` on a pipeline (or anything :func:`diffprune.load` accepts).

    ``dtype`` and ``device`` apply to whatever this call loads: ``source`` if it is not a pipeline yet, and the
    fidelity suite's reference.
    """
    from .generate import generate, image_size

    config = config or EvalConfig()
    check_inputs(config)  # before loading and generating: a wrong option costs nothing
    pipe = _as_pipe(source, dtype, device)
    if config.suite == "shapes":
        from .shapes import ShapesSuiteConfig, run_shapes_suite

        res = run_shapes_suite(pipe, ShapesSuiteConfig(config.prompts, config.seed, config.steps,
                                                       config.guidance_scale, config.batch_size, config.progress,
                                                       config.split))
        return EvalResult("shapes", res.metrics, [p.caption for p in res.prompts], res.images,
                          per_prompt=res.per_prompt)

    start = time.perf_counter()
    prompts = _prompts(config)
    captions = [p.caption for p in prompts]
    gen = dict(steps=config.steps, guidance_scale=config.guidance_scale, batch_size=config.batch_size,
               progress=config.progress)
    reference_images = None
    if config.suite == "fidelity":
        from .fidelity import fidelity_metrics

        reference = _as_pipe(config.reference or "shapes", dtype, device)
        features = feature_fn(image_size(pipe), config)
        images = generate(pipe, prompts, desc="compressed", **gen)
        reference_images = generate(reference, prompts, desc="reference", **gen)
        metrics = fidelity_metrics(images, reference_images, features)
        if image_size(pipe) == 64:  # the testbed: compare what the evaluator reads, attribute by attribute
            from ..testbed.evaluator import load_evaluator
            from .fidelity import reading_agreement

            evaluator = load_evaluator()
            metrics.update(reading_agreement(evaluator.read(images), evaluator.read(reference_images)))
    else:
        scorer = external_scorer(config, prompts, image_size(pipe))  # loads its network before generating
        images = generate(pipe, prompts, desc=config.suite, **gen)
        metrics = scorer(images, captions)
    metrics.update(n_images=len(images), steps=config.steps, guidance_scale=config.guidance_scale,
                   seed=config.seed, seconds=round(time.perf_counter() - start, 2))
    return EvalResult(config.suite, metrics, captions, images, reference_images)


def check_inputs(config: EvalConfig) -> None:
    """Every check that needs no model: suite, prompt count, files and folders the suite will read."""
    if config.suite not in SUITES:
        raise DiffpruneError(f"unknown suite '{config.suite}' (choose from {', '.join(SUITES)})")
    if config.suite == "shapes" and config.prompts_file:
        raise DiffpruneError("the shapes suite uses its own held-out prompts; --prompts-file is for other suites")
    prompts = _prompts(config)
    if config.suite in ("shapes", "fid") and len(prompts) < 2:
        raise DiffpruneError(f"the {config.suite} suite fits a Gaussian to the images: it needs at least 2 prompts")
    if config.suite == "clip" or (config.suite == "fidelity" and config.clip_model):
        from .clip import check_clip_folder

        check_clip_folder(config.clip_model, "CLIP score", "--clip-model")
    if config.suite == "pickscore":
        from .clip import check_clip_folder

        check_clip_folder(config.pickscore_model, "PickScore", "--pickscore-model")
        if config.pickscore_processor and not Path(config.pickscore_processor).expanduser().is_dir():
            raise DiffpruneError(f"PickScore: no processor folder at {config.pickscore_processor}")
    if config.suite == "fid":
        from .fid import check_fid_inputs

        check_fid_inputs(config.inception_weights)
        if config.reference_images and not Path(config.reference_images).expanduser().is_dir():
            raise DiffpruneError(f"reference images: no such folder {config.reference_images}")


def feature_fn(resolution: int, config: EvalConfig):
    """Features for the fidelity cosine: a local CLIP if given, else the shapes evaluator for 64x64 images."""
    if config.clip_model:
        from .clip import embed, load_clip

        model, processor = load_clip(config.clip_model, "feature cosine", "--clip-model")
        return lambda x: embed(model, processor, x, [""] * len(x))[0]
    if resolution == 64:
        from ..testbed.evaluator import load_evaluator

        return load_evaluator().features
    return None


def external_scorer(config: EvalConfig, prompts, resolution: int):
    """A function ``(images, captions) -> metrics`` with its network (and reference images) already loaded."""
    if config.suite == "clip":
        from .clip import clip_score, load_clip

        loaded = load_clip(config.clip_model, "CLIP score", "--clip-model")
        return lambda images, captions: {"clip_score": clip_score(images, captions, loaded=loaded)}
    if config.suite == "pickscore":
        from .clip import load_clip, pick_score

        loaded = load_clip(config.pickscore_model, "PickScore", "--pickscore-model", config.pickscore_processor)
        return lambda images, captions: {"pickscore": pick_score(images, captions, loaded=loaded)}
    from .fid import fid, fid_metric, load_image_folder

    if config.reference_images:
        reference = load_image_folder(config.reference_images, size=resolution)
    elif all(p.scene is not None for p in prompts):
        from .shapes import ground_truth

        reference = torch.nn.functional.interpolate(ground_truth(prompts), size=(resolution, resolution),
                                                    mode="bilinear")
    else:
        raise DiffpruneError("FID needs real images: pass --reference-images DIR")
    metric = fid_metric(config.inception_weights)
    return lambda images, captions: {"fid": fid(images, reference, metric=metric)}


def write_report(result: EvalResult, out_dir: str | os.PathLike, *, source: str, overwrite: bool = False,
                 protect=(), grid: int = 16) -> Path:
    """A report folder: metrics table, image grid (and the reference grid for fidelity), per-prompt scores."""
    from ..report import Report
    from .generate import to_pil

    report = Report(out_dir, title=f"diffprune eval: {result.suite} suite on {source}", overwrite=overwrite,
                    protect=protect)
    report.table([{"metric": k, "value": v} for k, v in result.metrics.items()], heading="Metrics")
    for key, value in result.metrics.items():
        report.metrics(key, value)
    n = min(grid, len(result.images))
    pil = to_pil(result.images[:n])
    report.image_grid("images", pil, captions=result.captions[:n], columns=4, heading="Generated images",
                      caption=f"first {n} of {len(result.images)} prompts, fixed seeds")
    if result.reference_images is not None:
        report.image_grid("reference", to_pil(result.reference_images[:n]), captions=result.captions[:n],
                          columns=4, heading="Reference images")
    if result.per_prompt:
        cols = [c for c in ("caption", "seed", "color", "shape", "size", "position", "count", "all", "read")
                if c in result.per_prompt[0] or c == "size"]
        rows = [{c: (", ".join(r[c]) if c == "read" else r.get(c, "")) for c in cols} for r in result.per_prompt]
        report.table(rows, heading="Per prompt", columns=cols)
    return report.write()
