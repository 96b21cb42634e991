"""One-shot layer pruning on the shapes testbeds, before any retraining: additivity of each criterion, and quality
at several parameter ratios for output loss, magnitude, Taylor and random selection, with the BK-SDM-style
presets at their own ratios (U-Net testbed).

    python benchmarks/layers_testbed.py [--ratios 0.2 0.35 0.5] [--sets 30] [--prompts N] [--out DIR]
    python benchmarks/layers_testbed.py --source shapes-dit --ratios 0.25 0.5   # transformer blocks

Every variant is pruned from a fresh copy of the testbed, selected by exact knapsack on the same calibration
data (16 training prompts x 5 recorded timesteps), and evaluated on the same held-out prompts and seeds.
``--out`` also writes a report with the additivity scatter plots.
"""

from __future__ import annotations

import argparse
import copy

import diffprune
from diffprune.anatomy import denoiser_of, geometry
from diffprune.evaluate import ShapesSuiteConfig, run_shapes_suite
from diffprune.layers import (CRITERIA, LayerCalibrationConfig, LayerPruningConfig, additivity, apply_preset,
                              enumerate_units, plot_additivity, prune, record_calibration, removable_units,
                              score_units)
from diffprune.measure import describe_hardware, denoiser_call_flops
from diffprune.testbed.evaluator import load_evaluator


def _flops(pipe) -> int:
    return denoiser_call_flops(pipe).total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="shapes", choices=["shapes", "shapes-dit"])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.35, 0.5])
    parser.add_argument("--sets", type=int, default=30, help="random sets for the additivity check")
    parser.add_argument("--granularity", default="block", choices=["block", "layer"])
    parser.add_argument("--prompts", type=int, default=None)
    parser.add_argument("--out", default=None, help="report folder (additivity plots, tables)")
    args = parser.parse_args(argv)

    base = diffprune.load(args.source)
    base.set_progress_bar_config(disable=True)
    evaluator = load_evaluator()
    suite = ShapesSuiteConfig(prompts=args.prompts, progress=False)
    data = record_calibration(base, LayerCalibrationConfig())
    g = geometry(base)
    denoiser = denoiser_of(base, "layer pruning")
    kind = "U-Net" if args.source == "shapes" else "transformer"
    units = enumerate_units(denoiser, args.granularity, vae_scale_factor=g.vae_scale_factor,
                            text_length=g.text_length)
    candidates = removable_units(units)
    scores = {c: score_units(base, candidates, c, data) for c in CRITERIA}

    result = additivity(denoiser, data, candidates, scores, count=args.sets)
    print(f"{args.source} testbed; {describe_hardware('cpu').get('cpu', 'cpu')}; {len(candidates)} removable units "
          f"({args.granularity}); calibration: {len(data.prompts)} prompts, {len(data.inputs)} recorded {kind} inputs")
    print(f"additivity over {args.sets} random sets of 2-6 units (real output loss vs summed single scores):")
    for c in CRITERIA:
        print(f"  {c:<12} Pearson {result.pearson(c):7.3f}   Spearman {result.spearman(c):7.3f}")

    params0 = sum(p.numel() for p in denoiser.parameters())
    flops0 = _flops(base)
    loss = scores["output-loss"]
    print(f"\nper-unit output loss (mean squared change of the {kind} output when the unit alone is removed):")
    print(f"  {'unit':<44}{'params':>10}{'share':>8}{'output loss':>14}")
    for u in sorted(candidates, key=lambda u: loss[u.name]):
        print(f"  {u.name:<44}{u.params:>10,}{u.params / params0:>8.1%}{loss[u.name]:>14.3g}")
    for bound in (1e-6, 1e-4, 1e-2):
        share = sum(u.params for u in candidates if loss[u.name] < bound) / params0
        print(f"  units with output loss < {bound:g}: {share:.1%} of the {kind}'s parameters")
    rows = [("unpruned", 0.0, params0, flops0, run_shapes_suite(base, suite, evaluator).metrics)]
    for ratio in args.ratios:
        for criterion in CRITERIA:
            pipe = copy.deepcopy(base)
            config = LayerPruningConfig(ratio=ratio, criterion=criterion, granularity=args.granularity)
            r = prune(pipe, config, data, scores=scores[criterion])  # scored once, above
            params = r.params_after
            rows.append((f"{criterion} @ {ratio:.0%}", ratio, params, r.flops_after,
                         run_shapes_suite(pipe, suite, evaluator).metrics))
    for preset in ("bk-base", "bk-small") if args.source == "shapes" else ():
        pipe = copy.deepcopy(base)
        r = apply_preset(pipe, preset)
        params = r.params_after
        rows.append((preset, 1 - params / params0, params, r.flops_after,
                     run_shapes_suite(pipe, suite, evaluator).metrics))

    print(f"\n{'variant':<24}{'params':>10}{'removed':>9}{'MFLOPs':>9}{'acc_all':>9}{'color':>8}{'shape':>8}"
          f"{'size':>8}{'count':>8}{'fd':>8}")
    table = []
    for label, _, params, flops, m in rows:
        print(f"{label:<24}{params:>10,}{1 - params / params0:>9.1%}{flops / 1e6:>9.1f}{m['accuracy_all']:>9.3f}"
              f"{m['accuracy_color']:>8.3f}{m['accuracy_shape']:>8.3f}{m['accuracy_size']:>8.3f}"
              f"{m['accuracy_count']:>8.3f}{m['fd']:>8.0f}", flush=True)
        table.append({"variant": label, "params": params, "removed": 1 - params / params0, "mflops": flops / 1e6,
                      **{k: m[k] for k in ("accuracy_all", "accuracy_color", "accuracy_shape", "fd")}})
    if args.out:
        from diffprune.report import Report

        report = Report(args.out, title=f"Layer pruning on the {args.source} testbed", overwrite=True)
        report.figure("additivity", plot_additivity(result), heading="Additivity")
        report.table(table, heading="One-shot quality (no retraining)")
        print(f"report: {report.write()}")


if __name__ == "__main__":
    main()
