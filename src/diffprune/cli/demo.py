"""The ``demo`` command: the shapes testbed measured, sampled, evaluated and reported."""

from __future__ import annotations

from diffprune.cli.common import positive_int


def add_commands(sub) -> None:
    p = sub.add_parser("demo", help="load the shapes testbed, measure it, generate and evaluate, write a report")
    p.add_argument("--out", default="diffprune-demo", help="report folder (default: ./diffprune-demo)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    p.add_argument("--source", default=None, help="pipeline to run instead of the bundled default")
    p.add_argument("--steps", type=positive_int, default=None, help="denoising steps")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt list (default 0)")


def run(args) -> int:
    from diffprune.demo import DemoConfig, run_demo

    config = DemoConfig(seed=args.seed)
    if args.source:
        config.source = args.source
    if args.steps:
        config.steps = args.steps
    result = run_demo(args.out, config, overwrite=args.overwrite)
    s = result.summary
    print(f"demo: {s['source']} ({s['family']}), {s['total_params']:,} parameters, "
          f"{s['unet_tflops'] * 1e3:.3f} GFLOPs per U-Net call, {s['gflops_per_image']:.3f} GFLOPs per image")
    if "accuracy_all" in s:
        print(f"quality on held-out shapes prompts: all attributes right {s['accuracy_all']:.0%}, FD {s['fd']:.3g}")
    print(f"report: {result.report_dir / 'report.md'}")
    return 0
