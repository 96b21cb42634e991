"""How much each unit matters: LAPTOP's output loss and the criteria it is compared with.

- ``output-loss``: E||eps_removed - eps_orig||^2 of the whole U-Net, on recorded sampling inputs (prompts x
  timesteps, fixed noise and seeds, the conditional branch);
- ``magnitude``: the L1 norm of the unit's weights; ``taylor``: |sum w * dL/dw| of the denoising loss, the
  first-order estimate of the loss change when the unit is zeroed; ``random``: a seeded draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from diffprune.anatomy import call_options, denoiser_of, geometry, is_unet
from diffprune.calibration import (DEFAULT_BATCH_SIZE, DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_PROMPTS, DEFAULT_STEPS,
                                    calibration_generators, calibration_prompts)
from diffprune.errors import DiffpruneError
from diffprune.progress import pipeline_bar_disabled

from .surgery import units_removed
from .units import Unit

CRITERIA = ("output-loss", "magnitude", "taylor", "random")


@dataclass
class LayerCalibrationConfig:
    """Calibration inputs: ``num_prompts`` prompts (``None``: the shapes testbed's training prompts), sampled
    with ``steps`` steps; ``timesteps`` of those steps (evenly spread) are kept as U-Net inputs."""

    prompts: Sequence[str] | None = None
    num_prompts: int = DEFAULT_NUM_PROMPTS
    steps: int = DEFAULT_STEPS
    timesteps: int = 5
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    batch_size: int = DEFAULT_BATCH_SIZE
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_prompts < 1 or self.steps < 1 or self.batch_size < 1:
            raise DiffpruneError("num_prompts, steps and batch_size must be at least 1")
        if not 1 <= self.timesteps <= self.steps:
            raise DiffpruneError(f"timesteps must be in [1, steps={self.steps}], got {self.timesteps}")


@dataclass
class CalibrationSet:
    """Recorded U-Net inputs (conditional branch) and the unpruned outputs on them."""

    inputs: list[dict] = field(repr=False)
    reference: list[torch.Tensor] = field(repr=False)
    final_latents: torch.Tensor = field(repr=False)  # the samples the unpruned pipeline drew, one per prompt
    rows: list[tuple[int, int]] = field(default_factory=list)  # prompts (start, stop) of each input
    prompts: list[str] = field(default_factory=list)


def _prompts(config: LayerCalibrationConfig) -> list[str]:
    return calibration_prompts(config.prompts, config.num_prompts)


def _cond_half(value, batch: int):
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == 2 * batch:
        return value[batch:].detach().clone()
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == batch:
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _cond_half(v, batch) for k, v in value.items()}
    return value


def _unet_call(unet, inputs: dict) -> torch.Tensor:
    return unet(**inputs, return_dict=False)[0].float()


#: the keyword arguments of a diffusion transformer's call that carry the batch (doubled under guidance)
_DIT_BATCH_KEYS = ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep", "guidance",
                   "encoder_attention_mask", "attention_mask", "added_cond_kwargs")
_DIT_DROP_KEYS = ("return_dict", "joint_attention_kwargs", "attention_kwargs", "cross_attention_kwargs")


def _unet_record(args, kwargs, batch: int) -> dict:
    sample = args[0] if args else kwargs["sample"]
    t = args[1] if len(args) > 1 else kwargs["timestep"]
    record = {"sample": sample, "timestep": t,
              "encoder_hidden_states": kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)}
    if kwargs.get("added_cond_kwargs"):
        record["added_cond_kwargs"] = kwargs["added_cond_kwargs"]
    if kwargs.get("timestep_cond") is not None:
        record["timestep_cond"] = kwargs["timestep_cond"]
    entry = {k: _cond_half(v, batch) for k, v in record.items()}
    if isinstance(t, torch.Tensor) and t.ndim == 0 or not isinstance(t, torch.Tensor):
        entry["timestep"] = torch.as_tensor(t).expand(batch).clone()
    return entry


def _dit_record(args, kwargs, batch: int) -> dict:
    """A transformer call's keyword arguments, the conditional half of those that carry the batch (position ids
    and other per-call tensors as they are)."""
    if args:
        kwargs = {"hidden_states": args[0], **kwargs}
    entry = {}
    for key, value in kwargs.items():
        if key in _DIT_DROP_KEYS:
            continue
        entry[key] = _cond_half(value, batch) if key in _DIT_BATCH_KEYS else (
            value.detach().clone() if isinstance(value, torch.Tensor) else value)
    return entry


def record_calibration(pipe, config: LayerCalibrationConfig | None = None, progress: bool = False) -> CalibrationSet:
    """Sample with the unpruned pipeline and keep the denoiser inputs of ``config.timesteps`` steps."""
    config = config or LayerCalibrationConfig()
    prompts = _prompts(config)
    keep = {round(i * (config.steps - 1) / max(1, config.timesteps - 1)) for i in range(config.timesteps)}
    unet = denoiser_of(pipe, "layer pruning")
    recorder = _unet_record if is_unet(unet) else _dit_record
    size = geometry(pipe).resolution
    inputs, finals, rows = [], [], []
    for start in tqdm(range(0, len(prompts), config.batch_size), desc="calibration", disable=not progress):
        batch = prompts[start:start + config.batch_size]
        calls: list[dict] = []

        def hook(module, args, kwargs):
            calls.append(recorder(args, kwargs, len(batch)) if len(calls) in keep else None)

        handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            generators = calibration_generators(config.seed, start, len(batch))
            with torch.no_grad(), pipeline_bar_disabled(pipe):
                out = pipe(batch, num_inference_steps=config.steps, guidance_scale=config.guidance_scale,
                           generator=generators, output_type="latent", height=size, width=size,
                           **call_options(pipe))
        finally:
            handle.remove()
        finals.append(out.images.float())
        kept = [c for c in calls if c is not None]
        inputs.extend(kept)
        rows.extend([(start, start + len(batch))] * len(kept))
    with torch.no_grad():
        reference = [_unet_call(unet, x) for x in inputs]
    return CalibrationSet(inputs=inputs, reference=reference, final_latents=torch.cat(finals), rows=rows,
                          prompts=prompts)


def output_loss(unet, data: CalibrationSet, removed: Sequence[str] = (), units: dict | None = None) -> float:
    """Mean squared difference between the denoiser's output with ``removed`` gone and the unpruned output."""
    total, count = 0.0, 0
    with torch.no_grad(), units_removed(unet, removed, units):
        for x, ref in zip(data.inputs, data.reference):
            out = _unet_call(unet, x)
            total += float((out - ref).pow(2).sum())
            count += ref.numel()
    return total / count


