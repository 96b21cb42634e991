"""``run_bench(source, recipes)``: the uncompressed baseline and every recipe, measured side by side in one process.

Each variant is a fresh copy of the baseline compressed by :func:`diffprune.compress`; all of them draw the
same prompts from the same seeds. Measured per variant: parameters and non-zero parameters, size on disk
(saved as diffprune saves it: bitmask when weights were pruned), FLOPs per image over the sampling schedule
(attention and token-pruning overhead included), latency of one image relative to the baseline (interleaved
rounds), memory (the weights, and the peak above them while generating), and quality — the shapes suite and reading agreement on the testbed,
fidelity to the baseline's images always, CLIP score / PickScore / FID when local weights are given.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from diffprune.anatomy import call_options, denoiser_of, geometry
from diffprune.errors import DiffpruneError
from diffprune.evaluate import (EvalConfig, ShapesSuiteConfig, check_inputs, external_scorer, feature_fn,
                                fidelity_metrics, file_prompts, generate, image_size, reading_agreement,
                                run_shapes_suite, shapes_prompts)
from diffprune.io import load
from diffprune.measure import count_params, describe_hardware, disk_usage, interleaved_latency, measure_pipeline
from diffprune.measure import peak_memory
from diffprune.recipe import Recipe, check, compress
from diffprune.saving import save

from .config import BenchConfig

BASELINE = "baseline"
TESTBED_SIZE = 64  # the shapes testbed draws 64x64 images: the exact evaluator reads them


@dataclass
class VariantResult:
    """One row of the bench: a variant's cost and quality."""

    name: str
    recipe: dict | None
    steps: list[str]
    params: int
    nonzero_params: int
    disk_bytes: int
    gflops_per_image: float
    weights_bytes: int         # the variant's parameters in memory
    generation_bytes: int      # extra memory while generating the prompts (peak above what was held before)
    quality: dict
    latency_s: float | None = None
    latency_ratio: float | None = None
    groups: dict[str, dict] | None = None  # a transformer's parameters and FLOPs by role (measure_pipeline)
    images: torch.Tensor | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "images"}


@dataclass
class BenchResult:
    source: str
    config: BenchConfig
    testbed: bool
    captions: list[str]
    variants: list[VariantResult]
    hardware: dict

    @property
    def quality_key(self) -> str:
        """The headline quality metric: the shapes suite's on the testbed, else fidelity to the baseline."""
        if self.testbed:
            return "accuracy_all"
        quality = self.variants[-1].quality if len(self.variants) > 1 else {}
        return "feature_cosine" if "feature_cosine" in quality else "ssim"

    def headline(self) -> list[float | None]:
        """Each variant's :attr:`quality_key` (fidelity of the baseline to itself is 1)."""
        return [v.quality.get(self.quality_key, 1.0 if v.name == BASELINE and not self.testbed else None)
                for v in self.variants]

    def to_json(self) -> dict:
        return {"source": self.source, "config": self.config, "testbed": self.testbed, "captions": self.captions,
                "quality_key": self.quality_key, "hardware": self.hardware,
                "variants": [v.to_json() for v in self.variants]}


def _prompts(config: BenchConfig):
    if config.prompts_file:
        return file_prompts(config.prompts_file, config.prompts, config.seed)
    return shapes_prompts(config.prompts, config.seed)


def _scorers(config: BenchConfig, prompts, resolution: int) -> dict:
    """The optional networks, loaded (and their inputs checked) before anything is generated."""
    out = {}
    for suite, given in (("clip", config.clip_model), ("pickscore", config.pickscore_model),
                         ("fid", config.inception_weights)):
        if given:
            eval_config = EvalConfig(suite=suite, prompts=config.prompts, prompts_file=config.prompts_file,
                                     seed=config.seed, clip_model=config.clip_model,
                                     pickscore_model=config.pickscore_model,
                                     pickscore_processor=config.pickscore_processor,
                                     inception_weights=config.inception_weights,
                                     reference_images=config.reference_images)
            check_inputs(eval_config)
            out[suite] = external_scorer(eval_config, prompts, resolution)
    return out


