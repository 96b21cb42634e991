"""What a diffprune target is, and its geometry — answered in one place for every module.

A *target* is a diffusers pipeline (anything that is not an ``nn.Module`` and holds its components as
attributes), a bare denoiser (a ``UNet2DConditionModel`` or a diffusion transformer), or another bare ``nn.Module``
(a text encoder, a VAE).
Its *geometry* is what sizes the U-Net's inputs: the VAE's down-scaling factor, the tokenizer's text length
and the U-Net's latent side. A bare U-Net has no VAE or tokenizer; every Stable Diffusion family downsamples
by 8 and reads 77 CLIP tokens, so those are its defaults.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from torch import nn

from diffprune.errors import DiffpruneError

DEFAULT_VAE_SCALE_FACTOR = 8
DEFAULT_TEXT_LENGTH = 77

#: the components a pipeline may hold as ``nn.Module`` attributes, in the order reports list them
MODEL_COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "vae")
#: the diffusion-transformer (DiT) denoisers diffprune knows, by diffusers class name
TRANSFORMER_CLASSES = ("PixArtTransformer2DModel", "SD3Transformer2DModel", "FluxTransformer2DModel",
                       "SanaTransformer2DModel")


def is_module(obj) -> bool:
    """A bare ``nn.Module`` (a single component), not a pipeline."""
    return isinstance(obj, nn.Module)


def is_unet(obj) -> bool:
    """A ``UNet2DConditionModel`` (the denoiser of SD-1.x, SD-2.x and SD-XL)."""
    from diffusers import UNet2DConditionModel

    return isinstance(obj, UNet2DConditionModel)


def is_transformer(obj) -> bool:
    """A diffusion-transformer denoiser diffprune knows (PixArt, SD3, Flux, Sana)."""
    return isinstance(obj, nn.Module) and type(obj).__name__ in TRANSFORMER_CLASSES


def is_denoiser(obj) -> bool:
    """A bare U-Net or diffusion transformer."""
    return is_unet(obj) or is_transformer(obj)


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


def has_transformer(obj) -> bool:
    """A pipeline whose denoiser is a diffusion transformer diffprune knows."""
    return is_pipeline(obj) and is_transformer(getattr(obj, "transformer", None))


def denoiser_of(obj, purpose: str = "this operation"):
    """The denoiser (U-Net or diffusion transformer) of a pipeline, or ``obj`` itself; a clear error otherwise."""
    if is_denoiser(obj):
        return obj
    if not is_module(obj):
        for name in ("unet", "transformer"):
            if is_denoiser(getattr(obj, name, None)):
                return getattr(obj, name)
    raise DiffpruneError(f"{purpose} needs a U-Net or diffusion transformer, or a pipeline with one, "
                         f"got {describe_kind(obj)}")


def denoiser_name(obj) -> str:
    """``"unet"`` or ``"transformer"``: the attribute that holds the denoiser of a pipeline (or a bare one)."""
    return "transformer" if is_transformer(denoiser_of(obj)) else "unet"


def model_components(obj) -> dict[str, nn.Module]:
    """The ``nn.Module`` components of a pipeline, in a fixed order (the known ones first, then any other the
    pipeline registers); a bare module is one component, named ``unet`` for a ``UNet2DConditionModel`` (so its
    numbers line up with a pipeline's), ``transformer`` for a diffusion transformer and ``model`` otherwise."""
    if is_module(obj):
        return {"unet" if is_unet(obj) else "transformer" if is_transformer(obj) else "model": obj}
    known = {name: getattr(obj, name, None) for name in MODEL_COMPONENTS}
    extra = {k: v for k, v in (getattr(obj, "components", None) or {}).items()
             if isinstance(v, nn.Module) and k not in known}
    return {k: v for k, v in {**known, **extra}.items() if isinstance(v, nn.Module)}


def sparse_kernel_weights(obj) -> list[str]:
    """Parameters of a pipeline's models (or of one module) held as GPU semi-structured sparse tensors (put there
    by ``diffprune.weights.semistructured.apply``): they cannot be saved or counted as dense tensors."""
    import torch

    kind = getattr(torch.sparse, "SparseSemiStructuredTensor", None)
    if kind is None:
        return []
    return [f"{c}.{n}" for c, m in model_components(obj).items() for n, p in m.named_parameters()
            if isinstance(p.data, kind) or isinstance(p, kind)]


def describe_kind(obj) -> str:
    """A few words naming what ``obj`` is, for error messages."""
    if is_denoiser(obj):
        return f"a bare {type(obj).__name__}"
    if is_module(obj):
        return f"a bare {type(obj).__name__}"
    if is_pipeline(obj):
        denoiser = getattr(obj, "unet", None) or getattr(obj, "transformer", None)
        inner = f" with a {type(denoiser).__name__}" if denoiser is not None else ""
        return f"a {type(obj).__name__}{inner}"
    return f"a {type(obj).__name__}"


#: a bare diffusion transformer's defaults (its pipeline's): text tokens it reads, VAE factor, latent side
DIT_TEXT_LENGTH = {"PixArtTransformer2DModel": 300, "SD3Transformer2DModel": 77 + 256,
                   "FluxTransformer2DModel": 512, "SanaTransformer2DModel": 300}
DIT_VAE_SCALE_FACTOR = {"SanaTransformer2DModel": 32}
DEFAULT_LATENT_SIDE = 128  # Flux's config has no sample size; its published resolution is 1024 = 128 x 8


@dataclass(frozen=True)
class Geometry:
    """Sizes of a pipeline's denoiser inputs: ``resolution = latent_side * vae_scale_factor`` pixels;
    ``text_length`` text tokens (for SD3: CLIP's 77 and T5's 256, concatenated)."""

    vae_scale_factor: int
    text_length: int
    latent_side: int

    @property
    def resolution(self) -> int:
        return self.latent_side * self.vae_scale_factor


def _pipeline_text_length(obj, model) -> int | None:
    """Text tokens the pipeline's denoiser reads, from its tokenizers' lengths (U-Nets) or the pipeline's
    default ``max_sequence_length`` (DiTs)."""
    if is_unet(model):
        tokenizer = getattr(obj, "tokenizer", None)
        return getattr(tokenizer, "model_max_length", None)
    name = type(model).__name__
    default = inspect.signature(type(obj).__call__).parameters.get("max_sequence_length")
    length = default.default if default is not None and isinstance(default.default, int) else None
    if length is None:
        return None
    return 77 + length if name == "SD3Transformer2DModel" else length


def geometry(obj, *, vae_scale_factor: int | None = None, text_length: int | None = None) -> Geometry:
    """The geometry of a pipeline (its VAE factor, its text length, its denoiser's sample size) or of a
    bare denoiser (the defaults of the pipelines it ships in); explicit arguments win."""
    model = denoiser_of(obj, "geometry")
    name = type(model).__name__
    if vae_scale_factor is None:
        vae_scale_factor = int(getattr(obj, "vae_scale_factor", None)
                               or DIT_VAE_SCALE_FACTOR.get(name, DEFAULT_VAE_SCALE_FACTOR))
    if text_length is None:
        found = None if is_module(obj) else _pipeline_text_length(obj, model)
        text_length = int(found or DIT_TEXT_LENGTH.get(name, DEFAULT_TEXT_LENGTH))
    side = model.config.get("sample_size") or DEFAULT_LATENT_SIDE
    return Geometry(vae_scale_factor=int(vae_scale_factor), text_length=int(text_length), latent_side=int(side))


#: a diffusion transformer's block lists -> the config key holding each one's depth
DIT_BLOCK_LISTS = {"transformer_blocks": "num_layers", "single_transformer_blocks": "num_single_layers"}


def dit_blocks(model) -> list[tuple[str, nn.Module, bool, str]]:
    """``(name, block, removable, reason)`` for every block of ``model``, in forward order."""
    out = []
    for list_name in DIT_BLOCK_LISTS:
        blocks = getattr(model, list_name, None)
        if blocks is None:
            continue
        for i, block in enumerate(blocks):
            removable, reason = True, ""
            if getattr(block, "context_pre_only", False):
                removable, reason = False, "SD3's last joint block only reads the text stream; no other block can end it"
            out.append((f"{list_name}.{i}", block, removable, reason))
    return out


def tokenizer_of(pipe, component: str):
    """The tokenizer that feeds text encoder ``component`` (``text_encoder_2`` -> ``tokenizer_2``), or None."""
    return getattr(pipe, component.replace("text_encoder", "tokenizer"), None)


def text_lengths(pipe) -> dict[str, int]:
    """Tokens each text encoder of a pipeline reads, as its pipeline pads them: CLIP its 77 (its tokenizer's
    length), T5 and Gemma the pipeline's default ``max_sequence_length`` (for SD3 the T5 part of the sequence)."""
    model, out = denoiser_of(pipe, "text lengths"), {}
    total = geometry(pipe).text_length
    for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        encoder = getattr(pipe, name, None)
        if encoder is None:
            continue
        tokenizer = tokenizer_of(pipe, name)
        if is_unet(model) or getattr(encoder.config, "model_type", "") in ("clip_text_model", "clip"):
            out[name] = int(getattr(tokenizer, "model_max_length", None) or total)
            out[name] = min(out[name], int(getattr(encoder.config, "max_position_embeddings", out[name])))
        else:
            out[name] = total - 77 if type(model).__name__ == "SD3Transformer2DModel" else total
    return out


def call_default(pipe, name: str):
    """The default of argument ``name`` of the pipeline's ``__call__`` (None if it has no such argument)."""
    parameter = inspect.signature(type(pipe).__call__).parameters.get(name)
    return None if parameter is None else parameter.default


def tokens_read(pipe) -> dict[str, int]:
    """Tokens each text encoder reads for one prompt: :func:`text_lengths`, except that Sana's pipeline puts its
    default instruction text (``complex_human_instruction``) before the prompt and Gemma reads both (the
    transformer still gets ``max_sequence_length`` of them)."""
    out = text_lengths(pipe)
    if type(denoiser_of(pipe, "text lengths")).__name__ == "SanaTransformer2DModel" and "text_encoder" in out:
        instruction = call_default(pipe, "complex_human_instruction")
        if instruction:
            out["text_encoder"] += len(pipe.tokenizer.encode("\n".join(instruction))) - 2
    return out


def call_options(pipe) -> dict:
    """Keyword arguments every diffprune call of ``pipe`` adds: PixArt and Sana would otherwise snap the size to
    their aspect-ratio bins (the size asked for is drawn exactly), and clean captions with optional libraries
    (bs4, ftfy; the prompts are used as given)."""
    params = inspect.signature(type(pipe).__call__).parameters
    options = {"use_resolution_binning": False} if "use_resolution_binning" in params else {}
    if "clean_caption" in params:
        options["clean_caption"] = False
    return options
