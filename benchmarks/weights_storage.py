"""File sizes of bitmask-stored sparse components against dense fp16 files, and an exact reload check.

    python benchmarks/weights_storage.py [--archs shapes sd15]

Each U-Net and text encoder is magnitude-pruned to 50 % (U-Net Linear + Conv2d layers, so nearly all of its
weights are prunable; text encoder Linear layers of its blocks, embeddings stay dense), saved dense and as
bitmask, reloaded, and compared bit for bit. Expected ratio for fully prunable fp16 weights: (2 * 0.5 + 1/8) / 2
= 0.5625.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import diffprune
from diffprune.weights import MagnitudeConfig, prune
from diffprune.weights.storage import SPARSE_FILE


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=["shapes", "sd15"])
    args = parser.parse_args()
    print("| model | component | params | dense fp16 | bitmask | ratio | reload exact |")
    print("|---|---|---|---|---|---|---|")
    for arch in args.archs:
        source = arch if arch == "shapes" else f"random:{arch}"
        pipe = diffprune.load(source, dtype="fp16")
        prune(pipe, {"unet": MagnitudeConfig(0.5, include_conv=True), "text_encoder": MagnitudeConfig(0.5)})
        with tempfile.TemporaryDirectory() as tmp:
            dense = diffprune.save(pipe, Path(tmp) / "dense")
            sparse = diffprune.save(pipe, Path(tmp) / "sparse", weights_format="bitmask")
            back = diffprune.load(sparse, dtype="fp16")
            for name in ("unet", "text_encoder"):
                a, b = getattr(pipe, name).state_dict(), getattr(back, name).state_dict()
                exact = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
                d, s = _size(dense / name), (sparse / name / SPARSE_FILE).stat().st_size
                params = sum(p.numel() for p in getattr(pipe, name).parameters())
                print(f"| {source} | {name} | {params / 1e6:.1f} M | {d / 2**20:.1f} MiB | {s / 2**20:.1f} MiB | "
                      f"{s / d:.3f} | {exact} |")
        del pipe, back


if __name__ == "__main__":
    main()
