"""The demo job — diffprune's main job in miniature: the bundled shapes testbed compressed by every shipped
recipe, each variant measured against the uncompressed pipeline (cost and exact quality), and one bench report
with the table, the Pareto plot and the images side by side. Needs no download; about three minutes on two
CPU cores."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from diffprune.anatomy import describe_kind, has_unet
from diffprune.bench import BenchConfig, run_bench, table_rows, write_bench_report
from diffprune.errors import DiffpruneError
from diffprune.evaluate.prompts import shapes_prompts
from diffprune.io import input_folder, load, read_paths
from diffprune.recipe import load_recipe
from diffprune.report import Report

SHIPPED = ("sd2-study", "laptop-50", "atedm", "stack")


@dataclass
class DemoConfig:
    source: str = "shapes"
    recipes: tuple[str, ...] = SHIPPED
    prompts: int = 8   # of the 100 held-out shapes prompts: enough to see the trends in a few minutes
    steps: int = 20
    guidance_scale: float = 5.0
    seed: int = 0
    latency_repeats: int = 10  # one small image per round: cheap, and the median needs rounds


@dataclass
class DemoResult:
    report_dir: Path
    quality_key: str
    rows: list[dict] = field(default_factory=list)


def _prompt_note(config: DemoConfig) -> str:
    if config.source != "shapes" or config.prompts >= 100:
        return ""
    two = sum(len(p.scene.objects) == 2 for p in shapes_prompts(config.prompts))
    return (f" {two} of these {config.prompts} prompts ask for two objects (28 of the suite's 100), whose relation "
            "the testbed does not draw reliably (`docs/testbed.md`), so the baseline's accuracy here differs from "
            "the full suite's; a Fréchet distance over this few images compares this run's variants with each other "
            "only.")


def run_demo(out_dir: str | os.PathLike, config: DemoConfig | None = None, *, overwrite: bool = False,
             progress: bool | None = None) -> DemoResult:
    """Run the demo and write its report to ``out_dir`` (checked before any work)."""
    config = config or DemoConfig()
    protect = read_paths(config.source)
    Report(out_dir, title="diffprune demo", overwrite=overwrite, protect=protect)
    recipes = [load_recipe(name) for name in config.recipes]
    pipe = load(config.source)
    if not has_unet(pipe):
        raise DiffpruneError(f"the demo needs a whole pipeline with a U-Net; {config.source} is "
                             f"{describe_kind(pipe)}")
    bench = BenchConfig(prompts=config.prompts, steps=config.steps, guidance_scale=config.guidance_scale,
                        seed=config.seed, latency_repeats=config.latency_repeats,
                        progress=True if progress is None else progress)
    result = run_bench(pipe, recipes, bench, name=config.source)
    notes = (f"The demo runs {config.prompts} prompts per variant, fewer than the full suite's 100 "
             "(`diffprune eval shapes` runs them all; `diffprune bench` takes `--prompts`). Layer pruning is "
             "shown one-shot, before the retraining its paper prescribes." + _prompt_note(config))
    folder = write_bench_report(result, out_dir, overwrite=overwrite, protect=[*protect, input_folder(pipe)],
                                title="diffprune demo: the shapes testbed and the shipped recipes", notes=notes)
    rows = [{**row, "quality": q} for row, q in zip(table_rows(result), result.headline())]
    return DemoResult(folder, result.quality_key, rows)
