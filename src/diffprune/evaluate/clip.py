"""CLIP score and PickScore from locally provided transformers CLIP weights (nothing is downloaded).

CLIP score follows the usual definition, ``100 * max(cos(image, text), 0)`` averaged over images (as in
torchmetrics); PickScore is a CLIP model fine-tuned on human preferences whose score is
``logit_scale * cos(image, text)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import DiffpruneError, first_line


def check_clip_folder(path: str | Path | None, what: str, option: str) -> Path:
    """The CLIP folder at ``path``, or one clear error naming the option to set."""
    if not path:
        raise DiffpruneError(f"{what} needs local CLIP weights: pass {option} PATH (a transformers CLIP folder)")
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise DiffpruneError(f"{what}: no CLIP model at {folder} (expected a transformers folder with config.json)")
    return folder


def load_clip(path: str | Path | None, what: str, option: str, processor_path: str | Path | None = None):
    """``(CLIPModel, CLIPProcessor)`` from local folders; one clear error if they are missing."""
    folder = check_clip_folder(path, what, option)
    from transformers import CLIPModel, CLIPProcessor

    try:
        model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
        processor = CLIPProcessor.from_pretrained(Path(processor_path or folder).expanduser(), local_files_only=True)
    except Exception as e:  # a user's folder: report, do not raise a traceback
        raise DiffpruneError(f"{what}: cannot load CLIP from {folder}: {first_line(e)}") from None
    return model, processor


def embed(model, processor, images: torch.Tensor, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = [(img.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy() for img in images]
    inputs = processor(text=list(captions), images=pixels, return_tensors="pt", padding=True, truncation=True)
    with torch.no_grad():
        img = model.get_image_features(pixel_values=inputs["pixel_values"])
        txt = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"))
    # transformers 5 returns model outputs whose pooled field holds the projected embedding
    img, txt = (x if isinstance(x, torch.Tensor) else x.pooler_output for x in (img, txt))
    return torch.nn.functional.normalize(img, dim=-1), torch.nn.functional.normalize(txt, dim=-1)


def _cosines(model, processor, images: torch.Tensor, captions: Sequence[str], batch_size: int) -> torch.Tensor:
    if len(images) != len(captions):
        raise DiffpruneError(f"{len(images)} images but {len(captions)} captions")
    out = []
    for i in range(0, len(images), batch_size):
        img, txt = embed(model, processor, images[i:i + batch_size], captions[i:i + batch_size])
        out.append((img * txt).sum(-1))
    return torch.cat(out)


def clip_score(images: torch.Tensor, captions: Sequence[str], model_path=None, batch_size: int = 32,
               loaded=None) -> float:
    """CLIP score of images (``(N, 3, H, W)`` in [0, 1]) against their captions; ``loaded`` is an already
    loaded ``(model, processor)``."""
    model, processor = loaded or load_clip(model_path, "CLIP score", "--clip-model")
    return float((100 * _cosines(model, processor, images, captions, batch_size).clamp_min(0)).mean())


def pick_score(images: torch.Tensor, captions: Sequence[str], model_path=None, processor_path=None,
               batch_size: int = 32, loaded=None) -> float:
    """Mean PickScore; ``processor_path`` defaults to the model folder (PickScore ships CLIP-H's processor)."""
    model, processor = loaded or load_clip(model_path, "PickScore", "--pickscore-model", processor_path)
    scale = float(model.logit_scale.detach().exp())
    return float((scale * _cosines(model, processor, images, captions, batch_size)).mean())