def _disk_bytes(pipe, has_weight_step: bool) -> int:
    with tempfile.TemporaryDirectory(prefix="diffprune-bench-") as tmp:
        folder = save(pipe, Path(tmp) / "variant", weights_format="bitmask" if has_weight_step else "dense")
        return disk_usage(folder).total_bytes


def _one_image(pipe, caption: str, seed: int, config: BenchConfig):
    size = geometry(pipe).resolution

    def call():
        with torch.inference_mode():
            pipe(caption, num_inference_steps=config.steps, guidance_scale=config.guidance_scale, height=size,
                 width=size, generator=torch.Generator().manual_seed(seed), output_type="pt", **call_options(pipe))
    return call


def check_recipes(recipes: Sequence[Recipe]) -> None:
    """Names present and unique (they label the rows, plots and images)."""
    names = [r.name for r in recipes]
    if not recipes:
        raise DiffpruneError("give at least one recipe to bench against the baseline")
    if any(n is None for n in names):
        raise DiffpruneError("every benched recipe needs a name (it labels the rows, plots and images)")
    duplicate = next((n for n in names if names.count(n) > 1 or n == BASELINE), None)
    if duplicate is not None:
        raise DiffpruneError(f"recipe name '{duplicate}' is used twice (or is reserved for the baseline)")


def _check_peers(peers: Sequence[str], recipes: Sequence[Recipe]) -> None:
    from .peers import PEERS, available, is_peer, parse_peer, split_variant

    names = {r.name for r in recipes} | {BASELINE}
    for spec in peers:
        if spec in names or list(peers).count(spec) > 1:
            raise DiffpruneError(f"variant '{spec}' is named twice")
        for part in split_variant(spec):
            if is_peer(part):
                peer = parse_peer(part)
                if not available(peer.name):
                    raise DiffpruneError(f"{peer.name} is not installed: pip install {PEERS[peer.name][1]} "
                                         "(or diffprune[peers])")
            else:
                from diffprune.tokens import parse_spec

                parse_spec(part)


def _real_flops(pipe, config: BenchConfig, caption: str) -> int:
    """FLOPs of one whole pipeline call as it really runs (for patches the meta count cannot model)."""
    from diffprune.measure import flop_counter

    size = geometry(pipe).resolution
    with flop_counter() as counter, torch.inference_mode():
        pipe(caption, num_inference_steps=config.steps, guidance_scale=config.guidance_scale, height=size,
             width=size, generator=torch.Generator().manual_seed(config.seed), output_type="pt",
             **call_options(pipe))
    return int(counter.get_total_flops())


