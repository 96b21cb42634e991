"""The bench report: one table of cost and quality, quality-versus-cost scatters with the Pareto front, and the
variants' images side by side."""

from __future__ import annotations

import os
from pathlib import Path

from diffprune.evaluate import to_pil
from diffprune.report import Report

from .pareto import pareto_front, plot_pareto
from .run import BenchResult

_QUALITY_COLUMNS = ("accuracy_all", "accuracy_color", "accuracy_shape", "accuracy_size", "accuracy_cell",
                    "accuracy_relation", "accuracy_count", "fd", "agreement_all", "psnr", "ssim", "feature_cosine",
                    "clip_score", "pickscore", "fid")


def table_rows(result: BenchResult) -> list[dict]:
    """One row per variant: cost against the baseline, then every quality number measured."""
    base = result.variants[0]
    present = [k for k in _QUALITY_COLUMNS if any(k in v.quality for v in result.variants)]
    rows = []
    for v in result.variants:
        rows.append({
            "variant": v.name, "params (M)": v.params / 1e6, "non-zero (M)": v.nonzero_params / 1e6,
            "disk (MiB)": v.disk_bytes / 2**20, "GFLOPs/image": v.gflops_per_image,
            "FLOPs vs base": v.gflops_per_image / base.gflops_per_image,
            "latency vs base": v.latency_ratio, "weights (MiB)": v.weights_bytes / 2**20,
            "generation (MiB)": v.generation_bytes / 2**20,
            **{k: v.quality.get(k) for k in present}})
    return rows


def role_rows(result: BenchResult) -> list[dict]:
    """For transformer pipelines: per variant and role (attention, feed-forward, AdaLN modulation, ...), the
    parameters and their shares of parameters and of FLOPs per call; empty for U-Nets."""
    return [{"variant": v.name, "role": role, "params (M)": g["params"] / 1e6, "share of params": g["param_share"],
             "share of FLOPs": g["flop_share"]}
            for v in result.variants if v.groups for role, g in v.groups.items() if g["params"] or g["flops"]]


def _pareto_figure(result: BenchResult):
    from matplotlib.figure import Figure

    key = result.quality_key
    names = [v.name for v in result.variants]
    quality = result.headline()
    axes_data = (("GFLOPs per image", [v.gflops_per_image for v in result.variants]),
                 ("non-zero parameters (M)", [v.nonzero_params / 1e6 for v in result.variants]),
                 ("latency vs baseline", [v.latency_ratio for v in result.variants]))
    fig = Figure(figsize=(13, 3.8), dpi=110)
    for i, (xlabel, costs) in enumerate(axes_data):
        plot_pareto(names, costs, quality, xlabel=xlabel, ylabel=key, ax=fig.add_subplot(1, 3, i + 1))
    fig.tight_layout()
    return fig


def write_bench_report(result: BenchResult, out_dir: str | os.PathLike, *, overwrite: bool = False, protect=(),
                       title: str | None = None, notes: str = "") -> Path:
    """Write the report folder (``report.md``, ``report.json``, PNGs) and return it."""
    config = result.config
    report = Report(out_dir, title=title or f"diffprune bench: {result.source}", overwrite=overwrite,
                    protect=protect)
    what = ("the shapes testbed's held-out prompts, read by its exact evaluator" if result.testbed else
            "fidelity to the baseline's images (and the given quality networks)")
    report.text(f"Source `{result.source}`; {len(result.captions)} prompts ({what}); {config.steps} steps, "
                f"guidance {config.guidance_scale}, seed {config.seed}; every variant draws the same prompts from "
                f"the same seeds. Latency: one image per variant, median of {config.latency_repeats} interleaved "
                "rounds in one process." + (f"\n\n{notes}" if notes else ""), heading="What was run")
    rows = table_rows(result)
    report.table(rows, heading="Cost and quality", key="table")
    key = result.quality_key
    front = pareto_front([v.gflops_per_image for v in result.variants], result.headline())
    report.figure("pareto", _pareto_figure(result), heading="Quality against cost",
                  caption=f"{key} against FLOPs per image, non-zero parameters and latency; the line joins the "
                          f"Pareto front. On the FLOPs front: {', '.join(result.variants[i].name for i in front)}.")
    report.table([{"variant": v.name, "steps": "; ".join(v.steps) or "(uncompressed)"} for v in result.variants],
                 heading="What each recipe did")
    roles = role_rows(result)
    if roles:
        report.table(roles, heading="Where the transformer's parameters and FLOPs sit", key="roles")
    n = min(config.grid_prompts, len(result.captions))
    images, captions = [], []
    for row in range(n):
        for v in result.variants:
            images.append(to_pil(v.images[row:row + 1])[0])
            captions.append(v.name if row == 0 else "")
    report.image_grid("variants", images, captions=captions, columns=len(result.variants),
                      heading="Side by side", caption="rows: " + " | ".join(result.captions[:n]))
    report.text("\n".join(f"- {k}: {v}" for k, v in result.hardware.items()), heading="Hardware")
    report.metrics("bench", result.to_json())
    return report.write()
