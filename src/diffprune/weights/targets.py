"""Which weights a component offers for pruning, grouped in forward order.

Text encoders: the ``nn.Linear`` layers of the transformer blocks (attention projections and MLP), one group
per block, as the SD2 study does; embeddings, norms and the final projection stay dense. U-Nets: every
``nn.Linear`` (attention, feed-forward, ``proj_in``/``proj_out``, time-embedding projections) and, on request,
every ``nn.Conv2d``; groups are the top-level blocks (down, mid, up). The VAE is never a target.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from diffprune.errors import DiffpruneError

PRUNABLE_COMPONENTS = ("text_encoder", "text_encoder_2", "unet")


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
    """Where a CLIP text model keeps its transformer blocks (transformers 5 dropped the ``text_model`` level)."""
    for prefix in ("text_model.encoder.layers", "encoder.layers"):
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
    found = _encoder_layers(component) if "TextModel" in type(component).__name__ else None
    if found is not None:
        targets = []
        for i, block in enumerate(found[1]):
            prefix = f"{found[0]}.{i}"
            targets += [Target(f"{prefix}.{n}", m, prefix) for n, m in block.named_modules()
                        if type(m) in (nn.Linear,)]  # text encoders have no convolutions
        return targets
    if type(component).__name__ not in ("UNet2DConditionModel",):
        raise DiffpruneError(f"cannot prune a {type(component).__name__}: diffprune prunes CLIP text encoders "
                             "and UNet2DConditionModel")
    targets = []
    for name, module in component.named_modules():
        if isinstance(module, kinds) and not isinstance(module, (nn.Embedding,)):
            parts = name.split(".")
            group = ".".join(parts[:2]) if parts[0] in ("down_blocks", "up_blocks") else parts[0]
            targets.append(Target(name, module, group))
    return targets


_UNET_ORDER = ("conv_in", "time_proj", "time_embedding", "class_embedding", "add_embedding", "down_blocks",
               "mid_block", "up_blocks")


def _forward_rank(group: str) -> tuple:
    """Sort key that puts U-Net blocks in the order a forward pass runs them (the module registration order
    lists ``up_blocks`` before ``mid_block``)."""
    head, _, index = group.partition(".")
    rank = _UNET_ORDER.index(head) if head in _UNET_ORDER else len(_UNET_ORDER)
    return (rank, int(index) if index.isdigit() else 0)


def groups_in_order(targets: list[Target]) -> list[list[Target]]:
    """Targets split by block, blocks in forward order."""
    out: dict[str, list[Target]] = {}
    for t in targets:
        out.setdefault(t.group, []).append(t)
    if any(".layers." in g for g in out):
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
