"""Parameters and FLOPs per call of every bundled architecture, against the published reference figures.

Run: python benchmarks/reference_flops.py
Prints one table; everything is built on the meta device, so it takes seconds and no memory.
"""

from __future__ import annotations

import time

from diffprune import archs, measure

# Published figures (one U-Net call, batch 1, attention included) that diffprune must reproduce.
REFERENCES = {("sd15", 512): (859_520_964, 0.803), ("sdxl", 1024): (2_567_463_684, 6.76)}
RUNS = [("sd15", 512), ("sd21", 768), ("sdxl", 1024), ("tiny-sd", 64), ("tiny-sdxl", 64)]


def main() -> None:
    header = (f"{'arch':<10}{'res':>6}{'U-Net params':>16}{'U-Net TFLOPs':>14}{'attention':>11}"
              f"{'no-attn TFLOPs':>16}{'reference':>22}{'seconds':>9}")
    print(header)
    print("-" * len(header))
    for name, resolution in RUNS:
        start = time.perf_counter()
        pipe = archs.build_pipeline(name, device="meta")
        m = measure(pipe, resolution=resolution)
        seconds = time.perf_counter() - start
        unet = m.params.components["unet"].params
        ref = REFERENCES.get((name, resolution))
        ref_text = "" if ref is None else (
            f"{ref[1]:.3f} T ({(m.denoiser_flops.tflops / ref[1] - 1) * 100:+.2f} %)"
            + ("" if unet == ref[0] else " PARAMS DIFFER"))
        print(f"{name:<10}{resolution:>6}{unet:>16,}{m.denoiser_flops.tflops:>14.4f}"
              f"{m.denoiser_flops.attention / m.denoiser_flops.total:>10.1%}"
              f"{(m.denoiser_flops.total - m.denoiser_flops.attention) / 1e12:>16.4f}{ref_text:>22}{seconds:>9.1f}")


if __name__ == "__main__":
    main()
