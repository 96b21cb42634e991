"""The removable units of a diffusers ``UNet2DConditionModel``: ResNet blocks, whole ``Transformer2DModel``s or
single transformer layers (``BasicTransformerBlock``), with their parameters, FLOPs and how each can go. A diffusion
transformer's units are its blocks (:mod:`diffprune.layers.dit`); there both granularities name the same units.

- a transformer (block or layer) always can: each is a residual update, so removing it leaves the identity;
- a down or mid ResNet can when it keeps its channel count (one that changes channels cannot);
- an up-block ResNet goes together with its skip connection (BK-SDM's rule): its input is the concatenation
  of the main path and a skip, and removing it passes the main path on, which needs the main path to already
  have the ResNet's output width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffprune.anatomy import dit_blocks, geometry, is_transformer
from diffprune.errors import DiffpruneError

from .dit import block_kind
from .standins import is_skipped

GRANULARITIES = ("block", "layer")


@dataclass(frozen=True)
class Unit:
    """One removable unit, named by its module path in the U-Net."""

    name: str          # e.g. "down_blocks.1.resnets.1", "up_blocks.0.attentions.2.transformer_blocks.3"
    kind: str          # "resnet", "up_resnet", "attention" (a Transformer2DModel), "layer" (one transformer layer);
    #                    a DiT's: "block" (PixArt, Sana), "joint" (SD3), "double" / "single" (Flux)
    params: int
    flops: int         # FLOPs of the unit in one U-Net call at the resolution it was measured at (batch 1)
    removable: bool
    reason: str = ""   # why not, when not removable


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _resnet_channels(resnet) -> tuple[int, int]:
    return int(resnet.conv1.in_channels), int(resnet.conv2.out_channels)


def unit_flops(unet, resolution: int | None = None, vae_scale_factor: int = 8, text_length: int = 77) -> dict:
    """FLOPs per module path of one denoiser call (batch 1), counted once on the meta device."""
    from torch.func import functional_call

    from diffprune.measure.flops import flop_counter, meta_state, to_meta
    from diffprune.measure.inputs import denoiser_inputs

    resolution = resolution or geometry(unet, vae_scale_factor=vae_scale_factor).resolution
    kwargs = denoiser_inputs(unet, resolution=resolution, batch=1, vae_scale_factor=vae_scale_factor,
                             text_length=text_length)
    with torch.no_grad(), flop_counter() as counter:
        functional_call(unet, meta_state(unet), (), to_meta(kwargs), tie_weights=True, strict=False)
    prefix = type(unet).__name__ + "."
    return {name[len(prefix):]: sum(ops.values()) for name, ops in counter.get_flop_counts().items()
            if name.startswith(prefix)}


def enumerate_units(unet, granularity: str = "block", resolution: int | None = None, vae_scale_factor: int = 8,
                    text_length: int = 77, with_flops: bool = True) -> list[Unit]:
    """Every candidate unit of ``unet`` in forward order; ``granularity`` is ``block`` (whole attention modules)
    or ``layer`` (single transformer layers). ``with_flops=False`` skips the FLOPs count (``flops`` is 0)."""
    if granularity not in GRANULARITIES:
        raise DiffpruneError(f"granularity must be one of {', '.join(GRANULARITIES)}, got '{granularity}'")
    flops = unit_flops(unet, resolution, vae_scale_factor, text_length) if with_flops else {}
    if is_transformer(unet):
        return [Unit(name, block_kind(unet, name.rpartition(".")[0]), _params(block), int(flops.get(name, 0)),
                     removable, reason) for name, block, removable, reason in dit_blocks(unet)]
    units: list[Unit] = []

    def add(name: str, kind: str, module, removable: bool = True, reason: str = "") -> None:
        units.append(Unit(name, kind, _params(module), int(flops.get(name, 0)), removable, reason))

    def add_attention(prefix: str, t2d) -> None:
        if is_skipped(t2d):  # removed earlier: nothing left to remove
            return
        if granularity == "block":
            add(prefix, "attention", t2d)
        else:
            for k, layer in enumerate(t2d.transformer_blocks):
                add(f"{prefix}.transformer_blocks.{k}", "layer", layer)

    def add_pairs(prefix: str, block, up: bool, main_width: int | None) -> int | None:
        attentions = list(getattr(block, "attentions", None) or [])
        for j, resnet in enumerate(block.resnets):
            if is_skipped(resnet):  # removed earlier; an up stand-in passes its main path on unchanged
                if j < len(attentions):
                    add_attention(f"{prefix}.attentions.{j}", attentions[j])
                continue
            c_in, c_out = _resnet_channels(resnet)
            name = f"{prefix}.resnets.{j}"
            if up:
                ok = main_width == c_out
                add(name, "up_resnet", resnet, ok, "" if ok else
                    f"its main-path input has {main_width} channels, its output {c_out}")
            else:
                ok = c_in == c_out
                add(name, "resnet", resnet, ok, "" if ok else f"changes channels {c_in} -> {c_out}")
            main_width = c_out
            if j < len(attentions):
                add_attention(f"{prefix}.attentions.{j}", attentions[j])
        return main_width

    for i, block in enumerate(unet.down_blocks):
        add_pairs(f"down_blocks.{i}", block, up=False, main_width=None)
    width = int(unet.config.block_out_channels[-1])
    if unet.mid_block is not None:
        mid = unet.mid_block
        attentions = list(getattr(mid, "attentions", None) or [])
        for j, resnet in enumerate(mid.resnets):
            if is_skipped(resnet):
                if j < len(attentions):
                    add_attention(f"mid_block.attentions.{j}", attentions[j])
                continue
            c_in, c_out = _resnet_channels(resnet)
            add(f"mid_block.resnets.{j}", "resnet", resnet, c_in == c_out,
                "" if c_in == c_out else f"changes channels {c_in} -> {c_out}")
            if j < len(attentions):
                add_attention(f"mid_block.attentions.{j}", attentions[j])
    for i, block in enumerate(unet.up_blocks):
        width = add_pairs(f"up_blocks.{i}", block, up=True, main_width=width)
    return units


def removable_units(units: list[Unit]) -> list[Unit]:
    return [u for u in units if u.removable]
