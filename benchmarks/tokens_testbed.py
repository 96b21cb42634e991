"""AT-EDM against ToMe and random token pruning at equal FLOPs on the shapes testbed: the shapes suite and the
fidelity suite (against the unpruned testbed, same prompts and seeds), at two FLOPs budgets.

    python benchmarks/tokens_testbed.py [--ratios 0.4 0.63] [--prompts N] [--steps 20] [--methods atedm random tome]
        [--extra scorer=strided refresh=2]

For each AT-EDM ratio, the budget is AT-EDM's mean U-Net FLOPs per call over the schedule (DSAP as
configured). Random pruning shares AT-EDM's placement and recovery, so it costs the same; ToMe's ratio is
found by bisection to match the budget. Everything runs in one process on the same prompts and seeds.
"""

from __future__ import annotations

import argparse

import diffprune
from diffprune import tokens
from diffprune.evaluate import ShapesSuiteConfig, run_shapes_suite
from diffprune.evaluate.fidelity import fidelity_metrics
from diffprune.measure import describe_hardware
from diffprune.testbed.evaluator import load_evaluator

COLUMNS = ("accuracy_all", "accuracy_color", "accuracy_shape", "accuracy_size", "accuracy_position",
           "accuracy_count", "fd", "psnr", "ssim", "feature_cosine")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.4, 0.63])
    parser.add_argument("--extra", nargs="*", default=[], help="options added to every spec, e.g. dsap=off")
    parser.add_argument("--prompts", type=int, default=None)
    parser.add_argument("--methods", nargs="+", default=["atedm", "random", "tome"],
                        choices=["atedm", "random", "tome"], help="which rows to run (AT-EDM sets the budget)")
    parser.add_argument("--tome-merge", default="all", choices=["self", "self+cross", "all"],
                        help="what ToMe runs on merged tokens (default all: it can then reach AT-EDM's FLOPs)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance-scale", type=float, default=5.0)
    args = parser.parse_args(argv)
    pipe, evaluator = diffprune.load("shapes"), load_evaluator()
    resolution = 64
    suite = ShapesSuiteConfig(prompts=args.prompts, steps=args.steps, guidance_scale=args.guidance_scale,
                              progress=False)
    extra = "".join("," + e for e in args.extra)
    # ToMe matches anew in every layer: options of the attention ranking (scorer, refresh) do not apply to it
    tome_extra = "".join("," + e for e in args.extra if e.split("=")[0] not in ("scorer", "query_stride", "refresh"))

    def run(label: str, config):
        if config is not None:
            tokens.apply(pipe, config)
        try:
            flops = tokens.schedule_flops(pipe, args.steps, resolution=resolution).mean_tflops
            result = run_shapes_suite(pipe, suite, evaluator)
        finally:
            tokens.remove(pipe)
        return label, flops, result

    base_label, base_flops, base = run("unpruned", None)
    rows = [(base_label, base_flops, base.metrics, fidelity_metrics(base.images, base.images, evaluator.features))]
    for ratio in args.ratios:
        atedm = tokens.parse_spec(f"atedm:ratio={ratio}{extra}")
        budget = None
        if "atedm" in args.methods:
            label, budget, result = run(atedm.spec(), atedm)
            rows.append((label, budget, result.metrics,
                         fidelity_metrics(result.images, base.images, evaluator.features)))
        if "random" in args.methods:
            random = tokens.parse_spec(f"random:ratio={ratio}{extra}")
            label, flops, result = run(random.spec(), random)
            rows.append((label, flops, result.metrics,
                         fidelity_metrics(result.images, base.images, evaluator.features)))
        if "tome" in args.methods:
            if budget is None:
                tokens.apply(pipe, atedm)
                budget = tokens.schedule_flops(pipe, args.steps, resolution=resolution).mean_tflops
                tokens.remove(pipe)
            tome = tokens.parse_spec(f"tome:ratio=0.5,merge={args.tome_merge}{tome_extra}")
            tome_ratio, _ = tokens.ratio_for_flops(pipe, tome, budget, args.steps, resolution=resolution)
            tome = tokens.with_ratio(tome, round(tome_ratio, 4))
            label, flops, result = run(tome.spec(), tome)
            rows.append((label, flops, result.metrics,
                         fidelity_metrics(result.images, base.images, evaluator.features)))

    n = rows[0][2]["n_images"]
    print(f"shapes testbed, {n} held-out prompts, {args.steps} steps, guidance {args.guidance_scale}, seed 0; "
          f"{describe_hardware('cpu').get('cpu', 'cpu')}; fidelity against the unpruned images")
    print(f"{'tokens':<40}{'GFLOPs':>8}{'cut':>7}" + "".join(f"{c.replace('accuracy_', 'acc_'):>10}" for c in COLUMNS))
    for label, flops, metrics, fidelity in rows:
        values = {**metrics, **fidelity}
        cells = "".join(f"{values[c]:>10.4g}" for c in COLUMNS)
        print(f"{label:<40}{flops * 1e3:>8.3f}{1 - flops / base_flops:>7.1%}{cells}")


if __name__ == "__main__":
    main()
