"""2:4 semi-structured sparse kernels against dense on a diffusion transformer, on the GPU.

    python benchmarks/dit_semistructured_speed.py [--arch pixart-sigma] [--resolution 1024] [--dtype fp16]
        [--repeats 20]

Builds the architecture's transformer with seeded random weights, prunes every Linear to 2:4 by magnitude
(``diffprune.weights.prune``), then times one transformer call with dense weights and with semi-structured sparse
weights (``diffprune.weights.semistructured.apply`` on a copy), interleaved in rounds on the same GPU. Prints the median
times and their ratio, and the largest difference between the two outputs. Without a CUDA GPU of compute
capability 8.0+ it prints why it cannot run and exits with status 0.
"""

from __future__ import annotations

import argparse
import copy

import torch

from diffprune.anatomy import geometry
from diffprune.archs import build_denoiser
from diffprune.precision import parse_dtype
from diffprune.measure import denoiser_inputs, describe_hardware, interleaved_latency
from diffprune.weights import MagnitudeConfig, prune
from diffprune.weights import semistructured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="pixart-sigma")
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument("--dtype", default="fp16", choices=["fp16", "bf16"])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    ok, why = semistructured.available()
    if not ok:
        print(f"2:4 semi-structured inference: not available ({why})")
        return
    model = build_denoiser(args.arch, seed=0)
    prune(model, {"transformer": MagnitudeConfig(sparsity=0.5, pattern="2:4")})
    model = model.to("cuda", parse_dtype(args.dtype))
    g = geometry(model)
    inputs = denoiser_inputs(model, resolution=args.resolution or g.resolution, vae_scale_factor=g.vae_scale_factor,
                             text_length=g.text_length, device="cuda")

    sparse_model = copy.deepcopy(model)
    layers = semistructured.apply(sparse_model)

    def runner(m):
        def call():
            with torch.inference_mode():
                return m(**inputs)[0]
        return call

    diff = float((runner(model)().float() - runner(sparse_model)().float()).abs().max())
    stats = interleaved_latency({"dense": runner(model), "2:4 sparse": runner(sparse_model)}, repeats=args.repeats,
                                warmup=2, device="cuda")
    print(f"{args.arch} transformer at {args.resolution or g.resolution}px, {args.dtype}, "
          f"{len(layers)} Linear layers on 2:4 kernels; {describe_hardware('cuda')}")
    print(f"{'weights':<12}{'median ms':>12}")
    for name, s in stats.items():
        print(f"{name:<12}{s.median_s * 1000:>12.2f}")
    print(f"speed ratio dense / 2:4: {stats['dense'].median_s / stats['2:4 sparse'].median_s:.3f}x; "
          f"largest output difference {diff:.3g}")


if __name__ == "__main__":
    main()
