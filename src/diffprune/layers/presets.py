"""Handcrafted removal baselines: BK-SDM Base / Small / Tiny, built from any SD-style U-Net with the same rules
(on SD-1.x/2.x they reproduce the published architectures; on the testbed they are its equivalents).

- ``bk-base``: one (ResNet, attention) pair per down stage instead of two; up stages keep their first and last
  pair (the middle one goes with its skip);
- ``bk-small``: ``bk-base`` without the mid block;
- ``bk-tiny``: ``bk-small`` without the innermost stage (the two innermost stages must have one width, as in
  SD-1.x/2.x; the testbed's do not, so it has Base and Small only).

The student is a plain ``UNet2DConditionModel`` whose weights are copied from the teacher: down pair 0 from
pair 0; up pair 0 from pair 0 and up pair 1 from the teacher's last pair; for Tiny, student up stage k from
teacher up stage k + 1.
"""

from __future__ import annotations

import re

import torch

from diffprune.errors import DiffpruneError

PRESETS = ("bk-base", "bk-small", "bk-tiny")


def preset_config(config: dict, preset: str) -> dict:
    """The student's diffusers configuration."""
    if preset not in PRESETS:
        raise DiffpruneError(f"unknown preset '{preset}' (choose from {', '.join(PRESETS)})")
    layers = config.get("layers_per_block", 2)
    if (layers if isinstance(layers, int) else min(layers)) < 2:
        raise DiffpruneError("BK-SDM presets need a U-Net with two layers per block")
    student = {k: v for k, v in config.items() if not k.startswith("_")}
    student["layers_per_block"] = 1
    # per-module depths: the student's modules are the teacher's first (down) and first and last (up)
    depths = student.get("transformer_layers_per_block")
    if isinstance(depths, (list, tuple)) and any(isinstance(d, (list, tuple)) for d in depths):
        student["transformer_layers_per_block"] = [[d[0]] if isinstance(d, (list, tuple)) else d for d in depths]
    reverse = student.get("reverse_transformer_layers_per_block")
    if reverse:
        student["reverse_transformer_layers_per_block"] = [[r[0], r[-1]] for r in reverse]
    if preset in ("bk-small", "bk-tiny"):
        student["mid_block_type"] = None
    if preset == "bk-tiny":
        if len(config["down_block_types"]) < 3:
            raise DiffpruneError("bk-tiny needs a U-Net with at least three stages")
        widths = list(config["block_out_channels"])
        if widths[-1] != widths[-2]:
            raise DiffpruneError(f"bk-tiny needs the two innermost stages to share a width; this U-Net has "
                                 f"{widths[-2]} and {widths[-1]}")
        student["down_block_types"] = list(config["down_block_types"])[:-1]
        student["up_block_types"] = list(config["up_block_types"])[1:]
        student["block_out_channels"] = list(config["block_out_channels"])[:-1]
        reverse = student.get("reverse_transformer_layers_per_block")
        if reverse:
            student["reverse_transformer_layers_per_block"] = list(reverse)[1:]
        for key in ("transformer_layers_per_block", "attention_head_dim", "num_attention_heads",
                    "only_cross_attention", "cross_attention_dim"):
            value = student.get(key)
            if isinstance(value, (list, tuple)) and len(value) == len(config["down_block_types"]):
                student[key] = list(value)[:-1]
    return student


def _teacher_key(key: str, preset: str, teacher_layers: int) -> str:
    match = re.match(r"(up_blocks)\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key)
    if match:
        _, stage, kind, index, rest = match.groups()
        stage, index = int(stage), int(index)
        if preset == "bk-tiny":
            stage += 1
        index = 0 if index == 0 else teacher_layers  # the last pair of the teacher's up stage
        return f"up_blocks.{stage}.{kind}.{index}.{rest}"
    match = re.match(r"up_blocks\.(\d+)\.(.*)", key)
    if match and preset == "bk-tiny":
        return f"up_blocks.{int(match.group(1)) + 1}.{match.group(2)}"
    return key


def build_preset(unet, preset: str):
    """A new, smaller U-Net (same dtype and device) initialised from ``unet`` by BK-SDM's copy rule."""
    from diffusers import UNet2DConditionModel

    config = preset_config(dict(unet.config), preset)
    layers = unet.config.get("layers_per_block", 2)
    teacher_layers = layers if isinstance(layers, int) else max(layers)
    param = next(unet.parameters())
    with torch.device("meta"):
        student = UNet2DConditionModel.from_config(config)
    teacher_state = unet.state_dict()
    state = {}
    for key, value in student.state_dict().items():
        source = _teacher_key(key, preset, teacher_layers)
        if source not in teacher_state or teacher_state[source].shape != value.shape:
            raise DiffpruneError(f"{preset}: no teacher weight of shape {tuple(value.shape)} for {key} "
                                 f"(looked for {source})")
        state[key] = teacher_state[source].detach().clone() if param.device.type != "meta" else \
            torch.empty_like(teacher_state[source], device="meta")
    student.load_state_dict(state, strict=True, assign=True)
    return student.eval().requires_grad_(False)  # the copied weights keep the teacher's dtype
