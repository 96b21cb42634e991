"""The demo job: load the bundled shapes testbed, measure it, generate and evaluate an image grid, write a report.

It exercises the whole load -> measure -> evaluate -> report path on a trained model that needs no download.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from diffprune.anatomy import has_unet
from diffprune.errors import DiffpruneError
from diffprune.evaluate.generate import to_pil
from diffprune.evaluate.shapes import ShapesSuiteConfig, run_shapes_suite
from diffprune.io import input_folder, load, read_paths
from diffprune.measure import describe_hardware, measure_pipeline, peak_memory
from diffprune.report import Report

DEFAULT_PROMPTS = (
    "a large red circle in the top left",
    "a small blue square in the center",
    "a green triangle to the right of a yellow star",
    "a large purple star in the bottom right",
)


@dataclass
class DemoConfig:
    source: str = "shapes"
    prompts: tuple[str, ...] = DEFAULT_PROMPTS  # for pipelines the shapes suite cannot read
    eval_prompts: int = 16  # held-out shapes prompts generated and scored when the pipeline draws 64x64
    steps: int = 20
    guidance_scale: float = 5.0
    seed: int = 0
    latency_repeats: int = 5


@dataclass
class DemoResult:
    report_dir: Path
    summary: dict = field(default_factory=dict)


def _component_rows(m) -> list[dict]:
    return [{"component": name, "class": c.class_name, "params": c.params, "non-zero": c.nonzero,
             "dtype": c.dtype} for name, c in m.params.components.items()]


def _flops_rows(m, steps: int, cfg: bool) -> list[dict]:
    unet_calls = steps * (2 if cfg else 1)
    rows = [{"component call": "unet (one step)", "GFLOPs": m.unet_flops.total / 1e9,
             "attention share": m.unet_flops.attention / max(1, m.unet_flops.total),
             "calls per image": unet_calls}]
    for name, f in m.text_encoder_flops.items():
        rows.append({"component call": name, "GFLOPs": f.total / 1e9,
                     "attention share": f.attention / max(1, f.total),
                     "calls per image": 2 if cfg else 1})  # the negative prompt is encoded too
    rows.append({"component call": "vae decode", "GFLOPs": m.vae_decode_flops.total / 1e9,
                 "attention share": m.vae_decode_flops.attention / max(1, m.vae_decode_flops.total),
                 "calls per image": 1})
    return rows


def run_demo(out_dir: str | os.PathLike, config: DemoConfig | None = None, *, overwrite: bool = False) -> DemoResult:
    """Run the demo and write its report to ``out_dir``."""
    config = config or DemoConfig()
    report = Report(out_dir, title="diffprune demo", overwrite=overwrite, protect=read_paths(config.source))
    # shown on a terminal only, and cleared when done (or on an error, so the error stays one line)
    with tqdm(total=4, desc="demo", unit="stage", disable=None, leave=False) as stages:
        return _run(report, config, stages)


def _run(report: Report, config: DemoConfig, stages) -> DemoResult:
    stages.set_postfix_str("loading")
    pipe = load(config.source)
    if not has_unet(pipe):
        raise DiffpruneError(f"the demo needs a whole pipeline; {config.source} is a single component")
    report.protect.append(input_folder(pipe))
    pipe.set_progress_bar_config(disable=None, leave=False)
    stages.update()
    stages.set_postfix_str("measuring")
    m = measure_pipeline(pipe, latency_repeats=config.latency_repeats, source=config.source)
    stages.update()
    stages.set_postfix_str("generating")
    suite = None
    if m.resolution == 64:  # the testbed's size: generate held-out prompts and score them exactly
        cfg = ShapesSuiteConfig(prompts=config.eval_prompts, seed=config.seed, steps=config.steps,
                                guidance_scale=config.guidance_scale, progress=False)
        suite, memory = peak_memory(lambda: run_shapes_suite(pipe, cfg))
        images = to_pil(suite.images)
        captions = [p.caption for p in suite.prompts]
    else:
        generators = [torch.Generator().manual_seed(config.seed + i) for i in range(len(config.prompts))]
        images, memory = peak_memory(lambda: pipe(list(config.prompts), num_inference_steps=config.steps,
                                                  guidance_scale=config.guidance_scale,
                                                  generator=generators).images)
        captions = list(config.prompts)
    stages.update()
    stages.set_postfix_str("writing report")

    use_cfg = config.guidance_scale > 1.0
    flops_rows = _flops_rows(m, config.steps, use_cfg)
    per_image = sum(r["GFLOPs"] * r["calls per image"] for r in flops_rows)
    is_random = config.source.startswith("random:")
    report.text(
        f"Source: `{config.source}` ({m.family}), {m.resolution}x{m.resolution}, {config.steps} steps, "
        f"guidance {config.guidance_scale}, seed {config.seed}."
        + ("\n\nThis pipeline has **random weights** (a published architecture at tiny width): the images are "
           "noise by construction; the numbers show what diffprune measures." if is_random else ""),
        heading="What was run",
    )
    report.table(_component_rows(m), heading="Parameters", key="components")
    report.table(flops_rows, heading="FLOPs per call (attention included)", key="flops")
    report.text(f"Total per image: **{per_image:.4g} GFLOPs** "
                f"({'with' if use_cfg else 'without'} classifier-free guidance).")
    lat = m.unet_latency
    report.table([{"measure": "U-Net call, median of " + str(lat.repeats), "value": f"{lat.median_s * 1000:.2f} ms"},
                  {"measure": f"peak memory while generating {len(images)} images",
                   "value": f"{memory.peak_bytes / 2**20:.0f} MiB (+{memory.delta_bytes / 2**20:.0f} MiB)"}],
                 heading="Speed and memory")
    report.bar_chart("params", list(m.params.components), [c.params / 1e6 for c in m.params.components.values()],
                     ylabel="parameters (M)", heading="Where the parameters are")
    report.bar_chart("flops_per_image", [f'{r["component call"].split(" (")[0]} x{r["calls per image"]}'
                                         for r in flops_rows],
                     [r["GFLOPs"] * r["calls per image"] for r in flops_rows], ylabel="GFLOPs per image",
                     heading="Where the compute goes", caption="FLOPs of each component over one image")
    report.image_grid("samples", images, captions=captions, heading="Samples")
    if suite is not None:
        q = suite.metrics
        report.text(
            f"Scored by the shapes evaluator on {q['n_images']} held-out prompts: all attributes right "
            f"**{_pct(q['accuracy_all'])}**, colour {_pct(q['accuracy_color'])}, "
            f"shape {_pct(q['accuracy_shape'])}, "
            f"size {_pct(q['accuracy_size'])}, grid cell {_pct(q['accuracy_cell'])} (one object), relation "
            f"{_pct(q['accuracy_relation'])} (two objects), count {_pct(q['accuracy_count'])}; Frechet distance "
            f"to ground-truth renders **{q['fd']:.3g}** (two sets of ground-truth renders: "
            f"{q['fd_ground_truth']:.3g}).",
            heading="Quality")
        report.metrics("quality", q)
    hardware = describe_hardware(str(pipe.unet.device))
    report.text("\n".join(f"- {k}: {v}" for k, v in hardware.items()), heading="Hardware")
    summary = {**{k: v for k, v in m.to_json().items() if k != "detail"}, "gflops_per_image": per_image,
               "peak_memory_bytes": memory.peak_bytes, "steps": config.steps}
    if suite is not None:
        summary.update({k: suite.metrics[k] for k in ("accuracy_all", "fd")})
    report.metrics("summary", summary)
    report.metrics("measurement", m)
    report.metrics("memory", memory)
    report.metrics("hardware", hardware)
    out = report.write()
    stages.update()
    return DemoResult(out, summary)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"
