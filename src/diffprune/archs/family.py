"""Which Stable Diffusion family a pipeline or U-Net belongs to (SD-1.x, SD-2.x, SD-XL), or a clear refusal.

Detection reads the structure, not the name, so tiny test models, the shapes testbed and fine-tunes of
the published models are classified by what they are built like.
"""

from __future__ import annotations

import enum

from diffprune.errors import DiffpruneError

SUPPORTED_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")


class Family(str, enum.Enum):
    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"

    @property
    def label(self) -> str:
        return {"sd1": "SD-1.x", "sd2": "SD-2.x", "sdxl": "SD-XL"}[self.value]


def _unsupported(what: str) -> DiffpruneError:
    return DiffpruneError(
        f"unsupported model: {what}; diffprune supports SD-1.x, SD-2.x and SD-XL pipelines "
        "(StableDiffusionPipeline / StableDiffusionXLPipeline with a UNet2DConditionModel)"
    )


def family_of_unet_config(config) -> Family:
    """Family from a ``UNet2DConditionModel`` config (a dict or a diffusers ``FrozenDict``)."""
    if config.get("addition_embed_type") == "text_time":
        return Family.SDXL
    # SD-2.x switched the transformer in/out projections to Linear layers; SD-1.x keeps 1x1 convolutions.
    if config.get("use_linear_projection"):
        return Family.SD2
    return Family.SD1


def detect_family(obj) -> Family:
    """Family of a diffusers pipeline or a bare ``UNet2DConditionModel``; raises for anything else."""
    from diffusers import UNet2DConditionModel

    if isinstance(obj, UNet2DConditionModel):
        return family_of_unet_config(obj.config)
    cls_name = type(obj).__name__
    unet = getattr(obj, "unet", None)
    if cls_name not in SUPPORTED_PIPELINES or not isinstance(unet, UNet2DConditionModel):
        inner = f" with {type(unet).__name__}" if unet is not None else ""
        raise _unsupported(f"{cls_name}{inner}")
    family = family_of_unet_config(unet.config)
    if (cls_name == "StableDiffusionXLPipeline") != (family is Family.SDXL):
        raise _unsupported(f"{cls_name} whose U-Net is built like {family.label}")
    return family
