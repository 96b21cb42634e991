"""Wall-clock U-Net speed-up of token pruning against its FLOPs-ideal ratio, on this machine.

    python benchmarks/tokens_speed.py [--arch sd15 --resolution 512] [--arch sdxl --resolution 768]
        [--arch shapes --resolution 64] [--tokens atedm:ratio=0.63 ...] [--repeats 3] [--timestep 500] [--batch 1]

For each architecture, builds ``random:<arch>``'s U-Net (fp32, seeded random weights: speed does not depend
on the values; ``shapes``: the trained testbed's) and a twin sharing its weights (no second copy in memory)
that carries the token-pruning patch, applied once outside the timed calls; then for each spec times one U-Net
call of each, alternately in one process (SDPA stays on for every attention call except the scoring layers'),
and counts both calls' FLOPs (overhead included). Prints the FLOPs-ideal ratio, the measured ratio and their
quotient. ``tomesd:...`` specs run the public package (when installed) on the twin, for a side-by-side at the
same placement. ``--timestep`` picks the call: 500 is in DSAP's late phase (every selected block prunes); 999 in
its early phase.
"""

from __future__ import annotations

import argparse
import platform

import torch

import diffprune
from diffprune import tokens
from diffprune.archs import build_unet
from diffprune.bench.peers import apply_peer, available, is_peer, parse_peer
from diffprune.measure import compare_latency, count_flops, describe_hardware, unet_inputs


def _twin(unet):
    """A second instance of ``unet`` holding the very same parameter tensors (patches are per instance)."""
    with torch.device("meta"):
        twin = type(unet).from_config(unet.config)
    twin.load_state_dict(unet.state_dict(), assign=True)
    return twin.eval()


def _row(arch, resolution, spec, base_flops, flops, comparison):
    ideal = base_flops / flops
    measured = comparison.speedup
    return (f"{arch:<6}{resolution:>6}  {spec:<34}{base_flops / 1e9:>10.2f}{flops / 1e9:>10.2f}{ideal:>8.3f}"
            f"{comparison.baseline.median_s:>9.2f}{comparison.candidate.median_s:>9.2f}{measured:>9.3f}"
            f"{measured / ideal:>9.3f}  [{comparison.speedup_low:.3f}-{comparison.speedup_high:.3f}]")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", action="append", help="random:<arch> U-Net (repeatable; default sd15 and sdxl)")
    parser.add_argument("--resolution", action="append", type=int, help="one per --arch (default 512 / 768)")
    parser.add_argument("--tokens", action="append", help="spec (repeatable; default atedm:ratio=0.63)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--timestep", type=float, default=500.0)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args(argv)
    archs = args.arch or ["sd15", "sdxl"]
    resolutions = args.resolution or [512, 768][: len(archs)]
    if len(resolutions) != len(archs):
        parser.error("give one --resolution per --arch")
    specs = args.tokens or ["atedm:ratio=0.63", "atedm:ratio=0.63,scorer=strided", "random:ratio=0.63",
                            "tome:ratio=0.5,levels=1", "tomesd:ratio=0.5,max_downsample=1"]
    print(f"hardware: {describe_hardware()}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.python_version()}; batch {args.batch}, timestep {args.timestep:g}, "
          f"speed-up: median of {args.repeats} paired calls")
    print(f"{'arch':<6}{'res':>6}  {'tokens':<34}{'GF base':>10}{'GF pruned':>10}{'ideal':>8}"
          f"{'s base':>9}{'s pruned':>9}{'speedup':>9}{'quotient':>9}  [speed-up quartiles]", flush=True)
    for arch, resolution in zip(archs, resolutions):
        sizes = {}
        if arch == "shapes":
            pipe = diffprune.load("shapes")
            unet, sizes = pipe.unet, {"vae_scale_factor": pipe.vae_scale_factor,
                                      "text_length": pipe.tokenizer.model_max_length}
        else:
            unet = build_unet(arch, seed=0)
        pruned_unet = _twin(unet)
        kwargs = unet_inputs(unet, resolution=resolution, batch=args.batch, **sizes)
        kwargs["timestep"] = torch.full((args.batch,), args.timestep)
        base_flops = count_flops(unet, **kwargs).total

        sample_and_t = (kwargs["sample"], kwargs["timestep"])  # positional, as pipelines call (tomesd needs it)
        rest = {k: v for k, v in kwargs.items() if k not in ("sample", "timestep")}

        def call(model):
            with torch.inference_mode():
                model(*sample_and_t, **rest)

        for spec in specs:
            if is_peer(spec):
                peer = parse_peer(spec)
                if not available(peer.name):
                    print(f"{arch:<6}{resolution:>6}  {spec:<34}not run: {peer.name} is not installed")
                    continue
                remove = apply_peer(pruned_unet, peer)
                flops = count_flops(pruned_unet, *sample_and_t, **rest, on_meta=False).total  # runs for real
            else:
                tokens.apply(pruned_unet, tokens.parse_spec(spec))
                remove = lambda: tokens.remove(pruned_unet)  # noqa: E731
                with tokens.at_timestep(pruned_unet, args.timestep):
                    flops = count_flops(pruned_unet, **kwargs).total
            comparison = compare_latency(lambda: call(unet), lambda: call(pruned_unet), repeats=args.repeats,
                                         warmup=args.warmup)
            print(_row(arch, resolution, spec, base_flops, flops, comparison), flush=True)
            remove()
        unet = pruned_unet = None  # free this architecture before building the next


if __name__ == "__main__":
    main()
