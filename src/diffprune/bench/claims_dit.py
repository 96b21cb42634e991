"""The diffusion-transformer claims of ``diffprune bench --claims``.

Two are about cost and are counted exactly on the full-size published architectures (meta device): where Flux's
parameters sit against where its FLOPs go, and what halving a DiT's depth saves. One is about quality and is
measured on the ``shapes-dit`` testbed (a PixArt-style transformer trained on the shapes world): OBS-style
pruning (SparseGPT, timestep-weighted calibration) against Wanda at 50 % unstructured sparsity. When the
``shapes-dit`` weights are not installed, that claim is reported as undecided with the reason.
"""

from __future__ import annotations

from diffprune import layers, weights
from diffprune.archs import build_denoiser
from diffprune.errors import DiffpruneError
from diffprune.measure import count_flops, denoiser_inputs, parameter_groups

from .claim import Claim, Testbed, ahead, pct

#: testbed evaluations the DiT claims make (dense, SparseGPT, Wanda)
EVALUATIONS = 3


def modulation_claim(config, out: dict) -> Claim:
    """Flux's AdaLN modulation: a large share of the parameters, almost none of the FLOPs."""
    model = build_denoiser(config.modulation_arch, device="meta")
    groups = parameter_groups(model, denoiser_inputs(model, resolution=config.flops_resolution))
    share = groups["modulation"]
    out["modulation"] = {"arch": config.modulation_arch, **share.to_json()}
    return Claim("FLUX.1 / Chroma", "the AdaLN modulation layers hold about a quarter of Flux's parameters and "
                 "almost none of its FLOPs", "per-block AdaLN linears: 3.23 B of 11.90 B (27.1 %, calculated from "
                 "the FLUX.1-dev config); Chroma, FLUX.1-schnell without them: 11.89 B -> 8.90 B",
                 f"{share.params / 1e9:.2f} B parameters ({share.param_share:.1%}), "
                 f"{share.flop_share:.3%} of the FLOPs", 0.25 <= share.param_share <= 0.30 and share.flop_share < 0.01,
                 f"{config.modulation_arch} transformer at {config.flops_resolution}², one call, counted on meta; "
                 "every AdaLN modulation linear, the output layer's included; holds: 25-30 % of parameters, "
                 "under 1 % of FLOPs")


def depth_claim(config, out: dict) -> Claim:
    """Halving a DiT's depth (every other block removed) halves the cost of a call."""
    model = build_denoiser(config.depth_arch, device="meta")
    inputs = denoiser_inputs(model, resolution=config.flops_resolution)
    base = count_flops(model, **inputs).total
    units = layers.removable_units(layers.enumerate_units(model, "block", with_flops=False))
    blocks = [u.name for u in units]
    layers.remove_units(model, blocks[1::2])
    half = count_flops(model, **inputs).total
    ratio = base / half
    out["depth_halving"] = {"arch": config.depth_arch, "blocks": len(blocks), "removed": len(blocks[1::2]),
                            "base_tflops": base / 1e12, "pruned_tflops": half / 1e12, "ratio": ratio}
    return Claim("TinyFusion", "removing half of a DiT's blocks makes it about 2x faster",
                 "DiT-XL/2 28 -> 14 layers: 2x faster (FID 2.86 after recovery)",
                 f"{len(blocks)} -> {len(blocks) - len(blocks[1::2])} blocks: {base / 1e12:.2f} -> "
                 f"{half / 1e12:.2f} TFLOPs per call ({ratio:.2f}x)", ratio >= 1.9,
                 f"{config.depth_arch} at {config.flops_resolution}², every other block removed, FLOPs counted on "
                 "meta (the ideal speed-up; embedding and output layers stay); holds: at least 1.9x")


def obs_claim(config, out: dict, bar) -> Claim:
    """OBS-style pruning (SparseGPT) ahead of Wanda at 50 % on a transformer, on the shapes-dit testbed."""
    source_number = "SD3-medium, 50 % unstructured: FID 27.20 vs Wanda 43.98 (dense 36.14)"
    claim = "OBS with a timestep-weighted Hessian beats Wanda at 50 % on a diffusion transformer"
    try:
        tb = Testbed(config, bar, source=config.dit_source)
    except DiffpruneError as exc:
        bar.update(EVALUATIONS)
        return Claim("OBS-Diff", claim, source_number, "not measured", None, f"no {config.dit_source} testbed: {exc}")
    quality = {"dense": tb.dense}
    calibration = weights.CalibrationConfig(num_prompts=config.calibration_prompts)
    for method in ("sparsegpt", "wanda"):
        pipe = tb.copy()
        weights.prune(pipe, {"transformer": weights.make_config(method, 0.5)}, calibration)
        quality[method] = tb.quality(pipe)
    out["dit_weights_50"] = quality
    return Claim("OBS-Diff", claim, source_number,
                 f"all-attributes dense {pct(quality['dense'])}, sparsegpt {pct(quality['sparsegpt'])}, "
                 f"wanda {pct(quality['wanda'])}", ahead(quality["sparsegpt"], [quality["wanda"]]),
                 f"{config.dit_source} testbed, transformer Linear layers at 50 %, {config.calibration_prompts} "
                 f"calibration prompts through the pipeline, {calibration.timestep_weighting} timestep weights")
