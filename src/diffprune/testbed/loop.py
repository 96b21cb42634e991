"""The pieces of a diffusion training loop shared by the testbeds' trainers (``train`` and ``train_dit``): the
learning-rate shape, latent caching, parameter groups, the noise schedule, timestep draws with the high-noise share
and the layout curriculum, one optimizer step with EMA, and the checkpoint and loss bookkeeping."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .checkpoint import Checkpointer, capture
from .data import to_float


@dataclass
class TimestepDraws:
    """How a trainer draws its timesteps (read by :func:`draw_batch`); the testbeds' configs extend it."""

    # share of each batch whose timesteps are drawn from [high_noise_from, 1000) instead of [0, 1000): position,
    # colour and shape of flat objects are decided at high noise, where uniform sampling spends few samples
    high_noise_share: float = 0.5
    high_noise_from: int = 600
    # curriculum: the first curriculum_steps steps draw every timestep from [curriculum_from, 1000), where the
    # target is the layout the caption asks for (at zero terminal SNR the v-target there is the clean image),
    # so the model learns where things go before it learns to draw them well
    curriculum_steps: int = 800
    curriculum_from: int = 900


def lr_lambda(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))  # cosine down to 10 %
    return factor


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    means, stds = [], []
    for i in range(0, len(images), batch):
        dist = vae.encode(to_float(images[i:i + batch]) * 2 - 1).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def param_groups(unet, text_encoder, matrices_only: bool, weight_decay: float = 1e-2) -> list[dict]:
    named = list(unet.named_parameters()) + list(text_encoder.named_parameters())
    if not matrices_only:
        return [{"params": [p for _, p in named], "weight_decay": weight_decay}]
    decayed = [p for n, p in named if p.dim() >= 2 and "embed" not in n]
    kept = [p for n, p in named if not (p.dim() >= 2 and "embed" not in n)]
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": kept, "weight_decay": 0.0}]


def noise_schedule(zero_terminal_snr: bool = True):
    """The training noise schedule: SD's scaled-linear betas, rescaled to zero terminal SNR with v-prediction
    (or plain, with epsilon)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         num_train_timesteps=1000, clip_sample=False, steps_offset=1,
                         prediction_type="v_prediction" if zero_terminal_snr else "epsilon",
                         **({"rescale_betas_zero_snr": True} if zero_terminal_snr else {}))


def timesteps_for(step: int, n: int, gen: torch.Generator, *, high_share: float, high_from: int,
                  curriculum_steps: int, curriculum_from: int) -> torch.Tensor:
    """The ``n`` training timesteps of ``step``: uniform, a ``high_share`` of them from ``[high_from, 1000)``, and
    all from ``[curriculum_from, 1000)`` during the first ``curriculum_steps`` steps (draws in this order)."""
    t = torch.randint(0, 1000, (n,), generator=gen)
    if high_share > 0:
        high = torch.rand(n, generator=gen) < high_share
        t = torch.where(high, torch.randint(high_from, 1000, (n,), generator=gen), t)
    if step < curriculum_steps:
        t = torch.randint(curriculum_from, 1000, (n,), generator=gen)
    return t


def draw_batch(idx, means, stds, scaling: float, gen: torch.Generator, step: int, cfg, device):
    """Clean latents, noise and timesteps of one diffusion-stage batch (``cfg``: the timestep options). The draws
    happen on the CPU generator, then move: the same data on every device."""
    z = ((means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * scaling).to(device)
    noise = torch.randn(z.shape, generator=gen).to(device)
    t = timesteps_for(step, len(idx), gen, high_share=cfg.high_noise_share, high_from=cfg.high_noise_from,
                      curriculum_steps=cfg.curriculum_steps, curriculum_from=cfg.curriculum_from).to(device)
    return z, noise, t


def training_step(loss, params, opt, sched, ema, losses: list[float]) -> None:
    """Backward, clip to norm 1, optimizer and schedule step, EMA update; the loss is appended to ``losses``."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    ema.step(params)
    losses.append(loss.item())


def after_diffusion_step(bar, step: int, losses: list[float], objects: dict, ckpt: Checkpointer, log: dict) -> None:
    if step % 50 == 0:
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
    ckpt.after_step("diffusion", step + 1, lambda: capture(step + 1, losses, objects), log)


def log_diffusion_losses(losses: list[float], log: dict) -> None:
    log["diffusion_loss_last200"] = sum(losses[-200:]) / len(losses[-200:])
    log["diffusion_loss_curve"] = [round(sum(losses[i:i + 100]) / len(losses[i:i + 100]), 5)
                                   for i in range(0, len(losses), 100)]
