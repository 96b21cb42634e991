"""CLIP score, PickScore and FID mechanics on a tiny random CLIP built here (real weights are user-provided)."""

import pytest
import torch

from diffprune.archs.tokenizer import build_tokenizer
from diffprune.errors import DiffpruneError
from diffprune.evaluate.clip import clip_score, pick_score
from diffprune.evaluate.fid import fid, load_image_folder

CAPTIONS = ["a red circle", "a blue square", "a green star"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tok = build_tokenizer(["red", "blue", "green", "circle", "square", "star"])
    ids = dict(eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, pad_token_id=tok.eos_token_id)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, **ids),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-clip")
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=tok)
    processor.save_pretrained(folder)
    return folder


def _reference_cosines(folder, images):
    """Cosines through CLIPModel's own forward pass (logits_per_image = scale * cos)."""
    from transformers import CLIPModel, CLIPProcessor

    model, proc = CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(folder)
    pixels = [(im.permute(1, 2, 0) * 255).round().byte().numpy() for im in images]
    inputs = proc(text=CAPTIONS, images=pixels, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**inputs).logits_per_image.diagonal()
    return logits / model.logit_scale.exp().detach(), logits


def test_clip_score_and_pickscore_match_clip_forward(tiny_clip):
    images = torch.rand(3, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    cos, logits = _reference_cosines(tiny_clip, images)
    assert clip_score(images, CAPTIONS, tiny_clip, batch_size=2) == pytest.approx(
        float((100 * cos.clamp_min(0)).mean()), abs=1e-4)
    assert pick_score(images, CAPTIONS, tiny_clip) == pytest.approx(float(logits.mean()), abs=1e-4)


def test_clip_errors_are_one_line(tiny_clip, tmp_path):
    images = torch.rand(3, 3, 32, 32)
    with pytest.raises(DiffpruneError, match="--clip-model"):
        clip_score(images, CAPTIONS, None)
    with pytest.raises(DiffpruneError, match="no CLIP model"):
        clip_score(images, CAPTIONS, tmp_path)
    with pytest.raises(DiffpruneError, match="3 images but 2 captions"):
        clip_score(images, CAPTIONS[:2], tiny_clip)


def test_fid_needs_local_weights(tmp_path):
    images = torch.rand(4, 3, 32, 32)
    with pytest.raises(DiffpruneError, match="--inception-weights"):
        fid(images, images, None)
    with pytest.raises(DiffpruneError, match="no Inception weights"):
        fid(images, images, tmp_path / "missing.pth")


def test_load_image_folder(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (20, 20), (i * 100, 0, 0)).save(tmp_path / f"{i}.png")
    images = load_image_folder(tmp_path, size=16)
    assert images.shape == (3, 3, 16, 16) and images[2, 0].mean().item() == pytest.approx(200 / 255, abs=1e-3)
    with pytest.raises(DiffpruneError, match="at least 2"):
        load_image_folder(_one_image(tmp_path))


def _one_image(tmp_path):
    from PIL import Image

    folder = tmp_path / "one"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    return folder
