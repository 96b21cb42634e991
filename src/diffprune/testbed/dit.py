"""The DiT shapes testbed's architecture: a small PixArt-style transformer in the shapes testbed's pipeline.

It shares the world, the evaluator and the VAE with the U-Net testbed and, like it, trains a CLIP-style text
encoder from scratch. The transformer is a ``PixArtTransformer2DModel`` (adaLN-single blocks with self-attention,
cross-attention to the text and an MLP), so the folder is a stock ``PixArtSigmaPipeline`` one. The text encoder has
300 positions because PixArt's pipeline pads prompts to 300 tokens; only the first 16 are ever real (a causal
encoder's states for real tokens do not depend on the padding after them, and the transformer masks the padding),
so training on 16-token captions and sampling on 300-token ones see the same conditioning.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .models import MAX_TOKENS, VOCABULARY

PIPELINE_TEXT_LENGTH = 300  # PixArtSigmaPipeline's default max_sequence_length


@dataclass
class DitArch:
    """Widths and depths of the DiT testbed's trained parts (the VAE comes from the U-Net testbed)."""

    width: int = 128
    layers: int = 8
    heads: int = 4
    patch_size: int = 2
    text_width: int = 64
    text_layers: int = 3
    text_heads: int = 4

    def to_dict(self) -> dict:
        return asdict(self)


def transformer_config(arch: DitArch, latent_side: int = 16, latent_channels: int = 4) -> dict:
    if arch.width % arch.heads:
        raise ValueError(f"width {arch.width} does not split into {arch.heads} heads")
    return dict(
        sample_size=latent_side, patch_size=arch.patch_size, in_channels=latent_channels,
        out_channels=latent_channels, num_layers=arch.layers, num_attention_heads=arch.heads,
        attention_head_dim=arch.width // arch.heads, cross_attention_dim=arch.width, caption_channels=arch.text_width,
        norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6, activation_fn="gelu-approximate",
        attention_bias=True, num_embeds_ada_norm=1000, use_additional_conditions=False, interpolation_scale=1,
        dropout=0.0,
    )


def build_dit_models(arch: DitArch, seed: int = 0):
    """Fresh (tokenizer, text_encoder, transformer), initialised from ``seed``."""
    import torch
    from diffusers import PixArtTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..archs.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(VOCABULARY, model_max_length=MAX_TOKENS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=arch.text_width, intermediate_size=4 * arch.text_width,
            num_hidden_layers=arch.text_layers, num_attention_heads=arch.text_heads,
            max_position_embeddings=PIPELINE_TEXT_LENGTH, projection_dim=arch.text_width, hidden_act="quick_gelu",
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.eos_token_id))
        transformer = PixArtTransformer2DModel(**transformer_config(arch))
    return tokenizer, text_encoder, transformer


def dit_forward(transformer, noisy, t, hidden, mask):
    """One training call of the DiT testbed's transformer (its prediction, shaped like ``noisy``)."""
    return transformer(hidden_states=noisy, encoder_hidden_states=hidden, encoder_attention_mask=mask, timestep=t,
                       added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
