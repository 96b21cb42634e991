"""Time and memory of magnitude pruning on an SD-XL-size U-Net (2.57 B parameters, fp32, random weights).

    python benchmarks/weights_sdxl_speed.py [--sparsity 0.5] [--conv]

Builds ``random:sdxl``'s U-Net alone (not timed), then times ``prune`` alone and samples the process's resident
memory every 5 ms while it runs. Prints seconds and the peak RSS during pruning as a multiple of the fp32
weights' size (pruning works in place: one layer's scores and mask at a time).
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time

import torch

from diffprune.archs import build_unet
from diffprune.weights import MagnitudeConfig, prune


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--conv", action="store_true")
    args = parser.parse_args()
    unet = build_unet("sdxl", seed=0)
    weights = sum(p.numel() * p.element_size() for p in unet.parameters())
    params = sum(p.numel() for p in unet.parameters())
    peak, stop = [_rss()], threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.005)

    before = _rss()
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    start = time.perf_counter()
    result = prune(unet, {"unet": MagnitudeConfig(args.sparsity, include_conv=args.conv)})
    seconds = time.perf_counter() - start
    stop.set()
    thread.join()
    r = result.components["unet"]
    print(f"hardware: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print("| U-Net params | layers pruned | weights pruned | sparsity achieved | seconds | RSS before | peak RSS "
          "during | peak / fp32 weights |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {params / 1e9:.3f} B | {r.layers} | {r.weights / 1e9:.3f} B | {r.sparsity:.4%} | {seconds:.1f} | "
          f"{before / 2**30:.2f} GiB | {peak[0] / 2**30:.2f} GiB | {peak[0] / weights:.3f} |")


if __name__ == "__main__":
    main()
