"""Which weights a component offers for pruning, grouped in forward order.

Text encoders (CLIP, T5, Gemma-2): the ``nn.Linear`` layers of the transformer blocks (attention projections and
MLP), one group per block, as the SD2 study does; embeddings, norms and the final projection stay dense. U-Nets:
every ``nn.Linear`` (attention, feed-forward, ``proj_in``/``proj_out``, time-embedding projections) and, on request,
every ``nn.Conv2d``; groups are the top-level blocks (down, mid, up). Diffusion transformers: every ``nn.Linear``
(and, on request, convolution: Sana's Mix-FFN), one group per transformer block, the embedders before them and the
output layers after. The VAE is never a target.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from diffprune.anatomy import denoiser_name, is_denoiser, is_unet
from diffprune.errors import DiffpruneError

#: in the order they are pruned: text encoders first, then the denoiser (calibrated on the pruned encoders' output)
PRUNABLE_COMPONENTS = ("text_encoder", "text_encoder_2", "text_encoder_3", "unet", "transformer")
DENOISERS = ("unet", "transformer")
#: a component name that stands for the pipeline's denoiser, whichever it is
DENOISER = "denoiser"
#: where each kind of text encoder keeps its blocks (transformers 5 dropped CLIP's ``text_model`` level)
_ENCODER_BLOCKS = ("text_model.encoder.layers", "encoder.layers", "encoder.block", "layers")
_DIT_BLOCKS = ("transformer_blocks", "single_transformer_blocks")


def resolve_components(pipe, names) -> list[str]:
    """``names`` with :data:`DENOISER` replaced by the pipeline's denoiser (``unet`` or ``transformer``)."""
    resolved = [denoiser_name(pipe) if name == DENOISER else name for name in names]
    twice = next((name for name in resolved if resolved.count(name) > 1), None)
    if twice is not None:
        raise DiffpruneError(f"'{twice}' is named twice" + (f" (give {DENOISER} or {twice}, not both)"
                                                             if DENOISER in names else ""))
    return resolved


@dataclass
class Target:
    name: str          # qualified name inside the component, e.g. "down_blocks.0.attentions.0.proj_in"
    module: nn.Module  # nn.Linear or nn.Conv2d
    group: str         # block it belongs to (calibration and OWL work block by block)

    @property
    def weight(self):
        return self.module.weight

    @property
    def columns(self) -> int:
        """Width of a row of the weight as a matrix ([C_out, C_in] or [C_out, C_in*kh*kw])."""
        return self.module.weight[0].numel()


def _encoder_layers(module: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """Where a text encoder (CLIP, T5, Gemma-2) keeps its transformer blocks."""
    from transformers import PreTrainedModel

    if not isinstance(module, PreTrainedModel):
        return None
    for prefix in _ENCODER_BLOCKS:
        try:
            layers = module.get_submodule(prefix)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList):
            return prefix, layers
    return None


def find_targets(component: nn.Module, *, include_conv: bool = False) -> list[Target]:
    """The prunable layers of ``component`` in forward order, each tagged with its block."""
    kinds = (nn.Linear, nn.Conv2d) if include_conv else (nn.Linear,)
    found = _encoder_layers(component)
    if found is not None:
        targets = []
        for i, block in enumerate(found[1]):
            prefix = f"{found[0]}.{i}"
            targets += [Target(f"{prefix}.{n}", m, prefix) for n, m in block.named_modules()
                        if type(m) in (nn.Linear,)]  # text encoders have no convolutions
        return targets
    if not is_denoiser(component):
        raise DiffpruneError(f"cannot prune a {type(component).__name__}: diffprune prunes text encoders (CLIP, "
                             "T5, Gemma-2), U-Nets and diffusion transformers")
    blocks = ("down_blocks", "up_blocks") if is_unet(component) else _DIT_BLOCKS
    targets = []
    for name, module in component.named_modules():
        if isinstance(module, kinds) and not isinstance(module, (nn.Embedding,)):
            parts = name.split(".")
            group = ".".join(parts[:2]) if parts[0] in blocks else parts[0]
            targets.append(Target(name, module, group))
    return targets


_UNET_ORDER = ("conv_in", "time_proj", "time_embedding", "class_embedding", "add_embedding", "down_blocks",
               "mid_block", "up_blocks")


_DIT_OUTPUT = ("norm_out", "proj_out")


def _forward_rank(group: str) -> tuple:
    """Sort key that puts blocks in the order a forward pass runs them (U-Nets register ``up_blocks`` before
    ``mid_block``; PixArt registers its timestep and caption embedders after its output layers). Embedders of a
    transformer run first, then its blocks, then its output layers."""
    head, _, index = group.partition(".")
    if head in _UNET_ORDER:
        rank = _UNET_ORDER.index(head)
    elif head in _DIT_BLOCKS:
        rank = len(_UNET_ORDER) + 1 + _DIT_BLOCKS.index(head)
    elif head in _DIT_OUTPUT:
        rank = len(_UNET_ORDER) + 3 + _DIT_OUTPUT.index(head)
    else:  # a transformer's embedders (or an unknown top-level module): before the blocks
        rank = len(_UNET_ORDER)
    return (rank, int(index) if index.isdigit() else 0)


def groups_in_order(targets: list[Target]) -> list[list[Target]]:
    """Targets split by block, blocks in forward order."""
    out: dict[str, list[Target]] = {}
    for t in targets:
        out.setdefault(t.group, []).append(t)
    if any(g.startswith(_ENCODER_BLOCKS) for g in out):  # a text encoder: blocks in registration (= forward) order
        return list(out.values())
    return [out[g] for g in sorted(out, key=_forward_rank)]


def check_pattern_fits(targets: list[Target], nm: tuple[int, int] | None, component: str) -> None:
    """N:M needs every row width to be a multiple of M; say which layer is not."""
    if nm is None:
        return
    m = nm[1]
    for t in targets:
        if t.columns % m:
            raise DiffpruneError(f"{component}.{t.name} has rows of {t.columns} weights, not a multiple of {m}, "
                                 f"so it cannot take the {nm[0]}:{m} pattern")
