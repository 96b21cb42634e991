"""The ``bench`` command: the baseline and recipes side by side (``--recipes``), or the papers' headline claims
re-measured (``--claims``). Parsing and printing only; :mod:`diffprune.bench` does the work."""

from __future__ import annotations

import sys

from diffprune.cli.common import add_generation_options, positive_int
from diffprune.cli.source import add_source_options, input_paths, load_source


def add_commands(sub) -> None:
    p = sub.add_parser("bench", help="baseline and recipes side by side (cost, quality, report); or --claims")
    add_source_options(p, optional=True)
    p.add_argument("--recipes", nargs="+", metavar="FILE|NAME",
                   help="recipe files or shipped names (sd2-study, laptop-50, atedm, stack, dit-half)")
    p.add_argument("--peers", nargs="+", metavar="SPEC",
                   help="public accelerators beside the recipes (pip install diffprune[peers]): "
                        "'tomesd:ratio=0.5,max_downsample=2', 'deepcache:interval=3', or stacked on diffprune's "
                        "token pruning: 'atedm:ratio=0.63+deepcache:interval=3'")
    p.add_argument("--claims", action="store_true",
                   help="re-measure the papers' headline claims (no SOURCE: full-size architectures on meta "
                        "for FLOPs, the shapes testbed for quality)")
    p.add_argument("--out", required=True, metavar="DIR", help="report folder (report.md, report.json, PNG)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier report folder")
    p.add_argument("--prompts", type=positive_int, metavar="N", help="prompts per variant (default 16; claims 24)")
    p.add_argument("--prompts-file", metavar="FILE", help="one prompt per line (default: the shapes prompts)")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt list (default 0)")
    p.add_argument("--latency-repeats", type=positive_int, default=5, help="interleaved timing rounds (default 5)")
    add_generation_options(p)


def _config(args):
    from diffprune.bench import BenchConfig

    return BenchConfig(prompts=args.prompts or 16, prompts_file=args.prompts_file, steps=args.steps,
                       guidance_scale=args.guidance_scale, seed=args.seed, latency_repeats=args.latency_repeats,
                       batch_size=args.batch_size,
                       clip_model=args.clip_model, pickscore_model=args.pickscore_model,
                       pickscore_processor=args.pickscore_processor, inception_weights=args.inception_weights,
                       reference_images=args.reference_images, progress=sys.stderr.isatty())


def _claims(args) -> int:
    from diffprune.bench.claims import ClaimsConfig, run_claims, write_claims_report
    from diffprune.report import Report

    if args.source or args.recipes or args.peers:
        from diffprune.errors import DiffpruneError

        raise DiffpruneError("--claims takes no SOURCE, --recipes or --peers: it measures its own fixed set")
    config = ClaimsConfig(prompts=args.prompts or 24, steps=args.steps, seed=args.seed,
                          latency_repeats=args.latency_repeats, progress=sys.stderr.isatty())
    Report(args.out, title="check", overwrite=args.overwrite)  # the folder is checked before the long run
    result = run_claims(config)
    folder = write_claims_report(result, args.out, overwrite=args.overwrite)
    print(f"{'claim':<58}{'source':>22}{'measured':>26}  holds?")
    for c in result.claims:
        print(f"{c.claim[:57]:<58}{c.source_number[:21]:>22}{c.measured[:25]:>26}  {c.verdict}")
    print(f"report: {folder / 'report.md'} ({result.seconds / 60:.1f} min)")
    return 0


def run(args) -> int:
    from diffprune.errors import DiffpruneError

    if args.claims:
        return _claims(args)
    if not args.source or not (args.recipes or args.peers):
        raise DiffpruneError("give a SOURCE and --recipes and/or --peers (or --claims)")
    from diffprune.bench import check_recipes, run_bench, table_rows, write_bench_report
    from diffprune.recipe import load_recipe
    from diffprune.report import Report

    recipes = [load_recipe(r) for r in args.recipes or []]
    if recipes:
        check_recipes(recipes)
    config = _config(args)
    inputs = input_paths(args)
    Report(args.out, title="check", overwrite=args.overwrite, protect=inputs)  # checked before the long run
    result = run_bench(load_source(args), recipes, config, name=args.source, peers=args.peers or [])
    folder = write_bench_report(result, args.out, overwrite=args.overwrite, protect=inputs)
    key = result.quality_key
    print(f"{'variant':<16}{'non-zero':>12}{'disk MiB':>10}{'GFLOPs/img':>12}{'latency':>9}{key:>16}")
    for row, quality in zip(table_rows(result), result.headline()):
        print(f"{row['variant']:<16}{row['non-zero (M)']:>11.3f}M{row['disk (MiB)']:>10.2f}"
              f"{row['GFLOPs/image']:>12.4g}{row['latency vs base']:>8.2f}x"
              f"{'' if quality is None else f'{quality:.3f}':>16}")
    print(f"report: {folder / 'report.md'}")
    return 0
