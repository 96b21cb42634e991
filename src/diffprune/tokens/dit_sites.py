"""Where and when token pruning acts on a diffusion transformer: its blocks in forward order, the segments a
configuration prunes, DSAP's early phase, and the image-token grid of a call."""

from __future__ import annotations

from dataclasses import dataclass

from diffprune.anatomy import dit_blocks
from diffprune.errors import DiffpruneError

from .config import TokenPruningConfig
from .schedule import is_early

#: how each diffusers block class carries the image tokens: its kind, and where its output holds them
BLOCK_KINDS = {"BasicTransformerBlock": "pixart", "JointTransformerBlock": "joint",
               "FluxTransformerBlock": "double", "FluxSingleTransformerBlock": "single",
               "SanaTransformerBlock": "sana"}

#: factor from the timestep a transformer receives to the scheduler's 0..1000 range (Flux receives sigma)
TIMESTEP_SCALE = {"FluxTransformer2DModel": 1000.0}


@dataclass(frozen=True)
class DitBlock:
    name: str      # e.g. "transformer_blocks.3", "single_transformer_blocks.0"
    index: int     # position in forward order
    kind: str      # a BLOCK_KINDS value


@dataclass(frozen=True)
class Segment:
    """Blocks ``first`` .. ``last`` (inclusive, forward order): ``first`` ranks (or, for ToMe, merges too)."""

    first: int
    last: int
    index: int

    def during(self, early: bool) -> tuple[int, int] | None:
        """The (first, last) blocks active at this step; DSAP's early phase spares the first pruned block and
        the last one (``None`` when nothing is left to prune)."""
        if not early:
            return self.first, self.last
        first, last = self.first + 1, self.last - 1
        return (first, last) if last > first else None


def transformer_blocks(model) -> list[DitBlock]:
    """The blocks of a diffusion transformer in forward order; a clear error for a block kind token pruning
    does not know."""
    out = []
    for index, (name, block, _, _) in enumerate(dit_blocks(model)):
        kind = BLOCK_KINDS.get(type(block).__name__)
        if kind is None:
            raise DiffpruneError(f"token pruning does not know the block {name} ({type(block).__name__})")
        out.append(DitBlock(name, index, kind))
    if not out:
        raise DiffpruneError(f"{type(model).__name__} has no transformer blocks to prune tokens in")
    return out


def segments(config: TokenPruningConfig, count: int) -> list[Segment]:
    """The segments ``config`` prunes in a transformer of ``count`` blocks (checked: inside the model, in order,
    not overlapping, at least two blocks each)."""
    ranges = config.blocks if config.blocks is not None else ((1, count - 2),)
    if config.blocks is None and count < 4:
        raise DiffpruneError(f"this transformer has {count} blocks; the default segment (second to second-to-last "
                             "block) needs 4 or more: give blocks=first-last")
    out, previous = [], -1
    for k, (first, last) in enumerate(ranges):
        if last >= count:
            raise DiffpruneError(f"blocks {first}-{last}: this transformer has blocks 0-{count - 1}")
        if first <= previous:
            raise DiffpruneError(f"block segments must be in order and must not overlap, got {config.blocks}")
        if last <= first:
            raise DiffpruneError(f"a segment needs at least two blocks (one ranks, the next ones run on the kept "
                                 f"tokens), got {first}-{last}")
        out.append(Segment(first, last, k))
        previous = last
    return out


def early(config: TokenPruningConfig, timestep: float | None, num_train_timesteps: int) -> bool:
    return config.dsap and is_early(timestep, config.tau, num_train_timesteps)


def image_grid(model, kwargs: dict) -> tuple[int, int]:
    """(rows, columns) of image tokens in a call of ``model`` with these keyword arguments."""
    name = type(model).__name__
    x = kwargs.get("hidden_states")
    if name == "FluxTransformer2DModel":
        ids = kwargs.get("img_ids")
        if ids is not None and ids.device.type != "meta" and ids.numel():
            ids = ids[0] if ids.ndim == 3 else ids
            rows, cols = int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1
            if rows * cols == x.shape[1]:
                return rows, cols
        side = int(round(x.shape[1] ** 0.5))  # ids without positions (on meta, or zeros): a square grid
        return side, x.shape[1] // side
    patch = int(getattr(model.config, "patch_size", 1) or 1)
    return int(x.shape[-2]) // patch, int(x.shape[-1]) // patch
