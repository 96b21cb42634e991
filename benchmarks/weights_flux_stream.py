"""Magnitude pruning of FLUX.1-dev's transformer (11.9 B parameters) within a 24 GiB machine, streamed.

    python benchmarks/weights_flux_stream.py --out DIR [--source random:flux-dev] [--sparsity 0.5] [--dtype bf16]
        [--storage dense|bitmask]

In memory the transformer alone is 47.6 GB in fp32 and 23.8 GB in bf16. ``diffprune.weights.stream.stream_prune``
materialises one block at a time (or, for a folder, reads one tensor at a time), prunes it and writes it to the
output shard. Prints the time, the peak resident memory of the process (the kernel's high-water mark,
``ru_maxrss``, and a 5 ms sampling of the resident set, which can only read lower) and the output's size.
A dense output loads with ``FluxTransformer2DModel.from_pretrained``; a bitmask one with ``diffprune.load``.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import threading
import time

from diffprune.measure import disk_usage
from diffprune.weights import MagnitudeConfig
from diffprune.weights.stream import STORAGES, stream_prune


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--source", default="random:flux-dev")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--storage", choices=STORAGES, default="dense")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    base = _rss()
    peak, stop = [base], threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = stream_prune(args.source, args.out, MagnitudeConfig(sparsity=args.sparsity), dtype=args.dtype,
                              overwrite=args.overwrite, storage=args.storage, progress=True)
    finally:
        stop.set()
        watcher.join()
    size = disk_usage(result.out).total_bytes
    print(f"{args.source}: {result.params:,} parameters, {result.pruned_weights:,} in pruned layers, "
          f"{result.sparsity:.2%} of them zero; {result.shards} shards, {size / 2**30:.2f} GiB on disk ({args.dtype}, {args.storage})")
    high_water = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(f"time {result.seconds:.0f} s; peak RSS {high_water / 2**30:.2f} GiB (sampled every 5 ms: "
          f"{peak[0] / 2**30:.2f} GiB; at start {base / 2**30:.2f} GiB); "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
