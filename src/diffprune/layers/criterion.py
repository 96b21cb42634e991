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

from diffprune.anatomy import unet_of
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


def record_calibration(pipe, config: LayerCalibrationConfig | None = None, progress: bool = False) -> CalibrationSet:
    """Sample with the unpruned pipeline and keep the U-Net inputs of ``config.timesteps`` steps."""
    config = config or LayerCalibrationConfig()
    prompts = _prompts(config)
    keep = {round(i * (config.steps - 1) / max(1, config.timesteps - 1)) for i in range(config.timesteps)}
    unet = pipe.unet
    inputs, finals, rows = [], [], []
    for start in tqdm(range(0, len(prompts), config.batch_size), desc="calibration", disable=not progress):
        batch = prompts[start:start + config.batch_size]
        calls: list[dict] = []

        def hook(module, args, kwargs):
            sample = args[0] if args else kwargs["sample"]
            t = args[1] if len(args) > 1 else kwargs["timestep"]
            if len(calls) in keep:
                record = {"sample": sample, "timestep": t,
                          "encoder_hidden_states": kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)}
                if kwargs.get("added_cond_kwargs"):
                    record["added_cond_kwargs"] = kwargs["added_cond_kwargs"]
                if kwargs.get("timestep_cond") is not None:
                    record["timestep_cond"] = kwargs["timestep_cond"]
                entry = {k: _cond_half(v, len(batch)) for k, v in record.items()}
                if isinstance(t, torch.Tensor) and t.ndim == 0 or not isinstance(t, torch.Tensor):
                    entry["timestep"] = torch.as_tensor(t).expand(len(batch)).clone()
                calls.append(entry)
            else:
                calls.append(None)

        handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            generators = calibration_generators(config.seed, start, len(batch))
            with torch.no_grad(), pipeline_bar_disabled(pipe):
                out = pipe(batch, num_inference_steps=config.steps, guidance_scale=config.guidance_scale,
                           generator=generators, output_type="latent")
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
    """Mean squared difference between the U-Net's output with ``removed`` gone and the unpruned output."""
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


def taylor_scores(pipe, data: CalibrationSet, units: Sequence[Unit], seed: int = 0) -> dict[str, float]:
    """|sum over the unit's weights of w * dL/dw|, L the denoising loss on the calibration prompts' own samples
    re-noised at the recorded timesteps (the prediction type's target, fixed noise)."""
    from diffusers import DDPMScheduler

    unet = pipe.unet
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)  # noising at any timestep, same betas
    gen = torch.Generator().manual_seed(seed)
    params = {n: p for n, p in unet.named_parameters()}
    was = {n: p.requires_grad for n, p in params.items()}
    for p in params.values():
        p.requires_grad_(True)
        p.grad = None
    try:
        for x, (start, stop) in zip(data.inputs, data.rows):
            x0 = data.final_latents[start:stop].to(device=x["sample"].device, dtype=x["sample"].dtype)
            t = x["timestep"].long()
            noise = torch.randn(x0.shape, generator=gen).to(device=x0.device, dtype=x0.dtype)
            noisy = scheduler.add_noise(x0, noise, t)
            if scheduler.config.get("prediction_type", "epsilon") == "v_prediction":
                target = scheduler.get_velocity(x0, noise, t)
            else:
                target = noise
            prediction = unet(**dict(x, sample=noisy), return_dict=False)[0].float()
            loss = (prediction - target.float()).pow(2).mean() / len(data.inputs)
            loss.backward()
        scores = {}
        for u in units:
            module = unet.get_submodule(u.name)
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
        return magnitude_scores(unet_of(pipe, "layer pruning"), units)
    if data is None:
        raise DiffpruneError(f"criterion '{criterion}' needs calibration data (record_calibration)")
    if criterion == "taylor":
        return taylor_scores(pipe, data, units, seed)
    return output_loss_scores(unet_of(pipe, "layer pruning"), data, units, progress)
