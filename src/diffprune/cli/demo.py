"""The ``demo`` command: the shapes testbed compressed by the shipped recipes, benched, reported."""

from __future__ import annotations

import sys

from diffprune.cli.common import positive_int


def add_commands(sub) -> None:
    p = sub.add_parser("demo", help="compress the shapes testbed with the shipped recipes; bench and report")
    p.add_argument("--out", default="diffprune-demo", help="report folder (default: ./diffprune-demo)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    p.add_argument("--source", default=None, help="pipeline to run instead of the bundled testbed")
    p.add_argument("--recipes", nargs="+", metavar="FILE|NAME", help="recipes (default: the four shipped ones)")
    p.add_argument("--prompts", type=positive_int, default=None, help="prompts per variant (default 8)")
    p.add_argument("--steps", type=positive_int, default=None, help="denoising steps (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt list (default 0)")


def run(args) -> int:
    from diffprune.demo import DemoConfig, run_demo

    config = DemoConfig(seed=args.seed)
    for name in ("source", "recipes", "prompts", "steps"):
        if getattr(args, name):
            setattr(config, name, tuple(args.recipes) if name == "recipes" else getattr(args, name))
    result = run_demo(args.out, config, overwrite=args.overwrite, progress=sys.stderr.isatty())
    print(f"demo: {config.source}, {len(result.rows) - 1} recipes against the baseline, {config.prompts} prompts")
    label = "all attributes right" if result.quality_key == "accuracy_all" else result.quality_key
    print(f"  {'variant':<12}{'non-zero':>10}{'FLOPs':>8}{'latency':>9}{label:>22}")
    for row in result.rows:
        quality = "" if row["quality"] is None else f"{row['quality']:.0%}" if result.quality_key.startswith(
            "accuracy") else f"{row['quality']:.3f}"
        print(f"  {row['variant']:<12}{row['non-zero (M)']:>9.2f}M{row['FLOPs vs base']:>7.0%} "
              f"{row['latency vs base']:>7.2f}x{quality:>22}")
    print(f"report: {result.report_dir / 'report.md'}")
    return 0
