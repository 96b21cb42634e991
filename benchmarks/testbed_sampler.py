"""Sampler settings of the shapes testbed, tuned on training-split prompts (the held-out ones stay untouched).

Run: python benchmarks/testbed_sampler.py [--guidance 1 3 5 7.5] [--steps 10 20] [--prompts N]
Prints accuracy and Frechet distance for each (steps, guidance) pair on the same prompts and seeds.
"""

from __future__ import annotations

import argparse

import diffprune
from diffprune.evaluate import ShapesSuiteConfig, run_shapes_suite
from diffprune.testbed.evaluator import load_evaluator


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0, 5.0, 7.5])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--prompts", type=int, default=None)
    parser.add_argument("--split", choices=["train", "heldout"], default="train")
    args = parser.parse_args(argv)
    pipe, evaluator = diffprune.load("shapes"), load_evaluator()
    label = args.split + ' prompts'
    print(f"{label:<16}{'steps':>6}{'guidance':>10}{'acc_all':>10}{'acc_color':>11}{'acc_shape':>11}"
          f"{'acc_pos':>9}{'acc_count':>11}{'fd':>9}{'seconds':>9}")
    for steps in args.steps:
        for guidance in args.guidance:
            m = run_shapes_suite(pipe, ShapesSuiteConfig(prompts=args.prompts, steps=steps, guidance_scale=guidance,
                                                         split=args.split, progress=False), evaluator).metrics
            print(f"{'':16}{steps:>6}{guidance:>10}{m['accuracy_all']:>10.3f}{m['accuracy_color']:>11.3f}"
                  f"{m['accuracy_shape']:>11.3f}{m['accuracy_position']:>9.3f}{m['accuracy_count']:>11.3f}"
                  f"{m['fd']:>9.3f}{m['seconds']:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