def run_bench(source, recipes: Sequence[Recipe], config: BenchConfig | None = None, *,
              name: str | None = None, peers: Sequence[str] = ()) -> BenchResult:
    """Bench ``recipes`` against the uncompressed ``source`` (a pipeline or anything :func:`diffprune.load`
    takes; ``name`` labels it in the report); see the module docstring. The source pipeline is left unchanged.

    ``peers``: variant specs run beside the recipes (see :mod:`diffprune.bench.peers`): the public tomesd and
    DeepCache, alone or on top of diffprune's token pruning (``atedm:ratio=0.63+deepcache:interval=3``). They
    change no weight; their FLOPs per image are the baseline's scaled by one really-run image of each."""
    config = config or BenchConfig()
    if recipes or not peers:
        check_recipes(recipes)
    _check_peers(peers, recipes)
    name = name or (str(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__)
    base = load(source) if isinstance(source, (str, os.PathLike)) else source
    for recipe in recipes:  # every recipe checked against the pipeline before any work
        check(base, recipe)
    size = image_size(base)
    testbed = size == TESTBED_SIZE and not config.prompts_file
    prompts = _prompts(config)  # without a file, the shapes captions (any pipeline can draw them)
    scorers = _scorers(config, prompts, size)
    features = feature_fn(size, EvalConfig(clip_model=config.clip_model))
    evaluator = None
    if testbed:
        from diffprune.testbed.evaluator import load_evaluator

        evaluator = load_evaluator()
    bar = tqdm(total=len(recipes) + len(peers) + 1, desc="bench", unit="variant", disable=not config.progress)
    pipes, variants, readings = {}, [], {}
    real_flops: dict[str, int] = {}
    for recipe in [None, *recipes, *peers]:
        peer = recipe if isinstance(recipe, str) else None
        label = BASELINE if recipe is None else peer or recipe.name
        bar.set_postfix_str(label)
        pipe = copy.deepcopy(base)
        pipe.set_progress_bar_config(disable=True)
        steps = []
        if peer is not None:
            from .peers import apply_variant

            apply_variant(pipe, peer)  # removed with the copy at the end
            steps = [f"run time: {peer}"]
            recipe = None
        elif recipe is not None:
            result = compress(pipe, recipe, progress=False)
            steps = [f"{s.family}: {s.summary()}" for s in result.steps]
        if testbed:
            def run(steps: int):
                return run_shapes_suite(pipe, ShapesSuiteConfig(
                    prompts=config.prompts, seed=config.seed, steps=steps, guidance_scale=config.guidance_scale,
                    batch_size=config.batch_size, progress=False), evaluator)
        else:
            def run(steps: int):
                return generate(pipe, prompts, steps=steps, guidance_scale=config.guidance_scale,
                                batch_size=config.batch_size, progress=False)
        if label == BASELINE:  # one-time allocations (kernels built for these shapes, cached ground truth, thread
            run(1)          # pools) must not count as the baseline's peak: the same run with one step first
        output, memory = peak_memory(lambda: run(config.steps), device=str(denoiser_of(pipe).device))
        if testbed:
            images = output.images
            quality = {k: v for k, v in output.metrics.items() if k.startswith("accuracy_") or k in ("fd",)}
            readings[label] = output.readings  # what the suite read, not read again
        else:
            images, quality = output, {}
        if label != BASELINE:
            reference = variants[0].images
            quality.update(fidelity_metrics(images, reference, features))
            if testbed:
                quality.update(reading_agreement(readings[label], readings[BASELINE]))
        for scorer in scorers.values():
            quality.update(scorer(images, [p.caption for p in prompts]))
        params = count_params(pipe)
        if peers and (label == BASELINE or peer is not None):
            real_flops[label] = _real_flops(pipe, config, prompts[0].caption)
        if peer is None:
            measured = measure_pipeline(pipe, steps=config.steps)
            gflops = measured.flops_per_image(guidance=config.guidance_scale > 1) / 1e9
        else:  # a peer's patch is invisible to the meta count (and DeepCache wants positional calls)
            measured = None
            gflops = variants[0].gflops_per_image * real_flops[label] / real_flops[BASELINE]
        variants.append(VariantResult(
            name=label, recipe=None if recipe is None else recipe.to_dict(), steps=steps, params=params.total,
            nonzero_params=sum(c.nonzero or 0 for c in params.components.values()),
            disk_bytes=variants[0].disk_bytes if peer is not None else
            _disk_bytes(pipe, recipe is not None and bool(recipe.weights)),
            gflops_per_image=gflops,
            weights_bytes=sum(c.bytes for c in params.components.values()),
            generation_bytes=memory.delta_bytes, quality=quality, groups=measured and measured.groups,
            images=images))
        pipes[label] = pipe
        bar.update()
    bar.close()
    caption, seed = prompts[0].caption, prompts[0].seed
    stats = interleaved_latency({label: _one_image(p, caption, seed, config) for label, p in pipes.items()},
                                repeats=config.latency_repeats, warmup=config.latency_warmup,
                                device=str(denoiser_of(base).device), progress=config.progress)
    for v in variants:
        v.latency_s = stats[v.name].median_s
        v.latency_ratio = stats[v.name].median_s / stats[BASELINE].median_s
    return BenchResult(source=name, config=config, testbed=testbed, captions=[p.caption for p in prompts],
                       variants=variants, hardware=describe_hardware(str(denoiser_of(base).device)))
