"""Average U-Net FLOPs per call of token pruning over a sampling schedule, overhead included, on the published
architectures (meta device: exact shapes, no weights, seconds per row).

    python benchmarks/tokens_flops.py [--arch sdxl --resolution 1024] [--steps 20 50]

Rows: the unpruned U-Net; AT-EDM at the paper's operating point (ratio 0.63, DSAP) and variants (no DSAP, a
longer early phase, AT-EDM-dagger without the 64x64 level); random pruning (same placement, so same FLOPs);
ToMe at the ratio that matches AT-EDM's FLOPs, found by bisection.
"""

from __future__ import annotations

import argparse

import diffprune
from diffprune import tokens

SPECS = ["atedm:ratio=0.63", "atedm:ratio=0.63,dsap=off", "atedm:ratio=0.63,tau=0.3", "atedm:ratio=0.63,levels=4",
         "random:ratio=0.63"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="sdxl")
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--tokens", nargs="*", default=SPECS)
    args = parser.parse_args(argv)
    pipe = diffprune.load(f"random:{args.arch}", device="meta")
    print(f"random:{args.arch} at {args.resolution}², batch 1, scheduler {type(pipe.scheduler).__name__}; "
          "TFLOPs = mean per U-Net call over the schedule, overhead included")
    print(f"{'tokens':<36}" + "".join(f"{f'{n} steps: TF':>16}{'cut':>8}" for n in args.steps))
    base = {n: tokens.schedule_flops(pipe, n, resolution=args.resolution).mean_tflops for n in args.steps}
    print(f"{'(unpruned)':<36}" + "".join(f"{base[n]:>16.3f}{'':>8}" for n in args.steps))
    for spec in args.tokens:
        tokens.apply(pipe, tokens.parse_spec(spec))
        means = {n: tokens.schedule_flops(pipe, n, resolution=args.resolution).mean_tflops for n in args.steps}
        tokens.remove(pipe)
        print(f"{spec:<36}" + "".join(f"{means[n]:>16.3f}{1 - means[n] / base[n]:>8.1%}" for n in args.steps),
              flush=True)
    n = args.steps[0]
    tokens.apply(pipe, tokens.parse_spec(args.tokens[0]))
    target = tokens.schedule_flops(pipe, n, resolution=args.resolution).mean_tflops
    tokens.remove(pipe)
    for merge in ("self", "all"):
        tome = tokens.parse_spec(f"tome:ratio=0.5,merge={merge}")
        ratio, reached = tokens.ratio_for_flops(pipe, tome, target, n, resolution=args.resolution)
        print(f"ToMe (merge={merge}) matching {args.tokens[0]} at {n} steps: ratio {ratio:.3f} gives {reached:.3f} "
              f"TFLOPs (target {target:.3f}; ToMe merges at most 0.75 of a layer's tokens)")


if __name__ == "__main__":
    main()
