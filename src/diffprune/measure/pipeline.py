"""One measurement of a whole pipeline: parameters, FLOPs per component call, optional denoiser latency.

The denoiser is the U-Net of SD-1/2/XL or the transformer of a DiT pipeline; JSON keys carry its name
(``unet_tflops``, ``transformer_tflops``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from diffprune.anatomy import denoiser_name, denoiser_of, geometry, is_module, tokens_read
from diffprune.archs.family import detect_family
from diffprune.errors import DiffpruneError

from .flops import FlopCount, count_flops
from .inputs import denoiser_inputs, text_encoder_inputs, vae_decode_inputs
from .latency import LatencyStats, measure_latency
from .params import ParamCounts, count_params
from .runtime import applied_runtime_patch


@dataclass
class PipelineMeasurement:
    family: str
    resolution: int
    batch: int
    params: ParamCounts
    denoiser_flops: FlopCount
    denoiser: str = "unet"             # "unet" or "transformer": the pipeline attribute the denoiser sits in
    text_encoder_flops: dict[str, FlopCount] = field(default_factory=dict)
    vae_decode_flops: FlopCount | None = None
    denoiser_latency: LatencyStats | None = None
    source: str | None = None
    tokens: str | None = None          # token pruning spec applied to the U-Net, if any
    steps: int | None = None           # denoiser_flops is the mean over the calls of a schedule of this many steps
    denoiser_tflops_per_step: list[float] | None = None  # one per call (some schedulers call it more than steps)
    groups: dict[str, dict] | None = None  # a transformer's parameters and FLOPs by role (see parameter_groups)

    def flops_per_image(self, *, guidance: bool = True) -> int:
        """FLOPs to draw one image (``batch`` = 1): every denoiser call of the ``steps``-step schedule (twice the
        batch with classifier-free guidance; FLUX.1 takes its guidance as an input instead), the text encoders (the
        negative prompt too with guidance) and one VAE decode."""
        if self.steps is None:
            raise DiffpruneError("FLOPs per image need the schedule: measure with steps=...")
        factor = 2 if guidance and self.family != "flux" else 1  # FLUX.1 embeds its guidance: one pass per step
        calls = len(self.denoiser_tflops_per_step or []) or self.steps
        total = self.denoiser_flops.total * calls * factor
        total += sum(f.total for f in self.text_encoder_flops.values()) * factor
        return total + (self.vae_decode_flops.total if self.vae_decode_flops is not None else 0)

    def to_json(self) -> dict:
        """Flat headline keys (``unet_params``, ``unet_tflops`` or ``transformer_tflops``, ...) plus the full detail
        under ``detail``."""
        out: dict = {"source": self.source, "family": self.family, "resolution": self.resolution,
                     "batch": self.batch}
        for name, comp in self.params.components.items():
            out[f"{name}_params"] = comp.params
            out[f"{name}_nonzero_params"] = comp.nonzero
        out["total_params"] = self.params.total
        d = self.denoiser
        out["denoiser"] = d
        out[f"{d}_tflops"] = self.denoiser_flops.tflops
        if self.steps is not None:
            out["tokens"], out["steps"] = self.tokens, self.steps
            out[f"{d}_tflops_per_step"] = self.denoiser_tflops_per_step
            out[f"{d}_calls"] = len(self.denoiser_tflops_per_step or [])
        out[f"{d}_attention_tflops"] = self.denoiser_flops.attention / 1e12
        for name, flops in self.text_encoder_flops.items():
            out[f"{name}_tflops"] = flops.tflops
        if self.vae_decode_flops is not None:
            out["vae_decode_tflops"] = self.vae_decode_flops.tflops
        if self.denoiser_latency is not None:
            out[f"{d}_latency_median_s"] = self.denoiser_latency.median_s
        if self.groups is not None:
            out[f"{d}_groups"] = self.groups
        out["detail"] = asdict(self)
        return out


def default_resolution(obj) -> int:
    """The resolution a pipeline (or bare denoiser) was built for: latent sample size x VAE scale factor."""
    return geometry(obj).resolution


def _call_inputs(obj, *, resolution: int | None, batch: int, seed: int = 0) -> tuple:
    model, g = denoiser_of(obj, "a denoiser call"), geometry(obj)
    return model, denoiser_inputs(model, resolution=resolution or g.resolution, batch=batch,
                                  vae_scale_factor=g.vae_scale_factor, text_length=g.text_length, seed=seed)


def denoiser_call_flops(obj, *, resolution: int | None = None, batch: int = 1) -> FlopCount:
    """FLOPs of one denoiser call of a pipeline (or bare U-Net / transformer) as its structure stands — pruned or
    not — at ``resolution`` (default: the native one), counted on ``meta``; a run-time patch is not counted (see
    :func:`measure_pipeline` with ``steps``)."""
    model, kwargs = _call_inputs(obj, resolution=resolution, batch=batch)
    return count_flops(model, **kwargs)


def denoiser_call(obj, *, resolution: int, batch: int = 1, seed: int = 0):
    """A zero-argument callable running one denoiser forward at ``resolution`` (for latency measurements)."""
    model = denoiser_of(obj, "latency")
    if any(p.device.type == "meta" for p in model.parameters()):
        raise DiffpruneError(f"latency needs real weights; this {type(model).__name__} is on the meta device")
    model, kwargs = _call_inputs(obj, resolution=resolution, batch=batch, seed=seed)

    def call():
        with torch.inference_mode():
            return model(**kwargs)

    return call


def measure_pipeline(pipe, *, resolution: int | None = None, batch: int = 1, latency_repeats: int = 0,
                     latency_warmup: int = 1, source: str | None = None,
                     steps: int | None = None) -> PipelineMeasurement:
    """Measure a pipeline (or a bare denoiser: U-Net or diffusion transformer).

    FLOPs are per single call of each component at ``resolution`` and ``batch`` (classifier-free guidance
    doubles the denoiser batch; a sampling run makes one call per step), attention included.
    ``latency_repeats > 0`` also times the denoiser call (needs real weights, not ``meta``).
    ``steps``: report the denoiser FLOPs as the mean over the calls of a ``steps``-step schedule of the pipeline's
    scheduler (a run-time token-pruning patch makes steps differ; with one applied, ``steps`` defaults to 20).
    A transformer's parameters and FLOPs are also split by role (:func:`parameter_groups`), so that parameters
    that cost almost nothing per call (AdaLN modulation) are visible.
    """
    from .groups import parameter_groups

    family = detect_family(pipe)
    model, g = denoiser_of(pipe, "measure_pipeline"), geometry(pipe)
    name = denoiser_name(pipe)
    factor, text_length = g.vae_scale_factor, g.text_length
    resolution = resolution or default_resolution(pipe)
    call = denoiser_call(pipe, resolution=resolution, batch=batch) if latency_repeats > 0 else None
    patch = applied_runtime_patch(model)
    per_step, groups = None, None
    if patch is not None and steps is None:
        steps = 20
    if steps is not None and patch is not None:
        schedule = patch[0].schedule_flops(pipe, steps, resolution=resolution, batch=batch,
                                           vae_scale_factor=factor, text_length=text_length)
        flops = FlopCount(total=round(schedule.mean_tflops * 1e12),
                          attention=round(schedule.mean_attention_tflops * 1e12))
        per_step = [f.tflops for f in schedule.per_step]
    else:  # every call costs the same
        inputs = _call_inputs(pipe, resolution=resolution, batch=batch)[1]
        flops = count_flops(model, **inputs)
        if name == "transformer":
            groups = {k: v.to_json() for k, v in parameter_groups(model, inputs).items()}
        if steps is not None:
            per_step = [flops.tflops] * steps
    te_flops, vae_flops = {}, None
    if not is_module(pipe):
        for enc_name, length in (tokens_read(pipe) if family.is_dit else
                                 {n: text_length for n in ("text_encoder", "text_encoder_2")
                                  if getattr(pipe, n, None) is not None}).items():
            encoder = getattr(pipe, enc_name)
            te_flops[enc_name] = count_flops(encoder, **text_encoder_inputs(encoder, batch=batch, text_length=length))
        vae_flops = count_flops(pipe.vae, method="decode",
                                **vae_decode_inputs(pipe.vae, resolution=resolution, batch=batch,
                                                    vae_scale_factor=factor))
    latency = None
    if call is not None:
        latency = measure_latency(call, repeats=latency_repeats, warmup=latency_warmup, label=name,
                                  device=str(model.device))
    return PipelineMeasurement(family=family.value, resolution=resolution, batch=batch, params=count_params(pipe),
                               denoiser_flops=flops, denoiser=name, text_encoder_flops=te_flops,
                               vae_decode_flops=vae_flops, denoiser_latency=latency, source=source, steps=steps,
                               denoiser_tflops_per_step=per_step, tokens=None if patch is None else patch[1],
                               groups=groups)
