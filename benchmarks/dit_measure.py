"""Parameters and FLOPs of the published diffusion-transformer architectures, counted on the meta device.

    python benchmarks/dit_measure.py [--resolution 1024] [--archs pixart-sigma sd3-medium ...]

For each architecture: the transformer's exact parameter count, its FLOPs per call at the resolution (attention
included; the text sequence its pipeline uses by default), the attention share, and the share of parameters and
FLOPs in AdaLN modulation (parameters that cost almost nothing per call), plus each text encoder's size. The
same numbers come from ``diffprune measure random:<arch> --resolution 1024 --json F``.
"""

from __future__ import annotations

import argparse
import time

import diffprune
from diffprune.anatomy import geometry
from diffprune.measure import measure_pipeline

ARCHS = ("pixart-sigma", "sd3-medium", "sd35-medium", "sd35-large", "flux-schnell", "flux-dev", "sana-600m",
         "sana-1600m")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--archs", nargs="+", default=list(ARCHS))
    args = parser.parse_args()
    print(f"{'arch':<14}{'transformer params':>20}{'TFLOPs/call':>13}{'attention':>11}{'text tokens':>13}"
          f"{'modulation params':>19}{'mod. FLOPs':>12}  text encoders (params)")
    for arch in args.archs:
        start = time.perf_counter()
        pipe = diffprune.load(f"random:{arch}", device="meta")
        m = measure_pipeline(pipe, resolution=args.resolution)
        data = m.to_json()
        mod = m.groups["modulation"]
        encoders = ", ".join(f"{n} {c.class_name} {c.params / 1e9:.3f} B" for n, c in m.params.components.items()
                             if n.startswith("text_encoder"))
        print(f"{arch:<14}{data['transformer_params']:>20,}{m.denoiser_flops.tflops:>13.3f}"
              f"{m.denoiser_flops.attention / m.denoiser_flops.total:>11.1%}{geometry(pipe).text_length:>13}"
              f"{mod['param_share']:>19.1%}{mod['flop_share']:>12.2%}  {encoders}"
              f"  [{time.perf_counter() - start:.1f} s]")


if __name__ == "__main__":
    main()
