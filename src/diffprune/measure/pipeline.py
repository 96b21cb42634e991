"""One measurement of a whole pipeline: parameters, FLOPs per component call, optional U-Net latency."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from diffprune.anatomy import geometry, unet_of
from diffprune.archs.family import detect_family
from diffprune.errors import DiffpruneError

from .flops import FlopCount, count_flops
from .inputs import text_encoder_inputs, unet_inputs, vae_decode_inputs
from .latency import LatencyStats, measure_latency
from .params import ParamCounts, count_params
from .runtime import applied_runtime_patch


@dataclass
class PipelineMeasurement:
    family: str
    resolution: int
    batch: int
    params: ParamCounts
    unet_flops: FlopCount
    text_encoder_flops: dict[str, FlopCount] = field(default_factory=dict)
    vae_decode_flops: FlopCount | None = None
    unet_latency: LatencyStats | None = None
    source: str | None = None
    tokens: str | None = None          # token pruning spec applied to the U-Net, if any
    steps: int | None = None           # unet_flops is the mean over the U-Net calls of a schedule of this many steps
    unet_tflops_per_step: list[float] | None = None  # one per U-Net call (some schedulers call it more than steps)

    def flops_per_image(self, *, guidance: bool = True) -> int:
        """FLOPs to draw one image (``batch`` = 1): every U-Net call of the ``steps``-step schedule (twice the
        batch with classifier-free guidance), the text encoders (the negative prompt too with guidance) and one
        VAE decode."""
        if self.steps is None:
            raise DiffpruneError("FLOPs per image need the schedule: measure with steps=...")
        factor = 2 if guidance else 1
        calls = len(self.unet_tflops_per_step or []) or self.steps
        total = self.unet_flops.total * calls * factor
        total += sum(f.total for f in self.text_encoder_flops.values()) * factor
        return total + (self.vae_decode_flops.total if self.vae_decode_flops is not None else 0)

    def to_json(self) -> dict:
        """Flat headline keys (``unet_params``, ``unet_tflops``, ...) plus the full detail under ``detail``."""
        out: dict = {"source": self.source, "family": self.family, "resolution": self.resolution,
                     "batch": self.batch}
        for name, comp in self.params.components.items():
            out[f"{name}_params"] = comp.params
            out[f"{name}_nonzero_params"] = comp.nonzero
        out["total_params"] = self.params.total
        out["unet_tflops"] = self.unet_flops.tflops
        if self.steps is not None:
            out["tokens"], out["steps"] = self.tokens, self.steps
            out["unet_tflops_per_step"] = self.unet_tflops_per_step
            out["unet_calls"] = len(self.unet_tflops_per_step or [])
        out["unet_attention_tflops"] = self.unet_flops.attention / 1e12
        for name, flops in self.text_encoder_flops.items():
            out[f"{name}_tflops"] = flops.tflops
        if self.vae_decode_flops is not None:
            out["vae_decode_tflops"] = self.vae_decode_flops.tflops
        if self.unet_latency is not None:
            out["unet_latency_median_s"] = self.unet_latency.median_s
        out["detail"] = asdict(self)
        return out


def default_resolution(obj) -> int:
    """The resolution a pipeline (or bare U-Net) was built for: U-Net sample size x VAE scale factor."""
    return geometry(obj).resolution


def unet_call_flops(obj, *, resolution: int | None = None, batch: int = 1) -> FlopCount:
    """FLOPs of one U-Net call of a pipeline (or bare U-Net) as its structure stands — layer-pruned or not —
    at ``resolution`` (default: the native one), counted on ``meta``; a run-time patch is not counted (see
    :func:`measure_pipeline` with ``steps``)."""
    unet, g = unet_of(obj, "FLOPs of a U-Net call"), geometry(obj)
    return count_flops(unet, **unet_inputs(unet, resolution=resolution or g.resolution, batch=batch,
                                           vae_scale_factor=g.vae_scale_factor, text_length=g.text_length))


def unet_call(obj, *, resolution: int, batch: int = 1, seed: int = 0):
    """A zero-argument callable running one U-Net forward at ``resolution`` (for latency measurements)."""
    unet, g = unet_of(obj, "latency"), geometry(obj)
    factor, text_length = g.vae_scale_factor, g.text_length
    if any(p.device.type == "meta" for p in unet.parameters()):
        raise DiffpruneError("latency needs real weights; this U-Net is on the meta device")
    kwargs = unet_inputs(unet, resolution=resolution, batch=batch, vae_scale_factor=factor,
                         text_length=text_length, seed=seed)

    def call():
        with torch.inference_mode():
            return unet(**kwargs)

    return call


def measure_pipeline(pipe, *, resolution: int | None = None, batch: int = 1, latency_repeats: int = 0,
                     latency_warmup: int = 1, source: str | None = None,
                     steps: int | None = None) -> PipelineMeasurement:
    """Measure a Stable Diffusion pipeline (or a bare ``UNet2DConditionModel``).

    FLOPs are per single call of each component at ``resolution`` and ``batch`` (classifier-free guidance
    doubles the U-Net batch; a sampling run makes one U-Net call per step), attention included.
    ``latency_repeats > 0`` also times the U-Net call (needs real weights, not ``meta``).
    ``steps``: report the U-Net FLOPs as the mean over the calls of a ``steps``-step schedule of the pipeline's
    scheduler (a run-time token-pruning patch makes steps differ; with one applied, ``steps`` defaults to 20).
    """
    family = detect_family(pipe)
    unet, g = unet_of(pipe, "measure_pipeline"), geometry(pipe)
    factor, text_length = g.vae_scale_factor, g.text_length
    resolution = resolution or default_resolution(pipe)
    call = unet_call(pipe, resolution=resolution, batch=batch) if latency_repeats > 0 else None
    patch = applied_runtime_patch(unet)
    per_step = None
    if patch is not None and steps is None:
        steps = 20
    if steps is not None and patch is not None:
        schedule = patch[0].schedule_flops(pipe, steps, resolution=resolution, batch=batch,
                                           vae_scale_factor=factor, text_length=text_length)
        unet_flops = FlopCount(total=round(schedule.mean_tflops * 1e12),
                               attention=round(schedule.mean_attention_tflops * 1e12))
        per_step = [f.tflops for f in schedule.per_step]
    else:  # every call costs the same
        unet_flops = count_flops(unet, **unet_inputs(unet, resolution=resolution, batch=batch,
                                                     vae_scale_factor=factor, text_length=text_length))
        if steps is not None:
            per_step = [unet_flops.tflops] * steps
    te_flops, vae_flops = {}, None
    if unet is not pipe:
        for name in ("text_encoder", "text_encoder_2"):
            encoder = getattr(pipe, name, None)
            if encoder is not None:
                te_flops[name] = count_flops(encoder, **text_encoder_inputs(encoder, batch=batch,
                                                                            text_length=text_length))
        vae_flops = count_flops(pipe.vae, method="decode",
                                **vae_decode_inputs(pipe.vae, resolution=resolution, batch=batch,
                                                    vae_scale_factor=factor))
    latency = None
    if call is not None:
        latency = measure_latency(call, repeats=latency_repeats, warmup=latency_warmup, label="unet",
                                  device=str(unet.device))
    return PipelineMeasurement(family=family.value, resolution=resolution, batch=batch, params=count_params(pipe),
                               unet_flops=unet_flops, text_encoder_flops=te_flops, vae_decode_flops=vae_flops,
                               unet_latency=latency, source=source, steps=steps, unet_tflops_per_step=per_step,
                               tokens=None if patch is None else patch[1])
