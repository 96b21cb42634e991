"""Example inputs of the right shapes for a denoiser (U-Net or diffusion transformer), text encoder or VAE decoder
call at a given resolution.

Shared by the FLOPs counter and the latency helpers so both measure exactly the same call.
"""

from __future__ import annotations

import torch
from torch import nn

from diffprune.anatomy import is_unet
from diffprune.errors import DiffpruneError

DEFAULT_TEXT_LENGTH = 77


def _fill(shape, *, device, dtype, generator):
    if torch.device(device).type == "meta":
        return torch.empty(shape, device="meta", dtype=dtype)
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)


def latent_size(resolution: int, vae_scale_factor: int) -> int:
    if resolution <= 0 or resolution % vae_scale_factor:
        raise DiffpruneError(
            f"resolution {resolution} must be a positive multiple of the VAE's scale factor {vae_scale_factor}"
        )
    return resolution // vae_scale_factor


def unet_inputs(unet: nn.Module, *, resolution: int, batch: int = 1, vae_scale_factor: int = 8,
                text_length: int = DEFAULT_TEXT_LENGTH, seed: int = 0, device=None, dtype=None) -> dict:
    """Keyword arguments of one ``UNet2DConditionModel`` call (SD-XL's extra conditioning included)."""
    if batch < 1:
        raise DiffpruneError(f"batch must be at least 1, got {batch}")
    param = next(unet.parameters())
    device = param.device if device is None else device
    dtype = param.dtype if dtype is None else dtype
    cfg = unet.config
    side = latent_size(resolution, vae_scale_factor)
    gen = torch.Generator().manual_seed(seed)
    kwargs = {
        "sample": _fill((batch, cfg.in_channels, side, side), device=device, dtype=dtype, generator=gen),
        "timestep": torch.full((batch,), 500, device=device, dtype=torch.long),
        "encoder_hidden_states": _fill((batch, text_length, cfg.cross_attention_dim), device=device,
                                       dtype=dtype, generator=gen),
        "return_dict": False,
    }
    if cfg.get("addition_embed_type") == "text_time":
        n_time_ids = 6  # original size (2), crop top-left (2), target size (2)
        pooled = cfg.projection_class_embeddings_input_dim - n_time_ids * cfg.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": _fill((batch, pooled), device=device, dtype=dtype, generator=gen),
            "time_ids": _fill((batch, n_time_ids), device=device, dtype=dtype, generator=gen),
        }
    return kwargs


def transformer_inputs(model: nn.Module, *, resolution: int, batch: int = 1, vae_scale_factor: int = 8,
                       text_length: int = 300, seed: int = 0, device=None, dtype=None) -> dict:
    """Keyword arguments of one diffusion-transformer call, shaped as its pipeline calls it: PixArt and Sana read
    latents and caption features; SD3 latents, the CLIP+T5 sequence and the pooled CLIP vector; Flux 2x2-packed
    latent tokens with their position ids, T5 features, the pooled CLIP vector and (FLUX.1-dev) the guidance scale."""
    if batch < 1:
        raise DiffpruneError(f"batch must be at least 1, got {batch}")
    param = next(model.parameters())
    device = param.device if device is None else device
    dtype = param.dtype if dtype is None else dtype
    cfg, name = model.config, type(model).__name__
    side = latent_size(resolution, vae_scale_factor)
    gen = torch.Generator().manual_seed(seed)

    def fill(*shape):
        return _fill(shape, device=device, dtype=dtype, generator=gen)

    def timestep(value):
        return torch.full((batch,), value, device=device, dtype=dtype)

    if name == "FluxTransformer2DModel":
        if side % 2:
            raise DiffpruneError(f"Flux packs 2x2 latent patches: the latent side {side} must be even")
        tokens = (side // 2) ** 2
        kwargs = {"hidden_states": fill(batch, tokens, cfg.in_channels),
                  "encoder_hidden_states": fill(batch, text_length, cfg.joint_attention_dim),
                  "pooled_projections": fill(batch, cfg.pooled_projection_dim), "timestep": timestep(0.5),
                  "img_ids": torch.zeros((tokens, 3), device=device, dtype=dtype),
                  "txt_ids": torch.zeros((text_length, 3), device=device, dtype=dtype), "return_dict": False}
        if cfg.guidance_embeds:
            kwargs["guidance"] = timestep(3.5)
        return kwargs
    kwargs = {"hidden_states": fill(batch, cfg.in_channels, side, side), "return_dict": False}
    if name == "SD3Transformer2DModel":
        kwargs.update(encoder_hidden_states=fill(batch, text_length, cfg.joint_attention_dim),
                      pooled_projections=fill(batch, cfg.pooled_projection_dim), timestep=timestep(500.0))
    elif name == "PixArtTransformer2DModel":
        kwargs.update(encoder_hidden_states=fill(batch, text_length, cfg.caption_channels),
                      timestep=torch.full((batch,), 500, device=device, dtype=torch.long),
                      added_cond_kwargs={"resolution": None, "aspect_ratio": None})
        if model.use_additional_conditions:
            kwargs["added_cond_kwargs"] = {"resolution": fill(batch, 2), "aspect_ratio": fill(batch, 1)}
    elif name == "SanaTransformer2DModel":
        kwargs.update(encoder_hidden_states=fill(batch, text_length, cfg.caption_channels),
                      timestep=timestep(500.0))
    else:
        raise DiffpruneError(f"no example inputs for a {name}")
    return kwargs


def denoiser_inputs(model: nn.Module, **kwargs) -> dict:
    """:func:`unet_inputs` or :func:`transformer_inputs`, whichever fits ``model``."""
    return unet_inputs(model, **kwargs) if is_unet(model) else transformer_inputs(model, **kwargs)


def text_encoder_inputs(text_encoder: nn.Module, *, batch: int = 1, text_length: int = DEFAULT_TEXT_LENGTH,
                        device=None) -> dict:
    device = next(text_encoder.parameters()).device if device is None else device
    return {"input_ids": torch.zeros((batch, text_length), dtype=torch.long, device=device)}


def vae_decode_inputs(vae: nn.Module, *, resolution: int, batch: int = 1, vae_scale_factor: int = 8,
                      seed: int = 0, device=None, dtype=None) -> dict:
    param = next(vae.parameters())
    device = param.device if device is None else device
    dtype = param.dtype if dtype is None else dtype
    side = latent_size(resolution, vae_scale_factor)
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, vae.config.latent_channels, side, side)
    return {"z": _fill(shape, device=device, dtype=dtype, generator=gen), "return_dict": False}
