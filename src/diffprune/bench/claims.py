"""``diffprune bench --claims``: the headline claims of the three papers diffprune implements, and of the
diffusion-transformer work it follows (:mod:`diffprune.bench.claims_dit`), re-measured in one run and tabulated as
``claim | source's number | measured here | holds?``.

FLOPs are counted on the full-size published architectures (meta device: exact shapes, no weights). Quality
claims are measured on the shapes testbed, where the evaluator is exact; the testbed is a 3.7 M-parameter model,
so its thresholds (sparsities, ratios) are not SD's — a claim *holds* when the same ordering or shape appears
(e.g. magnitude ahead of Wanda at high sparsity, a sudden collapse), not the same number. Wall-clock speed is
timed on this machine at a reduced resolution. What was scaled down is listed in the report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from diffprune import layers, tokens, weights
from diffprune.anatomy import geometry
from diffprune.io import load
from diffprune.measure import compare_latency, count_flops, describe_hardware, unet_inputs
from diffprune.recipe import compress, load_recipe

from . import claims_dit
from .claim import Claim, Testbed, ahead, pct


@dataclass(frozen=True)
class ClaimsConfig:
    prompts: int = 24           # held-out shapes prompts per testbed evaluation
    steps: int = 20
    seed: int = 0
    latency_repeats: int = 3
    flops_arch: str = "sdxl"    # AT-EDM's FLOPs claim: this architecture at flops_resolution, on meta
    flops_resolution: int = 1024
    speed_arch: str = "sdxl"    # wall-clock speed-up: this architecture at speed_resolution, random weights
    speed_resolution: int = 512
    additivity_sets: int = 20
    calibration_prompts: int = 16  # Wanda's and the output loss's calibration (training-split prompts)
    modulation_arch: str = "flux-dev"  # where Flux's parameters and FLOPs sit: at flops_resolution, on meta
    depth_arch: str = "pixart-sigma"   # halving a DiT's depth: at flops_resolution, on meta
    dit_source: str = "shapes-dit"     # the DiT testbed the OBS-Diff claim is measured on
    progress: bool = True


@dataclass
class ClaimsResult:
    config: ClaimsConfig
    claims: list[Claim]
    scaled_down: list[str]
    seconds: float
    hardware: dict = field(default_factory=dict)
    measurements: dict = field(default_factory=dict)



def collapses_first(unet: float | None, text_encoder: float | None) -> bool | None:
    """Whether the U-Net collapses at a lower sparsity than the text encoder; None when the grid cannot tell."""
    if unet is None or text_encoder is None or unet == text_encoder:
        return None
    return unet < text_encoder

def _sd2_claims(tb: Testbed, config: ClaimsConfig, out: dict) -> list[Claim]:
    pipe = tb.copy()
    compress(pipe, load_recipe("sd2-study"), progress=False)
    kept = tb.quality(pipe)
    claims = [Claim("SD-2 pruning study", "text encoder 47.5 % + U-Net 35 % (magnitude) keeps quality",
                    "38.5 % overall; FID 18.1, CLIP 0.311",
                    f"all-attributes {pct(tb.dense)} -> {pct(kept)}", kept >= tb.dense - 0.05,
                    "holds: within 5 points of the dense testbed")]
    te = {}
    for method in ("magnitude", "wanda"):
        for sparsity in (0.6, 0.7):
            pipe = tb.copy()
            weights.prune(pipe, {"text_encoder": weights.make_config(method, sparsity)},
                          weights.CalibrationConfig(num_prompts=config.calibration_prompts))
            te[method, sparsity] = tb.quality(pipe)
    out["text_encoder_high_sparsity"] = {f"{m}@{s}": v for (m, s), v in te.items()}
    claims.append(Claim("SD-2 pruning study", "magnitude beats Wanda on the text encoder at high sparsity",
                        "Wanda collapses from 52.5-60 %, magnitude holds to 57.5-60 %",
                        ", ".join(f"{s:.0%}: mag {pct(te['magnitude', s])} vs wanda {pct(te['wanda', s])}"
                                  for s in (0.6, 0.7)),
                        ahead(sum(te["magnitude", s] for s in (0.6, 0.7)), [sum(te["wanda", s] for s in (0.6, 0.7))]),
                        "holds: magnitude ahead summed over both sparsities"))
    grids = {"unet": (0.35, 0.5, 0.65, 0.8, 0.95), "text_encoder": (0.475, 0.6, 0.7, 0.85, 0.95)}
    curves = {}
    for component, grid in grids.items():
        curve = []
        for s in grid:
            if component == "text_encoder" and ("magnitude", s) in te:
                curve.append(te["magnitude", s])
                continue
            pipe = tb.copy()
            weights.prune(pipe, {component: weights.MagnitudeConfig(sparsity=s)})
            curve.append(tb.quality(pipe))
        curves[component] = curve
    out["magnitude_curves"] = {c: dict(zip(grids[c], v)) for c, v in curves.items()}
    found = {c: next((s for s, q in zip(grids[c], curves[c]) if q < 0.5 * tb.dense), None) for c in grids}
    measured = ", ".join(f"{c}: {'none' if s is None else f'{s:.0%}'}" for c, s in found.items())
    claims.append(Claim("SD-2 pruning study", "quality collapses suddenly past a threshold; U-Net before the "
                        "text encoder", "U-Net 50-60 %, text encoder 62.5-65 %", "collapse (< half of dense) at "
                        + measured, collapses_first(found["unet"], found["text_encoder"]),
                        "grids: U-Net 35/50/65/80/95 %, text encoder 47.5/60/70/85/95 %; n/a when either does not "
                        "collapse or both collapse at the same grid point"))
    return claims


def _laptop_claims(tb: Testbed, config: ClaimsConfig, out: dict) -> list[Claim]:
    data = layers.record_calibration(tb.base, layers.LayerCalibrationConfig(num_prompts=config.calibration_prompts))
    g = geometry(tb.base)
    units = layers.removable_units(layers.enumerate_units(tb.base.unet, "block", vae_scale_factor=g.vae_scale_factor,
                                                          text_length=g.text_length))
    scores = {c: layers.score_units(tb.base, units, c, data) for c in layers.CRITERIA}
    quality = {}
    for criterion in layers.CRITERIA:
        pipe = tb.copy()
        layers.prune(pipe, layers.LayerPruningConfig(ratio=0.5, criterion=criterion), data,
                     scores=scores[criterion])
        quality[criterion] = tb.quality(pipe)
    out["layers_50"] = quality
    others = {c: q for c, q in quality.items() if c != "output-loss"}
    add = layers.additivity(tb.base.unet, data, units, scores, count=config.additivity_sets)
    pearson = {c: add.pearson(c) for c in layers.CRITERIA}
    out["additivity_pearson"] = pearson
    return [
        Claim("LAPTOP-Diff", "output loss is the best one-shot criterion at 50 % (no retraining)",
              "best criterion at 50 %; PickScore -4.0 % vs -8.2 % after retraining",
              f"output-loss {pct(quality['output-loss'])}; "
              + ", ".join(f"{c} {pct(q)}" for c, q in others.items()),
              ahead(quality["output-loss"], others.values())),
        Claim("LAPTOP-Diff", "the output loss is additive (summed single-unit losses predict a set's loss)",
              "additive, unlike the other criteria",
              ", ".join(f"{c} r={p:.2f}" for c, p in pearson.items()),
              pearson["output-loss"] >= 0.9 and pearson["output-loss"] >= max(pearson.values()),
              f"Pearson over {config.additivity_sets} random sets of 2-6 units"),
    ]


def _atedm_flops(config: ClaimsConfig, out: dict) -> Claim:
    pipe = load(f"random:{config.flops_arch}", device="meta")
    base = tokens.schedule_flops(pipe, 20, resolution=config.flops_resolution).mean_tflops
    tokens.apply(pipe, tokens.parse_spec("atedm:ratio=0.63"))
    pruned = tokens.schedule_flops(pipe, 20, resolution=config.flops_resolution).mean_tflops
    tokens.remove(pipe)
    cut = 1 - pruned / base
    out["atedm_flops"] = {"base_tflops": base, "pruned_tflops": pruned}
    return Claim("AT-EDM", f"-38.8 % FLOPs per step on {config.flops_arch} at {config.flops_resolution}²",
                 "6.7 -> 4.1 TFLOPs/step (-38.8 %)", f"{base:.2f} -> {pruned:.2f} TFLOPs/step ({-cut:.1%})",
                 abs(cut - 0.388) <= 0.02, "atedm:ratio=0.63 with DSAP, mean over 20 Euler steps; "
                 "holds: within 2 points")


def _atedm_quality(tb: Testbed, config: ClaimsConfig, out: dict) -> Claim:
    resolution = 64
    atedm = tokens.parse_spec("atedm:ratio=0.63")
    pipe = tb.copy()
    tokens.apply(pipe, atedm)
    target = tokens.schedule_flops(pipe, config.steps, resolution=resolution).mean_tflops
    quality = {"atedm": tb.quality(pipe)}
    tokens.apply(pipe, tokens.parse_spec("random:ratio=0.63"))  # same placement and ratio: the same FLOPs
    quality["random"] = tb.quality(pipe)
    tokens.remove(pipe)
    ratio, _ = tokens.ratio_for_flops(pipe, tokens.parse_spec("tome:ratio=0.5,merge=all"), target, config.steps,
                                      resolution=resolution)
    tokens.apply(pipe, tokens.with_ratio(tokens.parse_spec("tome:ratio=0.5,merge=all"), ratio))
    quality["tome"] = tb.quality(pipe)
    out["tokens_equal_flops"] = {**quality, "tome_ratio": ratio, "gflops_per_call": target * 1e3}
    return Claim("AT-EDM", "better than ToMe and random at equal FLOPs", "FID 28.04 vs ToMe 35.27 at 4.1 T",
                 ", ".join(f"{k} {pct(v)}" for k, v in quality.items()),
                 ahead(quality["atedm"], [quality["tome"], quality["random"]]),
                 f"testbed, ToMe (merge=all) at ratio {ratio:.3f} to match AT-EDM's FLOPs")


def _atedm_speed(config: ClaimsConfig, out: dict) -> Claim:
    from diffprune.archs import build_unet

    unet = build_unet(config.speed_arch, seed=0)
    with torch.device("meta"):
        twin = type(unet).from_config(unet.config)
    twin.load_state_dict(unet.state_dict(), assign=True)  # the same weights, its own (patched) modules
    kwargs = unet_inputs(unet, resolution=config.speed_resolution)
    kwargs["timestep"] = torch.full((1,), 500.0)
    tokens.apply(twin, tokens.parse_spec("atedm:ratio=0.63"))
    ideal = count_flops(unet, **kwargs).total / count_flops(twin, **kwargs).total

    def call(model):
        with torch.inference_mode():
            model(**kwargs)

    cmp = compare_latency(lambda: call(unet), lambda: call(twin), repeats=config.latency_repeats, warmup=1)
    tokens.remove(twin)
    out["atedm_speed"] = {"ideal": ideal, "speedup": cmp.speedup, "base_s": cmp.baseline.median_s,
                          "pruned_s": cmp.candidate.median_s}
    return Claim("AT-EDM", "wall-clock speed-up", "up to 1.53x (SD-XL, GPU, no fused attention)",
                 f"{cmp.speedup:.2f}x (FLOPs-ideal {ideal:.2f}x)", cmp.speedup > 1.0,
                 f"{config.speed_arch} U-Net at {config.speed_resolution}², one call at t=500, fp32 on this CPU, "
                 f"SDPA on; median of {config.latency_repeats} interleaved")


def run_claims(config: ClaimsConfig | None = None) -> ClaimsResult:
    """Measure every claim (see the module docstring)."""
    config = config or ClaimsConfig()
    start = time.perf_counter()
    out: dict = {}
    evaluations = 1 + 1 + 4 + 6 + len(layers.CRITERIA) + 3 + claims_dit.EVALUATIONS
    with tqdm(total=evaluations, desc="claims: testbed evaluations", disable=not config.progress) as bar:
        tb = Testbed(config, bar)
        claims = _sd2_claims(tb, config, out) + _laptop_claims(tb, config, out) + [_atedm_flops(config, out),
                                                                           _atedm_quality(tb, config, out)]
        claims += [claims_dit.modulation_claim(config, out), claims_dit.depth_claim(config, out),
                   claims_dit.obs_claim(config, out, bar)]
    claims.append(_atedm_speed(config, out))
    out["dense_accuracy_all"] = tb.dense
    scaled = [f"quality on the shapes testbed (3.7 M parameters, 64x64), {config.prompts} held-out prompts, "
              f"{config.steps} steps — not SD's FID/CLIP on COCO",
              f"speed: one U-Net call of {config.speed_arch} at {config.speed_resolution}² on this CPU, "
              f"not {config.flops_resolution}² on a GPU",
              "collapse points on a 5-point grid per component",
              "layer pruning compared before retraining (the paper's numbers are after distillation)",
              f"DiT quality on the {config.dit_source} testbed, not SD3-medium's FID on COCO; DiT costs counted on "
              "meta, not timed"]
    return ClaimsResult(config, claims, scaled, round(time.perf_counter() - start, 1), describe_hardware("cpu"),
                        out)


def write_claims_report(result: ClaimsResult, out_dir, *, overwrite: bool = False):
    """The claims table, what was scaled down, and every raw measurement."""
    from diffprune.report import Report

    report = Report(out_dir, title="diffprune bench --claims", overwrite=overwrite)
    report.text(f"Measured in {result.seconds / 60:.1f} minutes. Quality is the share of images with every "
                "attribute right (the shapes evaluator); a claim holds when the same ordering or shape appears "
                "here (see each note).", heading="What was run")
    report.table([{"paper": c.paper, "claim": c.claim, "source's number": c.source_number,
                   "measured here": c.measured, "holds?": c.verdict, "note": c.note} for c in result.claims],
                 heading="Claims", key="claims")
    report.text("\n".join(f"- {s}" for s in result.scaled_down), heading="Scaled down")
    report.text("\n".join(f"- {k}: {v}" for k, v in result.hardware.items()), heading="Hardware")
    report.metrics("measurements", result.measurements)
    return report.write()
