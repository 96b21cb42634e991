"""Calibration: input statistics of the layers to prune, gathered by running the real pipeline.

Wanda needs the squared norm of every input column, SparseGPT the Gram matrix ``X^T X`` (its Hessian). Text
encoders are calibrated on the prompts' token embeddings; denoisers (U-Nets and transformers) across the whole
sampling trajectory with classifier-free guidance, each denoising step weighted (timestep-aware): by default the
noisy early steps count more (weights falling logarithmically from ``weight_max`` to ``weight_min``). Hooks collect statistics for one
group of layers at a time, so memory stays bounded by the largest group, not the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from diffprune.calibration import (DEFAULT_BATCH_SIZE, DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_PROMPTS, DEFAULT_STEPS,
                                    calibration_generators, calibration_prompts)
from diffprune.anatomy import call_options, denoiser_of, geometry, has_unet, text_lengths, tokenizer_of
from diffprune.conditioning import encode_prompts
from diffprune.errors import DiffpruneError
from diffprune.progress import pipeline_bar_disabled
from diffprune.weights.targets import Target


@dataclass
class CalibrationConfig:
    prompts: list[str] | None = None   # None: the shapes testbed's training prompts
    num_prompts: int = DEFAULT_NUM_PROMPTS
    steps: int = DEFAULT_STEPS         # denoising steps per U-Net calibration run
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    batch_size: int = DEFAULT_BATCH_SIZE
    seed: int = 0
    timestep_weighting: str = "log_decrease"  # or "uniform"
    weight_min: float = 0.8
    weight_max: float = 1.2
    groups: int = 4                    # denoiser layers are calibrated and pruned in this many packs of blocks

    def validate(self) -> None:
        if self.timestep_weighting not in ("log_decrease", "uniform"):
            raise DiffpruneError(f"timestep_weighting must be 'log_decrease' or 'uniform', "
                                 f"got '{self.timestep_weighting}'")
        if min(self.num_prompts, self.steps, self.batch_size, self.groups) < 1:
            raise DiffpruneError("calibration needs at least one prompt, step, batch item and group")
        if not 0 < self.weight_min <= self.weight_max:
            raise DiffpruneError("calibration step weights need 0 < weight_min <= weight_max")

    def prompt_list(self) -> list[str]:
        return calibration_prompts(self.prompts, self.num_prompts)

    def step_weights(self) -> list[float]:
        """One weight per denoising step, first (noisiest) step first."""
        t = self.steps
        if self.timestep_weighting == "uniform" or t == 1:
            return [1.0] * t
        span = self.weight_max - self.weight_min
        return [self.weight_max - span * math.log1p(k) / math.log(t) for k in range(t)]


class LayerStats:
    """Weighted running sums over a layer's input rows: column sums of squares and (optionally) ``X^T X``."""

    def __init__(self, target: Target, hessian: bool):
        self.target = target
        self.with_hessian = hessian
        self.colsq: torch.Tensor | None = None  # allocated on the device of the first input
        self.gram: torch.Tensor | None = None
        self.weight = 0.0  # sum of (step weight x rows)
        self.scale = 1.0   # set by the driver before each forward

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        m = self.target.module
        if isinstance(m, nn.Conv2d):  # im2col: one row per output position, columns in weight.flatten(1) order
            x = F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride)
            return x.transpose(1, 2).reshape(-1, x.shape[1])
        return x.reshape(-1, x.shape[-1])

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        rows = self.rows(x.detach()).float()
        if self.colsq is None:
            cols = self.target.columns
            self.colsq = torch.zeros(cols, dtype=torch.float64, device=rows.device)
            if self.with_hessian:
                self.gram = torch.zeros(cols, cols, dtype=torch.float32, device=rows.device)
        self.colsq += (rows.pow(2).sum(0) * self.scale).double()
        if self.gram is not None:
            self.gram.addmm_(rows.T, rows, alpha=self.scale)
        self.weight += self.scale * rows.shape[0]

    def _check(self) -> None:
        if self.colsq is None:
            raise DiffpruneError(f"calibration never ran {self.target.name}: the calibration pass does not reach it")

    def column_norms(self) -> torch.Tensor:
        """sqrt of the weighted mean of x_j^2 per input column (Wanda's ||X_j|| up to a constant)."""
        self._check()
        return (self.colsq / max(self.weight, 1e-12)).sqrt().float()

    def hessian(self) -> torch.Tensor:
        self._check()
        return self.gram * (2.0 / max(self.weight, 1e-12))


class Collector:
    """Forward hooks that feed a group of targets' inputs into :class:`LayerStats`."""

    def __init__(self, targets: list[Target], hessian: bool):
        self.stats = {t.name: LayerStats(t, hessian) for t in targets}
        self._handles = []

    def set_scale(self, scale: float) -> None:
        for s in self.stats.values():
            s.scale = scale

    def __enter__(self) -> "Collector":
        for s in self.stats.values():
            self._handles.append(s.target.module.register_forward_hook(
                lambda _m, args, _out, s=s: s.add(args[0])))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


@torch.no_grad()
def run_text_encoder(pipe, component: str, config: CalibrationConfig) -> None:
    """Encode the calibration prompts as the pipeline does: a U-Net pipeline's encoder on ids padded to its
    length, a transformer pipeline's own ``encode_prompt`` (its lengths, attention masks and instructions; SD3's
    runs all three encoders, the hooks see only ``component``'s layers)."""
    if tokenizer_of(pipe, component) is None:
        raise DiffpruneError(f"calibrating {component} needs the pipeline's tokenizer")
    encoder = getattr(pipe, component)
    device = next(encoder.parameters()).device
    prompts = config.prompt_list()
    if not has_unet(pipe):
        for i in range(0, len(prompts), config.batch_size):
            encode_prompts(pipe, prompts[i:i + config.batch_size], device)
        return
    tok = tokenizer_of(pipe, component)
    length = text_lengths(pipe)[component]
    for i in range(0, len(prompts), config.batch_size):
        ids = tok(prompts[i:i + config.batch_size], padding="max_length", max_length=length,
                  truncation=True, return_tensors="pt").input_ids.to(device)
        encoder(ids)


@torch.no_grad()
def run_sampling(pipe, config: CalibrationConfig, collector: Collector) -> None:
    """Run the pipeline on the calibration prompts; each denoiser call's inputs get its step's weight."""
    weights = config.step_weights()
    state = {"call": 0}

    def pre_hook(_module, _args):
        collector.set_scale(weights[min(state["call"], len(weights) - 1)])
        state["call"] += 1

    handle = denoiser_of(pipe, "calibration").register_forward_pre_hook(pre_hook)
    prompts = config.prompt_list()
    size = geometry(pipe).resolution
    try:
        for i in range(0, len(prompts), config.batch_size):
            batch = prompts[i:i + config.batch_size]
            gens = calibration_generators(config.seed, i, len(batch))
            state["call"] = 0
            with pipeline_bar_disabled(pipe):
                pipe(batch, num_inference_steps=config.steps, guidance_scale=config.guidance_scale,
                     generator=gens, output_type="latent", height=size, width=size, **call_options(pipe))
    finally:
        handle.remove()
