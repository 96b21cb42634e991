"""Parameter-free stand-ins for removed U-Net units, and how to tell one apart from a real module."""

from __future__ import annotations

from torch import nn


class SkippedTransformer(nn.Module):
    """Stands in for a removed ``Transformer2DModel``: returns its input."""

    def forward(self, hidden_states, *args, return_dict: bool = True, **kwargs):
        if return_dict:
            from diffusers.models.modeling_outputs import Transformer2DModelOutput

            return Transformer2DModelOutput(sample=hidden_states)
        return (hidden_states,)


class SkippedResnet(nn.Module):
    """Stands in for a removed down/mid ResNet: returns its input."""

    def forward(self, input_tensor, temb=None, *args, **kwargs):
        return input_tensor


class SkippedUpResnet(nn.Module):
    """Stands in for a removed up-block ResNet: passes the main path on and drops the concatenated skip."""

    def __init__(self, width: int):
        super().__init__()
        self.width = width

    def forward(self, input_tensor, temb=None, *args, **kwargs):
        return input_tensor[:, : self.width]

    def extra_repr(self) -> str:
        return f"width={self.width}"


class SkippedLayer(nn.Module):
    """Stands in for a transformer layer while it is temporarily removed."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


def is_skipped(module: nn.Module) -> bool:
    return isinstance(module, (SkippedTransformer, SkippedResnet, SkippedUpResnet, SkippedLayer))
