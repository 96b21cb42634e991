"""Quality of the shapes testbed on the default ``shapes`` suite, against a deliberately degraded copy.

Run: python benchmarks/testbed_quality.py [--prompts N] [--zero 0.25] [--seed 0]
Prints one table: the committed testbed, and the same pipeline with a fraction of every U-Net weight matrix
zeroed at random (seeded) -- the sanity check that the suite's accuracy and Frechet distance separate a good
model from a damaged one. Both run in one process on the same prompts, seeds and sampler.
"""

from __future__ import annotations

import argparse
import copy

import torch

import diffprune
from diffprune.evaluate import ShapesSuiteConfig, run_shapes_suite
from diffprune.measure import describe_hardware
from diffprune.testbed.evaluator import load_evaluator

COLUMNS = ("accuracy_all", "accuracy_color", "accuracy_shape", "accuracy_size", "accuracy_position",
           "accuracy_count", "fd", "fd_ground_truth", "n_images", "seconds")


def zero_random_weights(unet, fraction: float, seed: int):
    """A copy of ``unet`` with ``fraction`` of each weight matrix / kernel set to zero, chosen at random."""
    damaged = copy.deepcopy(unet)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in damaged.named_parameters():
            if p.dim() >= 2:
                p.mul_((torch.rand(p.shape, generator=gen) >= fraction).to(p.dtype))
    return damaged


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=None, help="first N held-out prompts (default: all 100)")
    parser.add_argument("--zero", type=float, default=0.25, help="fraction of U-Net weights zeroed (default 0.25)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance-scale", type=float, default=5.0)
    parser.add_argument("--split", choices=["heldout", "train"], default="heldout")
    args = parser.parse_args(argv)

    pipe = diffprune.load("shapes")
    evaluator = load_evaluator()
    config = ShapesSuiteConfig(prompts=args.prompts, seed=args.seed, steps=args.steps,
                               guidance_scale=args.guidance_scale, split=args.split)
    rows = [("testbed", run_shapes_suite(pipe, config, evaluator).metrics)]
    original = pipe.unet
    pipe.unet = zero_random_weights(original, args.zero, args.seed)
    rows.append((f"{args.zero:.0%} U-Net weights zeroed", run_shapes_suite(pipe, config, evaluator).metrics))
    pipe.unet = original

    print(f"shapes suite ({args.split} prompts), {args.steps} steps, guidance {args.guidance_scale}, seed {args.seed}; "
          f"{describe_hardware('cpu').get('cpu', 'cpu')}")
    print(f"{'variant':<28}" + "".join(f"{c.replace('accuracy_', 'acc_'):>16}" for c in COLUMNS))
    for label, m in rows:
        cells = "".join(f"{m[c]:>16.4g}" if isinstance(m[c], float) else f"{m[c]:>16}" for c in COLUMNS)
        print(f"{label:<28}{cells}")
    base, bad = rows[0][1], rows[1][1]
    print(f"FD ratio damaged / testbed: {bad['fd'] / base['fd']:.2f}x; "
          f"accuracy_all {base['accuracy_all']:.3f} -> {bad['accuracy_all']:.3f}")


if __name__ == "__main__":
    main()
