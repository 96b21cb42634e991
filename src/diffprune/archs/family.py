"""Which family a pipeline or denoiser belongs to, or a clear refusal.

U-Net families: SD-1.x, SD-2.x, SD-XL. Diffusion-transformer (DiT) families: PixArt (alpha and Sigma), SD3 (3 and
3.5), Flux, Sana. Detection reads the structure, not the name, so tiny test models, the shapes testbeds and
fine-tunes of the published models are classified by what they are built like.
"""

from __future__ import annotations

import enum

from diffprune.errors import DiffpruneError

#: pipeline class -> the denoiser attribute and class it must hold
_PIPELINES = {
    "StableDiffusionPipeline": ("unet", "UNet2DConditionModel"),
    "StableDiffusionXLPipeline": ("unet", "UNet2DConditionModel"),
    "PixArtSigmaPipeline": ("transformer", "PixArtTransformer2DModel"),
    "PixArtAlphaPipeline": ("transformer", "PixArtTransformer2DModel"),
    "StableDiffusion3Pipeline": ("transformer", "SD3Transformer2DModel"),
    "FluxPipeline": ("transformer", "FluxTransformer2DModel"),
    "SanaPipeline": ("transformer", "SanaTransformer2DModel"),
}
SUPPORTED_PIPELINES = tuple(_PIPELINES)
#: DiT denoiser class -> family value
_TRANSFORMERS = {"PixArtTransformer2DModel": "pixart", "SD3Transformer2DModel": "sd3",
                 "FluxTransformer2DModel": "flux", "SanaTransformer2DModel": "sana"}


class Family(str, enum.Enum):
    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"
    PIXART = "pixart"
    SD3 = "sd3"
    FLUX = "flux"
    SANA = "sana"

    @property
    def label(self) -> str:
        return {"sd1": "SD-1.x", "sd2": "SD-2.x", "sdxl": "SD-XL", "pixart": "PixArt", "sd3": "SD3",
                "flux": "Flux", "sana": "Sana"}[self.value]

    @property
    def is_dit(self) -> bool:
        """A diffusion-transformer family (its denoiser is ``pipe.transformer``, not ``pipe.unet``)."""
        return self.value in _TRANSFORMERS.values()


def _unsupported(what: str) -> DiffpruneError:
    return DiffpruneError(
        f"unsupported model: {what}; diffprune supports SD-1.x, SD-2.x and SD-XL (U-Net) and PixArt, SD3/3.5, Flux "
        f"and Sana (transformer) pipelines: {', '.join(SUPPORTED_PIPELINES)}"
    )


def family_of_unet_config(config) -> Family:
    """Family from a ``UNet2DConditionModel`` config (a dict or a diffusers ``FrozenDict``)."""
    if config.get("addition_embed_type") == "text_time":
        return Family.SDXL
    # SD-2.x switched the transformer in/out projections to Linear layers; SD-1.x keeps 1x1 convolutions.
    if config.get("use_linear_projection"):
        return Family.SD2
    return Family.SD1


def _denoiser_family(model) -> Family | None:
    from diffusers import UNet2DConditionModel

    if isinstance(model, UNet2DConditionModel):
        return family_of_unet_config(model.config)
    value = _TRANSFORMERS.get(type(model).__name__)
    return Family(value) if value is not None else None


def detect_family(obj) -> Family:
    """Family of a supported diffusers pipeline or a bare denoiser (U-Net or DiT); raises for anything else."""
    family = _denoiser_family(obj)
    if family is not None:
        return family
    cls_name = type(obj).__name__
    expected = _PIPELINES.get(cls_name)
    denoiser = getattr(obj, expected[0] if expected else "unet", None)
    if denoiser is None and expected is None:
        denoiser = getattr(obj, "transformer", None)
    inner = f" with {type(denoiser).__name__}" if denoiser is not None else ""
    if expected is None or type(denoiser).__name__ != expected[1]:
        raise _unsupported(f"{cls_name}{inner}")
    family = _denoiser_family(denoiser)
    if expected[0] == "unet" and (cls_name == "StableDiffusionXLPipeline") != (family is Family.SDXL):
        raise _unsupported(f"{cls_name} whose U-Net is built like {family.label}")
    return family
