"""Text conditioning exactly as a pipeline computes it, for everything that runs text encoders outside sampling
(calibration of pruned text encoders, distillation).

U-Net pipelines: the tokenizer's ids padded to its length, through the text encoder. Transformer pipelines: the
pipeline's own ``encode_prompt`` with the arguments sampling uses by default: the sequence length of each
encoder, the attention masks PixArt and Sana pass, Sana's default complex human instruction and right padding,
SD3's three encoders, Flux's pooled CLIP vector.
"""

from __future__ import annotations

import torch

from diffprune.anatomy import call_default, denoiser_of, is_unet, text_lengths


@torch.no_grad()
def encode_prompts(pipe, captions: list[str], device) -> dict[str, torch.Tensor]:
    """Batch-first conditioning tensors for ``captions``, keyed by the denoiser's argument names."""
    model = denoiser_of(pipe, "text conditioning")
    if is_unet(model):
        tok = pipe.tokenizer
        ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(device)
        return {"encoder_hidden_states": pipe.text_encoder(ids)[0]}
    lengths = text_lengths(pipe)
    kind = type(model).__name__
    if kind in ("PixArtTransformer2DModel", "SanaTransformer2DModel"):
        extra = {"clean_caption": False}
        if kind == "SanaTransformer2DModel":
            extra["complex_human_instruction"] = call_default(pipe, "complex_human_instruction")
        embeds, mask, _, _ = pipe.encode_prompt(captions, do_classifier_free_guidance=False, device=device,
                                                max_sequence_length=lengths["text_encoder"], **extra)
        return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask}
    if kind == "SD3Transformer2DModel":
        embeds, _, pooled, _ = pipe.encode_prompt(captions, None, None, do_classifier_free_guidance=False,
                                                  device=device, max_sequence_length=lengths["text_encoder_3"])
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}
    embeds, pooled, _ = pipe.encode_prompt(captions, None, device=device,
                                           max_sequence_length=lengths["text_encoder_2"])
    return {"encoder_hidden_states": embeds, "pooled_projections": pooled}
