"""What distillation costs per step: a distillation step (student forward and backward, teacher forward, feature
hooks) against a plain fine-tuning step of the student alone (task loss, no teacher), on this machine.

    python benchmarks/distill_cost.py [--ratio 0.5] [--batch 32] [--steps 10] [--rounds 3]

Both run through ``diffprune.distill.distill`` on the shapes testbed, alternately in one process (rounds of
``--steps`` steps each); the table gives the median seconds per step and their ratio (goal: at most 1.6x).
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch

import diffprune
from diffprune import layers
from diffprune.distill import DistillConfig, distill, shapes_data
from diffprune.measure import describe_hardware


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratio", type=float, default=0.5, help="output-loss layer pruning ratio of the student")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    teacher = diffprune.load("shapes")
    teacher.set_progress_bar_config(disable=True)
    student = copy.deepcopy(teacher)
    layers.prune(student, layers.LayerPruningConfig(ratio=args.ratio))
    data = shapes_data(teacher, n=512, seed=1)
    variants = {
        "fine-tuning (task only)": DistillConfig(steps=args.steps, batch_size=args.batch, lambda_out=0.0,
                                                 feature_kd="none", log_every=1),
        "distillation (task + output KD + normalized feature KD)": DistillConfig(steps=args.steps,
                                                                                batch_size=args.batch, log_every=1),
        "distillation (plain feature KD)": DistillConfig(steps=args.steps, batch_size=args.batch, feature_kd="plain",
                                                         log_every=1),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.rounds + 1):  # round 0 warms up
        for name, config in variants.items():
            pipe = copy.deepcopy(student)
            log = distill(pipe, teacher, data, config, progress=False).log  # one entry per step (log_every=1)
            if r:  # the loop's own time per step, set-up excluded
                times[name].append((log[-1]["seconds"] - log[0]["seconds"]) / (len(log) - 1))
    base = statistics.median(times["fine-tuning (task only)"])
    print(f"shapes testbed, student: output-loss {args.ratio:.0%}; batch {args.batch}; {describe_hardware('cpu')}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.rounds} rounds of "
          f"{args.steps} steps")
    print(f"{'variant':<58}{'s/step':>9}{'vs fine-tuning':>16}")
    for name in variants:
        median = statistics.median(times[name])
        print(f"{name:<58}{median:>9.3f}{median / base:>15.2f}x")


if __name__ == "__main__":
    main()
