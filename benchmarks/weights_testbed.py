"""Weight pruning on the shapes testbed: the SD2 study's best configuration against the dense model.

    python benchmarks/weights_testbed.py [--prompts 100]

Magnitude pruning of the text encoder at 47.5 % and the U-Net at 35 % (nn.Linear layers, one threshold per
matrix, as the study did), scored with the shapes suite on the same held-out prompts and seeds as the dense
model. Prints one table; the method comparison and collapse points come from ``diffprune sweep`` (see
docs/weights.md).
"""

from __future__ import annotations

import argparse

import diffprune
from diffprune.evaluate import EvalConfig, evaluate
from diffprune.weights import MagnitudeConfig, prune

KEYS = ("accuracy_all", "accuracy_color", "accuracy_shape", "accuracy_size", "accuracy_position", "accuracy_count",
        "fd")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--te", type=float, default=0.475)
    parser.add_argument("--unet", type=float, default=0.35)
    args = parser.parse_args()
    config = EvalConfig(prompts=args.prompts, progress=False)
    rows = []
    pipe = diffprune.load("shapes")
    rows.append(("dense", evaluate(pipe, config).metrics))
    result = prune(pipe, {"text_encoder": MagnitudeConfig(args.te), "unet": MagnitudeConfig(args.unet)})
    achieved = ", ".join(f"{k} {v.sparsity:.1%} of pruned layers ({v.component_sparsity:.1%} of all)"
                         for k, v in result.components.items())
    rows.append((f"magnitude TE {args.te:.1%} + U-Net {args.unet:.1%}", evaluate(pipe, config).metrics))
    print(f"shapes suite, {args.prompts} held-out prompts, 20 steps, guidance 5, seed 0; achieved: {achieved}")
    print(f"| variant | {' | '.join(KEYS)} |")
    print("|---|" + "---|" * len(KEYS))
    for name, m in rows:
        print(f"| {name} | " + " | ".join(f"{m[k]:.3f}" if k != "fd" else f"{m[k]:.0f}" for k in KEYS) + " |")
    drop = rows[0][1]["accuracy_all"] - rows[1][1]["accuracy_all"]
    print(f"accuracy_all drop: {drop * 100:+.1f} points (dense minus pruned)")


if __name__ == "__main__":
    main()
