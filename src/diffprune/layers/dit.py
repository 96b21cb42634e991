"""The removable units of a diffusion transformer: its blocks (PixArt and Sana blocks, SD3 joint blocks, Flux double
and single blocks), and removing them so that a plain diffusers config still describes the model.

Every block is a residual update of the token streams, so a model without it still runs: the forward loops over
the block lists. Removing blocks for good deletes them from their list (later blocks are renumbered) and writes the
new depth into the config (``num_layers``, ``num_single_layers``; SD3.5's ``dual_attention_layers`` indices follow
their blocks), so ``from_pretrained`` alone loads the saved folder with clean loading info. SD3's last joint block
is the one exception: it only reads the text stream (``context_pre_only``), and the block before it cannot take its
place, so it stays.
"""

from __future__ import annotations

from contextlib import contextmanager

from torch import nn

from diffprune.anatomy import DIT_BLOCK_LISTS as BLOCK_LISTS
from diffprune.anatomy import is_transformer
from diffprune.errors import DiffpruneError

def block_kind(model, list_name: str) -> str:
    name = type(model).__name__
    if name == "FluxTransformer2DModel":
        return "single" if list_name == "single_transformer_blocks" else "double"
    return {"SD3Transformer2DModel": "joint", "PixArtTransformer2DModel": "block",
            "SanaTransformer2DModel": "block"}.get(name, "block")


def _split(name: str) -> tuple[str, int]:
    list_name, _, index = name.rpartition(".")
    if list_name not in BLOCK_LISTS or not index.isdigit():
        raise DiffpruneError(f"'{name}' is not a block of this transformer")
    return list_name, int(index)


def _grouped(model, names) -> dict[str, list[int]]:
    grouped: dict[str, list[int]] = {}
    for name in dict.fromkeys(names):
        list_name, index = _split(name)
        blocks = getattr(model, list_name, None)
        if blocks is None or index >= len(blocks):
            raise DiffpruneError(f"'{name}' is not a block of this {type(model).__name__}")
        grouped.setdefault(list_name, []).append(index)
    return grouped


@contextmanager
def blocks_removed(model, names):
    """Run ``model`` without the blocks ``names`` inside the ``with`` block; they are put back afterwards."""
    if not is_transformer(model):
        raise DiffpruneError(f"blocks_removed needs a diffusion transformer, got a {type(model).__name__}")
    grouped = _grouped(model, names)
    originals = {list_name: list(getattr(model, list_name)) for list_name in grouped}
    try:
        for list_name, indices in grouped.items():
            drop = set(indices)
            setattr(model, list_name, nn.ModuleList([b for i, b in enumerate(originals[list_name]) if i not in drop]))
        yield model
    finally:
        for list_name, blocks in originals.items():
            setattr(model, list_name, nn.ModuleList(blocks))


def remove_blocks(model, names):
    """Delete the blocks ``names`` from ``model`` for good and update its config to the new depths; returns it."""
    grouped = _grouped(model, names)
    updates = {}
    for list_name, indices in grouped.items():
        blocks = getattr(model, list_name)
        drop = set(indices)
        kept = [i for i in range(len(blocks)) if i not in drop]
        if list_name == "transformer_blocks" and model.config.get("dual_attention_layers"):
            dual = set(model.config.dual_attention_layers)
            updates["dual_attention_layers"] = tuple(new for new, old in enumerate(kept) if old in dual)
        setattr(model, list_name, nn.ModuleList([blocks[i] for i in kept]))
        updates[BLOCK_LISTS[list_name]] = len(kept)
    model.register_to_config(**updates)
    return model
