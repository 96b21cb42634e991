"""Where and when to prune: the U-Net's attention blocks with their latent level, and the
denoising-step-aware schedule (DSAP) that prunes less in the early, layout-forming steps."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import TokenPruningConfig


@dataclass(frozen=True)
class AttentionSite:
    """One ``Transformer2DModel`` of the U-Net."""

    name: str          # e.g. "down_blocks.1.attentions.0"
    level: int         # down-sampling factor of its grid relative to the U-Net input (1, 2, 4, ...)
    depth: int         # transformer layers in it
    index: int         # position in forward order (seeds the per-site random choices)
    spared_early: bool  # first attention block of a down stage or last of an up stage: DSAP spares it early


def attention_sites(unet) -> list[AttentionSite]:
    """Every continuous-input ``Transformer2DModel`` of a ``UNet2DConditionModel``, in forward order."""
    sites: list[tuple[str, int, int, bool]] = []
    n_down = len(unet.down_blocks)

    def add(prefix: str, block, level: int, first_or_last: int | None) -> None:
        attentions = getattr(block, "attentions", None) or []
        for i, t2d in enumerate(attentions):
            if not getattr(t2d, "is_input_continuous", False) or len(t2d.transformer_blocks) == 0:
                continue  # a stand-in, or a module whose every layer was pruned away: nothing runs on tokens
            spared = first_or_last is not None and i == (0 if first_or_last == 0 else len(attentions) - 1)
            sites.append((f"{prefix}.attentions.{i}", level, len(t2d.transformer_blocks), spared))

    for i, block in enumerate(unet.down_blocks):
        add(f"down_blocks.{i}", block, 2**i, 0)
    if unet.mid_block is not None:
        add("mid_block", unet.mid_block, 2 ** (n_down - 1), None)
    for i, block in enumerate(unet.up_blocks):
        add(f"up_blocks.{i}", block, 2 ** (len(unet.up_blocks) - 1 - i), -1)
    return [AttentionSite(name, level, depth, k, spared) for k, (name, level, depth, spared) in enumerate(sites)]


def is_early(timestep: float | None, tau: float, num_train_timesteps: int = 1000) -> bool:
    """Whether ``timestep`` is in DSAP's early phase: the top ``tau`` of the noise range."""
    if timestep is None or tau <= 0:
        return False
    return timestep >= (1 - tau) * num_train_timesteps - 1e-6


def ratio_for(site: AttentionSite, config: TokenPruningConfig, timestep: float | None,
              num_train_timesteps: int = 1000) -> float:
    """Share of tokens this site removes at this timestep (0: it runs unpruned)."""
    if config.levels is not None and site.level not in config.levels:
        return 0.0
    early = config.dsap and is_early(timestep, config.tau, num_train_timesteps)
    if early and site.spared_early:
        return 0.0
    return config.ratio_at(early)


def step_generator(seed: int, timestep: float | None, *keys: int) -> torch.Generator:
    """The generator of one random choice, seeded from (seed, timestep, keys): the same call of the same site
    draws the same tokens however often a pipeline runs."""
    value = seed
    for k in (-1 if timestep is None else int(round(timestep)), *keys):
        value = (value * 1_000_003 + k + 7) % (2**63 - 1)
    return torch.Generator().manual_seed(value)
