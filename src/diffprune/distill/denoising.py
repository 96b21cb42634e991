"""How each family's denoiser is trained: its text conditioning, its noising and target, and its call.

- U-Nets (SD-1.x/2.x) and PixArt: DDPM noising on the scheduler's betas, target ε or v; PixArt's output carries
  extra learned-variance channels, which the loss leaves out;
- SD3, Flux, Sana: flow matching, ``x_s = (1 - s) x0 + s noise`` with ``s`` uniform in [0, 1), target
  ``noise - x0``; SD3 and Sana are called with the timestep ``1000 s``, Flux with ``s`` and (FLUX.1-dev) the
  guidance value, on 2x2-packed latent tokens.

Text goes through the pipeline's own ``encode_prompt`` (CLIP, T5 or Gemma, with the lengths and masks the pipeline
uses), so the student sees exactly what sampling feeds it. Latents are the VAE's, unscaled, as the latent cache
stores them; :meth:`Denoising.latents` applies the VAE's shift and scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffprune.anatomy import denoiser_of, geometry, is_unet
from diffprune.conditioning import encode_prompts
from diffprune.errors import DiffpruneError

FLUX_GUIDANCE = 3.5


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) latents as Flux's (B, H/2 * W/2, 4C) tokens of 2x2 patches (row-major patches)."""
    b, c, h, w = latents.shape
    x = latents.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`pack` for a latent grid of ``height`` x ``width``."""
    b, _, d = tokens.shape
    x = tokens.reshape(b, height // 2, width // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, height, width)


def _image_ids(h: int, w: int, device, dtype) -> torch.Tensor:
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device, dtype)


@dataclass
class Denoising:
    """The training view of one pipeline's denoiser (see the module docstring)."""

    kind: str  # "unet", "pixart", "sd3", "flux", "sana"
    vae_scale_factor: int = 8  # pixels per latent cell (PixArt-alpha's size conditioning reads the image size)

    @classmethod
    def of(cls, pipe) -> "Denoising":
        model = denoiser_of(pipe, "distillation")
        if is_unet(model):
            return cls("unet")
        kinds = {"PixArtTransformer2DModel": "pixart", "SD3Transformer2DModel": "sd3",
                 "FluxTransformer2DModel": "flux", "SanaTransformer2DModel": "sana"}
        return cls(kinds[type(model).__name__], geometry(pipe).vae_scale_factor)

    @property
    def flow(self) -> bool:
        return self.kind in ("sd3", "flux", "sana")

    def latents(self, pipe, unscaled: torch.Tensor) -> torch.Tensor:
        cfg = pipe.vae.config
        return (unscaled - float(cfg.get("shift_factor") or 0.0)) * float(cfg.scaling_factor)

    def encode(self, pipe, captions: list[str], device) -> dict[str, torch.Tensor]:
        """Batch-first conditioning tensors for ``captions`` (:func:`diffprune.conditioning.encode_prompts`)."""
        return encode_prompts(pipe, captions, device)

    def noise(self, scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, num_train_timesteps: int):
        """``(noisy, timestep input, target)`` for clean latents ``x0`` at integer timesteps ``t``."""
        if not self.flow:
            noisy = scheduler.add_noise(x0, noise, t)
            v = scheduler.config.get("prediction_type", "epsilon") == "v_prediction"
            return noisy, t, scheduler.get_velocity(x0, noise, t) if v else noise
        s = (t.float() / num_train_timesteps).reshape(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
        noisy, target = (1 - s) * x0 + s * noise, noise - x0
        timestep = s.flatten() if self.kind == "flux" else s.flatten() * 1000
        return noisy, timestep, target

    def forward(self, model, noisy: torch.Tensor, timestep: torch.Tensor, cond: dict) -> torch.Tensor:
        """The prediction, shaped like the target (Flux: unpacked back to the latent grid)."""
        dtype = next(model.parameters()).dtype
        cond = {k: v.to(dtype) if v.is_floating_point() else v for k, v in cond.items()}
        if self.kind == "unet":
            return model(noisy.to(dtype), timestep, cond["encoder_hidden_states"]).sample.float()
        if self.kind == "flux":
            h, w = noisy.shape[-2:]
            extra = {}
            if getattr(model, "module", model).config.guidance_embeds:  # (a DDP wrapper holds the model)
                extra["guidance"] = torch.full((noisy.shape[0],), FLUX_GUIDANCE, device=noisy.device, dtype=dtype)
            out = model(hidden_states=pack(noisy).to(dtype), timestep=timestep.to(dtype),
                        img_ids=_image_ids(h, w, noisy.device, dtype),
                        txt_ids=torch.zeros(cond["encoder_hidden_states"].shape[1], 3, device=noisy.device,
                                            dtype=dtype), **cond, **extra).sample
            return unpack(out.float(), h, w)
        kwargs = dict(cond)
        if self.kind == "pixart":
            kwargs["added_cond_kwargs"] = {"resolution": None, "aspect_ratio": None}
            if getattr(model, "module", model).use_additional_conditions:  # PixArt-alpha at 1024: size conditioning
                h, w = (n * self.vae_scale_factor for n in noisy.shape[-2:])
                batch = noisy.shape[0]
                kwargs["added_cond_kwargs"] = {
                    "resolution": torch.tensor([[h, w]], device=noisy.device, dtype=dtype).repeat(batch, 1),
                    "aspect_ratio": torch.tensor([[h / w]], device=noisy.device, dtype=dtype).repeat(batch, 1)}
        out = model(hidden_states=noisy.to(dtype), timestep=timestep, **kwargs).sample.float()
        return out[:, :noisy.shape[1]]  # PixArt: the learned-variance channels are not trained on


def check_trainable(pipe) -> None:
    """What distillation supports, checked before anything changes."""
    model = denoiser_of(pipe, "distillation")
    if is_unet(model) and model.config.get("addition_embed_type") is not None:
        raise DiffpruneError("distilling SD-XL U-Nets (pooled text embeddings, time ids) is not supported yet; "
                             "SD-1.x/2.x-style pipelines and the PixArt, SD3, Flux and Sana transformers are")