def output_loss_scores(unet, data: CalibrationSet, units: Sequence[Unit], progress: bool = False) -> dict[str, float]:
    table = {u.name: u for u in units}
    return {u.name: output_loss(unet, data, [u.name], table)
            for u in tqdm(units, desc="output loss", disable=not progress)}


def magnitude_scores(unet, units: Sequence[Unit]) -> dict[str, float]:
    return {u.name: float(sum(p.detach().abs().sum() for p in unet.get_submodule(u.name).parameters()))
            for u in units}


def random_scores(units: Sequence[Unit], seed: int = 0) -> dict[str, float]:
    values = torch.rand(len(units), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return {u.name: float(v) for u, v in zip(units, values)}


def _denoising_pair(pipe, model, x: dict, x0: torch.Tensor, noise: torch.Tensor):
    """``(inputs, target, output_channels)``: the recorded call re-noised from ``x0`` at its own timestep, the target
    of the model's training loss, and how many output channels predict it. U-Nets and PixArt: the scheduler's DDPM
    noising, target epsilon (or v); PixArt's extra learned-variance channels are left out. SD3, Flux and Sana:
    flow matching, ``x_t = (1 - s) x0 + s noise`` with ``s`` the timestep over 1000 (Flux is called with ``s``
    itself), target ``noise - x0``."""
    from diffusers import DDPMScheduler

    key = "sample" if is_unet(model) else "hidden_states"
    t = x["timestep"]
    if is_unet(model) or type(model).__name__ == "PixArtTransformer2DModel":
        scheduler = DDPMScheduler.from_config(pipe.scheduler.config)  # noising at any timestep, same betas
        t = t.long()
        noisy = scheduler.add_noise(x0, noise, t)
        if scheduler.config.get("prediction_type", "epsilon") == "v_prediction":
            target = scheduler.get_velocity(x0, noise, t)
        else:
            target = noise
        return dict(x, **{key: noisy}), target, x0.shape[1]
    s = t.float() if type(model).__name__ == "FluxTransformer2DModel" else t.float() / 1000
    s = s.reshape(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return dict(x, **{key: (1 - s) * x0 + s * noise}), noise - x0, x0.shape[1] if x0.ndim == 4 else x0.shape[-1]


def taylor_scores(pipe, data: CalibrationSet, units: Sequence[Unit], seed: int = 0) -> dict[str, float]:
    """|sum over the unit's weights of w * dL/dw|, L the training loss of the denoiser (see
    :func:`_denoising_pair`) on the calibration prompts' own samples re-noised at the recorded timesteps."""
    model = denoiser_of(pipe, "the taylor criterion")
    gen = torch.Generator().manual_seed(seed)
    params = {n: p for n, p in model.named_parameters()}
    was = {n: p.requires_grad for n, p in params.items()}
    for p in params.values():
        p.requires_grad_(True)
        p.grad = None
    key = "sample" if is_unet(model) else "hidden_states"
    try:
        for x, (start, stop) in zip(data.inputs, data.rows):
            x0 = data.final_latents[start:stop].to(device=x[key].device, dtype=x[key].dtype)
            noise = torch.randn(x0.shape, generator=gen).to(device=x0.device, dtype=x0.dtype)
            inputs, target, channels = _denoising_pair(pipe, model, x, x0, noise)
            prediction = model(**inputs, return_dict=False)[0].float()
            prediction = prediction[:, :channels] if prediction.ndim == 4 else prediction[..., :channels]
            loss = (prediction - target.float()).pow(2).mean() / len(data.inputs)
            loss.backward()
        scores = {}
        for u in units:
            module = model.get_submodule(u.name)
            scores[u.name] = float(abs(sum((p.detach() * p.grad).sum() for p in module.parameters()
                                           if p.grad is not None)))
        return scores
    finally:
        for n, p in params.items():
            p.grad = None
            p.requires_grad_(was[n])


def score_units(pipe, units: Sequence[Unit], criterion: str, data: CalibrationSet | None = None, seed: int = 0,
                progress: bool = False) -> dict[str, float]:
    """Scores (lower = safer to remove) of ``units`` under ``criterion``."""
    if criterion not in CRITERIA:
        raise DiffpruneError(f"unknown criterion '{criterion}' (choose from {', '.join(CRITERIA)})")
    if criterion == "random":
        return random_scores(units, seed)
    if criterion == "magnitude":
        return magnitude_scores(denoiser_of(pipe, "layer pruning"), units)
    if data is None:
        raise DiffpruneError(f"criterion '{criterion}' needs calibration data (record_calibration)")
    if criterion == "taylor":
        return taylor_scores(pipe, data, units, seed)
    return output_loss_scores(denoiser_of(pipe, "layer pruning"), data, units, progress)
