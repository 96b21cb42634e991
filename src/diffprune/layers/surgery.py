"""Removing units from a U-Net: for a while (to score them) or for good (a physically smaller model).

A removed ``Transformer2DModel`` or ResNet is replaced by a parameter-free stand-in that passes its input on
(an up-block ResNet passes on the main path and drops its skip); a removed transformer layer is deleted from
its module's list, so the module simply runs fewer layers (with none left, it still applies its norm and
projections, as when the layers were scored). A mid block whose every unit is gone is dropped.
"""

from __future__ import annotations

from contextlib import contextmanager

from torch import nn

from diffprune.anatomy import is_transformer
from diffprune.errors import DiffpruneError

from .dit import blocks_removed, remove_blocks
from .standins import SkippedLayer, SkippedResnet, SkippedTransformer, SkippedUpResnet, is_skipped
from .units import Unit, enumerate_units


def _parent(unet, name: str) -> tuple[nn.Module, str]:
    path, _, last = name.rpartition(".")
    return unet.get_submodule(path), last


def _set(parent: nn.Module, key: str, module: nn.Module) -> None:
    if isinstance(parent, nn.ModuleList):
        parent[int(key)] = module
    else:
        setattr(parent, key, module)


def _stand_in(unit: Unit, module: nn.Module) -> nn.Module:
    if unit.kind == "attention":
        return SkippedTransformer()
    if unit.kind == "up_resnet":
        return SkippedUpResnet(int(module.conv2.out_channels))
    if unit.kind == "layer":
        return SkippedLayer()
    return SkippedResnet()


def _check(unet, names, units: dict[str, Unit] | None) -> list[Unit]:
    if units is None:
        units = {u.name: u for g in ("block", "layer") for u in enumerate_units(unet, g, with_flops=False)}
    chosen = []
    for name in dict.fromkeys(names):
        unit = units.get(name)
        if unit is None:
            raise DiffpruneError(f"'{name}' is not a removable unit of this {type(unet).__name__}")
        if not unit.removable:
            raise DiffpruneError(f"'{name}' cannot be removed: {unit.reason}")
        chosen.append(unit)
    chosen_names = {u.name for u in chosen}
    for unit in chosen:  # a layer inside a removed block would be removed twice
        if unit.kind == "layer" and unit.name.rsplit(".transformer_blocks.", 1)[0] in chosen_names:
            raise DiffpruneError(f"'{unit.name}' lies inside '{unit.name.rsplit('.transformer_blocks.', 1)[0]}', "
                                 "which is removed too")
    return chosen


@contextmanager
def units_removed(unet, names, units: dict[str, Unit] | None = None):
    """Run ``unet`` (or a diffusion transformer) with ``names`` removed inside the ``with`` block; everything is
    put back afterwards."""
    chosen = _check(unet, names, units)
    if is_transformer(unet):
        with blocks_removed(unet, [u.name for u in chosen]):
            yield unet
        return
    swapped = []
    try:
        for unit in chosen:
            parent, key = _parent(unet, unit.name)
            original = parent[int(key)] if isinstance(parent, nn.ModuleList) else getattr(parent, key)
            _set(parent, key, _stand_in(unit, original))
            swapped.append((parent, key, original))
        yield unet
    finally:
        for parent, key, original in reversed(swapped):
            _set(parent, key, original)


def remove_units(unet, names, units: dict[str, Unit] | None = None):
    """Remove ``names`` from ``unet`` for good (in place) and return it. Layers are deleted from their list;
    a mid block left with no units goes as a whole. A diffusion transformer's blocks are deleted and its config
    follows (:func:`diffprune.layers.dit.remove_blocks`)."""
    chosen = _check(unet, names, units)
    if is_transformer(unet):
        return remove_blocks(unet, [u.name for u in chosen])
    layers: dict[str, list[int]] = {}
    for unit in chosen:
        if unit.kind == "layer":
            module, _, index = unit.name.rpartition(".transformer_blocks.")
            layers.setdefault(module, []).append(int(index))
            continue
        parent, key = _parent(unet, unit.name)
        original = parent[int(key)] if isinstance(parent, nn.ModuleList) else getattr(parent, key)
        _set(parent, key, _stand_in(unit, original))
    for module_name, indices in layers.items():
        t2d = unet.get_submodule(module_name)
        for index in sorted(indices, reverse=True):
            del t2d.transformer_blocks[index]
        # a module left with no layers keeps its norm and projections: exactly what was scored
    mid = unet.mid_block
    if mid is not None and all(isinstance(m, (SkippedResnet, SkippedTransformer))
                               for m in [*mid.resnets, *(getattr(mid, "attentions", None) or [])]):
        unet.mid_block = None
    return unet


def removed_modules(unet) -> list[str]:
    """Module paths of the stand-ins in ``unet`` (what :func:`remove_units` replaced), plus ``mid_block`` if it
    was dropped while the configuration still names one."""
    names = [name for name, m in unet.named_modules() if is_skipped(m)]
    if is_transformer(unet):
        return names
    if unet.mid_block is None and unet.config.get("mid_block_type") is not None:
        names.append("mid_block")
    return names
