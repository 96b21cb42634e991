"""Architectures of the shapes testbed: an SD-style VAE, CLIP text encoder and U-Net sized for CPU training.

The U-Net keeps the features compression methods rely on: self- and cross-attention at the 16x16 latent
resolution (256 tokens), two transformer layers per attention block (SD-XL-like depth), two ResNet+attention
pairs per down stage and a cross-attention mid block.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .world import COLORS, POSITIONS, RELATIONS, SHAPES, SIZES

#: the words of every caption; each becomes a single token
VOCABULARY: tuple[str, ...] = tuple(sorted(
    {"a", "an", "in", "the", *COLORS, *SHAPES, *SIZES}
    | {w for p in POSITIONS for w in p.split()} | {w for r in RELATIONS for w in r.split()}
))
MAX_TOKENS = 16  # longest caption is 10 words + BOS/EOS


@dataclass
class TestbedArch:
    """Widths and depths of the three trained components."""

    unet_channels: tuple[int, ...] = (64, 128, 128)
    unet_layers_per_block: int = 2
    unet_transformer_depth: int = 2
    unet_head_dim: int = 32  # width of every attention head: heads = channels // width
    unet_heads: int | None = None  # a fixed number of heads at every level instead (width = channels // heads)
    text_width: int = 64
    text_layers: int = 3
    text_heads: int = 4
    vae_channels: tuple[int, ...] = (16, 32, 64)
    vae_norm_groups: int = 8
    latent_channels: int = 4
    norm_groups: int = 16

    def to_dict(self) -> dict:
        return asdict(self)


def unet_config(arch: TestbedArch) -> dict:
    depth, n = arch.unet_transformer_depth, len(arch.unet_channels)
    # diffusers' UNet2DConditionModel reads ``attention_head_dim`` as the number of heads per level
    heads = tuple(arch.unet_heads or max(1, c // arch.unet_head_dim) for c in arch.unet_channels)
    return dict(
        sample_size=16, in_channels=arch.latent_channels, out_channels=arch.latent_channels,
        layers_per_block=arch.unet_layers_per_block, block_out_channels=tuple(arch.unet_channels),
        # SD's layout: attention at every level but the coarsest, where a plain ResNet stage sits
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        mid_block_type="UNetMidBlock2DCrossAttn",
        transformer_layers_per_block=(depth,) * n,
        cross_attention_dim=arch.text_width, attention_head_dim=heads,
        norm_num_groups=arch.norm_groups,
    )


def text_encoder_config(arch: TestbedArch, vocab_size: int, eos_token_id: int, bos_token_id: int) -> dict:
    return dict(
        vocab_size=vocab_size, hidden_size=arch.text_width, intermediate_size=4 * arch.text_width,
        num_hidden_layers=arch.text_layers, num_attention_heads=arch.text_heads,
        max_position_embeddings=MAX_TOKENS, projection_dim=arch.text_width, hidden_act="quick_gelu",
        bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=eos_token_id,
    )


def vae_config(arch: TestbedArch) -> dict:
    n = len(arch.vae_channels)
    return dict(
        in_channels=3, out_channels=3, latent_channels=arch.latent_channels,
        block_out_channels=tuple(arch.vae_channels), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        norm_num_groups=arch.vae_norm_groups, sample_size=64,
    )


def build_models(arch: TestbedArch, seed: int = 0):
    """Fresh (tokenizer, text_encoder, unet, vae), initialised from ``seed``."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..archs.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(VOCABULARY, model_max_length=MAX_TOKENS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_encoder_config(
            arch, len(tokenizer), tokenizer.eos_token_id, tokenizer.bos_token_id)))
        unet = UNet2DConditionModel(**unet_config(arch))
        vae = AutoencoderKL(**vae_config(arch))
    return tokenizer, text_encoder, unet, vae


def sampling_scheduler(train_config: dict):
    """The scheduler shipped with the pipeline: DPM-Solver++ on the training noise schedule.

    "trailing" spacing starts sampling at the last training timestep, the noise level the initial latents
    have; "leading" would start lower (at 801 of 1000 for 4 steps).
    """
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(train_config, timestep_spacing="trailing")
