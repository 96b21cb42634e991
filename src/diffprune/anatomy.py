"""What a diffprune target is, and its geometry — answered in one place for every module.

A *target* is a diffusers pipeline (anything that is not an ``nn.Module`` and holds its components as
attributes), a bare ``UNet2DConditionModel``, or another bare ``nn.Module`` (a text encoder, a VAE).
Its *geometry* is what sizes the U-Net's inputs: the VAE's down-scaling factor, the tokenizer's text length
and the U-Net's latent side. A bare U-Net has no VAE or tokenizer; every Stable Diffusion family downsamples
by 8 and reads 77 CLIP tokens, so those are its defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from diffprune.errors import DiffpruneError

DEFAULT_VAE_SCALE_FACTOR = 8
DEFAULT_TEXT_LENGTH = 77

#: the components a pipeline may hold as ``nn.Module`` attributes, in the order reports list them
MODEL_COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "vae")


def is_module(obj) -> bool:
    """A bare ``nn.Module`` (a single component), not a pipeline."""
    return isinstance(obj, nn.Module)


def is_unet(obj) -> bool:
    """A ``UNet2DConditionModel`` (the denoiser of SD-1.x, SD-2.x and SD-XL)."""
    from diffusers import UNet2DConditionModel

    return isinstance(obj, UNet2DConditionModel)


def is_pipeline(obj) -> bool:
    """A whole pipeline: not a module, and holding at least one model component."""
    return not is_module(obj) and any(isinstance(getattr(obj, n, None), nn.Module) for n in MODEL_COMPONENTS)


def has_unet(obj) -> bool:
    """A pipeline whose denoiser is a ``UNet2DConditionModel``."""
    return is_pipeline(obj) and is_unet(getattr(obj, "unet", None))


def unet_of(obj, purpose: str = "this operation"):
    """The ``UNet2DConditionModel`` of a pipeline, or ``obj`` itself; a clear error for anything else."""
    unet = obj if is_unet(obj) else (getattr(obj, "unet", None) if not is_module(obj) else None)
    if not is_unet(unet):
        raise DiffpruneError(f"{purpose} needs a UNet2DConditionModel or a pipeline with one, "
                             f"got {describe_kind(obj)}")
    return unet


def model_components(obj) -> dict[str, nn.Module]:
    """The ``nn.Module`` components of a pipeline, in a fixed order (the known ones first, then any other the
    pipeline registers); a bare module is one component, named ``unet`` for a ``UNet2DConditionModel`` (so its
    numbers line up with a pipeline's) and ``model`` otherwise."""
    if is_module(obj):
        return {"unet" if is_unet(obj) else "model": obj}
    known = {name: getattr(obj, name, None) for name in MODEL_COMPONENTS}
    extra = {k: v for k, v in (getattr(obj, "components", None) or {}).items()
             if isinstance(v, nn.Module) and k not in known}
    return {k: v for k, v in {**known, **extra}.items() if isinstance(v, nn.Module)}


def describe_kind(obj) -> str:
    """A few words naming what ``obj`` is, for error messages."""
    if is_unet(obj):
        return "a bare UNet2DConditionModel"
    if is_module(obj):
        return f"a bare {type(obj).__name__}"
    if is_pipeline(obj):
        denoiser = getattr(obj, "unet", None) or getattr(obj, "transformer", None)
        inner = f" with a {type(denoiser).__name__}" if denoiser is not None else ""
        return f"a {type(obj).__name__}{inner}"
    return f"a {type(obj).__name__}"


@dataclass(frozen=True)
class Geometry:
    """Sizes of a pipeline's U-Net inputs: ``resolution = latent_side * vae_scale_factor`` pixels."""

    vae_scale_factor: int
    text_length: int
    latent_side: int

    @property
    def resolution(self) -> int:
        return self.latent_side * self.vae_scale_factor


def geometry(obj, *, vae_scale_factor: int | None = None, text_length: int | None = None) -> Geometry:
    """The geometry of a pipeline (its VAE factor, its tokenizer's length, its U-Net's sample size) or of a
    bare U-Net (the Stable Diffusion defaults); explicit arguments win."""
    unet = unet_of(obj, "geometry")
    if vae_scale_factor is None:
        vae_scale_factor = int(getattr(obj, "vae_scale_factor", None) or DEFAULT_VAE_SCALE_FACTOR)
    if text_length is None:
        tokenizer = None if is_module(obj) else getattr(obj, "tokenizer", None)
        text_length = int(getattr(tokenizer, "model_max_length", None) or DEFAULT_TEXT_LENGTH)
    return Geometry(vae_scale_factor=int(vae_scale_factor), text_length=int(text_length),
                    latent_side=int(unet.config.sample_size))
