"""Saving a layer-pruned U-Net so that it stays small on disk and loads back identically.

When the diffusers configuration can describe what is left (fewer transformer layers per attention module,
listed per module in ``transformer_layers_per_block`` / ``reverse_transformer_layers_per_block``; no mid
block), the folder is a plain ``UNet2DConditionModel`` one that ``from_pretrained`` loads alone. Otherwise
(a ResNet or a whole attention module replaced by a pass-through) the folder keeps the original
``config.json``, the remaining weights, and ``diffprune_layers.json`` naming the removed units, format
``diffprune-layers`` version 1; :func:`load_unet` (and so ``diffprune.load``) rebuilds the model from them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from diffprune.anatomy import DIT_BLOCK_LISTS, is_transformer
from diffprune.errors import DiffpruneError, first_line

from .standins import SkippedTransformer, is_skipped
from .surgery import remove_units, removed_modules

MARKER = "diffprune_layers.json"
WEIGHTS_FILE = "diffprune_layers.safetensors"  # not diffusers' file name, so stock loading fails loudly
FORMAT = "diffprune-layers"
VERSION = 1


def is_layer_pruned(model) -> bool:
    """Whether ``model`` (a U-Net or a diffusion transformer) differs from what its own configuration describes
    (units removed in memory). A transformer's block removal updates its config, so it differs only while blocks
    are left out temporarily."""
    if is_transformer(model):
        return any(len(getattr(model, name)) != model.config.get(key) for name, key in DIT_BLOCK_LISTS.items()
                   if getattr(model, name, None) is not None)
    if removed_modules(model):
        return True
    return _depths(model) != _config_depths(model)


def is_layer_pruned_unet(module) -> bool:
    """Whether ``module`` is a ``UNet2DConditionModel`` with units removed (any other module: False)."""
    from diffusers import UNet2DConditionModel

    return isinstance(module, UNet2DConditionModel) and is_layer_pruned(module)


def _depths(unet) -> dict[str, int]:
    return {name: len(m.transformer_blocks) for name, m in unet.named_modules()
            if hasattr(m, "transformer_blocks") and not is_skipped(m)}


def _config_depths(unet) -> dict[str, int]:
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        fresh = UNet2DConditionModel.from_config(unet.config)
    return _depths(fresh)


def _attention_depths(block) -> list[int] | None:
    attentions = getattr(block, "attentions", None)
    if not attentions:
        return None
    if any(isinstance(a, SkippedTransformer) for a in attentions):
        raise ValueError("an attention module was removed")
    return [len(a.transformer_blocks) for a in attentions]


def plain_config(unet) -> dict | None:
    """A diffusers configuration whose model has exactly ``unet``'s parameters (names and shapes), or ``None``
    if the configuration cannot express the removal."""
    from diffusers import UNet2DConditionModel

    if any(is_skipped(m) and not isinstance(m, SkippedTransformer) for m in unet.modules()):
        return None  # a ResNet stand-in: no configuration says "skip this ResNet"
    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    try:
        down = [_attention_depths(b) for b in unet.down_blocks]
        up = [_attention_depths(b) for b in unet.up_blocks]
        mid = _attention_depths(unet.mid_block) if unet.mid_block is not None else None
    except ValueError:
        return None
    last = mid[0] if mid else 1
    config["transformer_layers_per_block"] = [d if d is not None else [last] * len(b.resnets)
                                              for d, b in zip(down, unet.down_blocks)]
    if down[-1] is not None and mid and down[-1][0] != mid[0]:
        return None  # diffusers gives the mid block the depth of the last down block's first module
    config["reverse_transformer_layers_per_block"] = [d if d is not None else [1] * len(b.resnets)
                                                      for d, b in zip(up, unet.up_blocks)]
    if unet.mid_block is None:
        config["mid_block_type"] = None
    with torch.device("meta"):
        candidate = UNet2DConditionModel.from_config(config)
    want = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in candidate.state_dict().items()}
    return config if want == have else None


def save_unet(unet, folder: str | Path) -> str:
    """Write ``unet`` to ``folder`` (replacing what is there); returns ``"diffusers"`` or ``FORMAT``."""
    from diffusers import UNet2DConditionModel

    if is_transformer(unet):
        raise DiffpruneError(f"save_unet writes U-Nets only; a {type(unet).__name__} keeps its block counts in its "
                             "config: use diffprune.save or save_pretrained")

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.iterdir():  # what a dense save of the U-Net put there
        if stale.is_file() and (stale.suffix in (".safetensors", ".bin", ".json")):
            stale.unlink()
    config = plain_config(unet)
    if config is not None:
        with torch.device("meta"):
            plain = UNet2DConditionModel.from_config(config)
        plain.load_state_dict(unet.state_dict(), strict=True, assign=True)
        plain.save_pretrained(folder, safe_serialization=True)
        return "diffusers"
    unet.save_pretrained(folder, safe_serialization=True)  # the original config, the remaining weights
    # Under diffusers' own file names, stock from_pretrained would load this folder "successfully" with the
    # removed units left unfilled; under other names (and without the shard index) it stops with "no file
    # named ...". load_unet reads every *.safetensors file of the folder.
    for index in folder.glob("*.safetensors.index.json"):
        index.unlink()
    shards = sorted(folder.glob("*.safetensors"))
    for i, weights in enumerate(shards):
        weights.rename(folder / (WEIGHTS_FILE if len(shards) == 1 else f"diffprune_layers-{i + 1:05d}.safetensors"))
    (folder / MARKER).write_text(json.dumps({"format": FORMAT, "version": VERSION,
                                             "removed": _removal_list(unet)}, indent=2) + "\n", encoding="utf-8")
    return FORMAT


def _removal_list(unet) -> list[str]:
    """Unit names to remove from a fresh model of ``unet``'s configuration to get ``unet``'s structure."""
    names = [n for n in removed_modules(unet) if n != "mid_block"]
    if unet.mid_block is None and unet.config.get("mid_block_type") is not None:
        from diffusers import UNet2DConditionModel

        with torch.device("meta"):
            fresh = UNet2DConditionModel.from_config(unet.config)
        mid = fresh.mid_block
        names += [f"mid_block.resnets.{i}" for i in range(len(mid.resnets))]
        names += [f"mid_block.attentions.{i}" for i in range(len(getattr(mid, "attentions", None) or []))]
    fresh_depths, depths = _config_depths(unet), _depths(unet)
    for module, depth in fresh_depths.items():
        if module in depths and depths[module] < depth:
            names += [f"{module}.transformer_blocks.{k}" for k in range(depths[module], depth)]
    return names


def is_layer_pruned_folder(folder: str | Path) -> bool:
    return (Path(folder) / MARKER).is_file()


def _read_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    # its own file names (one file or shards), or diffusers' names in folders saved before they were renamed
    files = sorted(folder.glob("diffprune_layers*.safetensors")) or \
        sorted(folder.glob("diffusion_pytorch_model*.safetensors"))
    if not files:
        raise DiffpruneError(f"{folder} has no safetensors weights")
    state = {}
    for f in files:
        try:
            state.update(load_file(f))
        except Exception as e:  # safetensors raises its own types for truncated or garbled files
            raise DiffpruneError(f"{f} is damaged (not a readable safetensors file: {first_line(e, 160)}); "
                                 "re-save the model") from None
    return state


def load_unet(folder: str | Path, dtype: torch.dtype | None = None, state: dict | None = None):
    """Rebuild a U-Net saved in the ``diffprune-layers`` format (strictly: every weight present, none extra).

    ``state``: the weights, when they are not in the folder's safetensors files (e.g. decoded from a sparse
    file by the caller)."""
    from diffusers import UNet2DConditionModel

    folder = Path(folder)
    try:
        meta = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DiffpruneError(f"cannot read the layer-pruned U-Net in {folder}: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("version"), int) \
            or meta["version"] > VERSION:
        raise DiffpruneError(f"{folder / MARKER} is not a {FORMAT} file this diffprune can read")
    try:
        with torch.device("meta"):  # no weights allocated until the saved ones are assigned
            unet = UNet2DConditionModel.from_config(config)
        remove_units(unet, meta.get("removed", []))
    except DiffpruneError:
        raise
    except Exception as e:
        raise DiffpruneError(f"{folder}: the configuration or the removal list does not describe a U-Net: {e}") \
            from None
    if state is None:
        state = _read_weights(folder)
    try:
        missing, unexpected = unet.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as e:
        raise DiffpruneError(f"{folder}: weights do not fit the layer-pruned structure: "
                             f"{first_line(e)}") from None
    if missing or unexpected:
        raise DiffpruneError(f"{folder}: weights do not match the layer-pruned structure "
                             f"({len(missing)} missing, {len(unexpected)} unexpected)")
    if any(t.device.type == "meta" for t in [*unet.parameters(), *unet.buffers()]):
        raise DiffpruneError(f"{folder}: some tensors of the U-Net are not in its weight files")
    if dtype is not None:
        unet.to(dtype)
    return unet.eval().requires_grad_(False)
