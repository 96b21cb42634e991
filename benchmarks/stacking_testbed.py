"""Stacking the families on the shapes testbed: does a stack cost the sum of its steps' single costs, or more?

    python benchmarks/stacking_testbed.py [--recipe stack] [--prompts 100] [--out DIR]

Benches the recipe's steps alone, every pair, and the whole stack against the uncompressed testbed (one
``diffprune bench`` run: same prompts and seeds, interleaved latency). A variant's *cost* is the drop of a quality
metric from the baseline; the table puts each combination's measured cost next to the sum of its steps' single
costs (additive when they match, super-additive when the stack costs more).
"""

from __future__ import annotations

import argparse
import itertools

from diffprune.bench import BenchConfig, run_bench, table_rows, write_bench_report
from diffprune.recipe import Recipe, load_recipe

METRICS = ("accuracy_all", "accuracy_color", "accuracy_shape", "agreement_all")


def _subsets(recipe: Recipe) -> list[Recipe]:
    data = recipe.to_dict()
    steps = [k for k in ("layers", "weights", "tokens") if k in data]
    out = []
    for n in range(1, len(steps) + 1):
        for combo in itertools.combinations(steps, n):
            part = {"name": "+".join(combo), "calibration": data["calibration"], **{k: data[k] for k in combo}}
            out.append(Recipe.from_dict(part))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="stack", help="a recipe file or shipped name with several families")
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--latency-repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="also write the bench report here")
    args = parser.parse_args(argv)
    recipe = load_recipe(args.recipe)
    variants = _subsets(recipe)
    result = run_bench("shapes", variants, BenchConfig(prompts=args.prompts, steps=args.steps,
                                                       latency_repeats=args.latency_repeats))
    rows = {r["variant"]: r for r in table_rows(result)}
    base = result.variants[0]
    quality = {v.name: {**v.quality, "agreement_all": v.quality.get("agreement_all", 1.0)} for v in result.variants}
    cost = {name: {m: quality["baseline"][m] - q[m] for m in METRICS} for name, q in quality.items()}
    print(f"recipe {recipe.name}: {recipe.to_dict()}")
    print(f"{len(result.captions)} held-out prompts, {args.steps} steps; cost = drop from the baseline "
          f"(baseline accuracy_all {base.quality['accuracy_all']:.3f})")
    header = f"{'variant':<24}{'FLOPs':>7}{'non-zero':>10}{'latency':>9}"
    for m in METRICS:
        header += f"{m + ' cost':>22}{'sum of singles':>16}"
    print(header)
    for v in result.variants:
        parts = v.name.split("+") if v.name != "baseline" else []
        line = (f"{v.name:<24}{rows[v.name]['FLOPs vs base']:>7.0%}{rows[v.name]['non-zero (M)']:>9.2f}M"
                f"{rows[v.name]['latency vs base']:>8.2f}x")
        for m in METRICS:
            singles = sum(cost[p][m] for p in parts) if len(parts) > 1 else None
            line += f"{cost[v.name][m]:>22.3f}" + (f"{singles:>16.3f}" if singles is not None else f"{'':>16}")
        print(line, flush=True)
    if args.out:
        print(f"report: {write_bench_report(result, args.out, overwrite=True)}")


if __name__ == "__main__":
    main()
