"""The committed shapes-dit testbed: a stock PixArt-Σ pipeline folder within the size and training budgets,
trained by the default configuration of ``python -m diffprune.testbed.train_dit``."""

import json
from dataclasses import asdict

import torch

import diffprune
from diffprune.testbed.assets import WEIGHTS_DIR
from diffprune.testbed.train_dit import DitTrainConfig

DIT_DIR = WEIGHTS_DIR / "dit"


def test_dit_weights_fit_the_size_and_time_budgets():
    files = [p for p in DIT_DIR.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    assert sum(p.stat().st_size for p in files) <= 30 * 2**20
    log = json.loads((DIT_DIR / "training.json").read_text())
    assert sum(log["seconds"][k] for k in ("latents", "diffusion")) <= 3 * 3600


def test_shipped_dit_weights_come_from_the_default_training_config():
    log = json.loads((DIT_DIR / "training.json").read_text())
    assert log["config"] == json.loads(json.dumps(asdict(DitTrainConfig())))


def test_stock_diffusers_loads_the_dit_testbed_and_it_denoises():
    from diffusers import PixArtSigmaPipeline

    stock = PixArtSigmaPipeline.from_pretrained(DIT_DIR / "pipeline")
    log = json.loads((DIT_DIR / "training.json").read_text())
    assert sum(p.numel() for p in stock.transformer.parameters()) == log["transformer_params"]
    pipe = diffprune.load("shapes-dit")
    assert type(pipe).__name__ == "PixArtSigmaPipeline" and pipe.transformer.dtype == torch.float32
    images = pipe("a red circle", num_inference_steps=4, height=64, width=64, use_resolution_binning=False,
                  output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 3, 64, 64) and torch.isfinite(images).all() and images.std() > 0.05


def test_loading_shapes_dit_does_not_warn_about_its_text_encoder():
    """The PixArt pipeline holds the testbed's CLIP text encoder by design; loading it says nothing about that
    (diffusers' type check would warn), while a stock load still gets diffusers' warning."""
    import logging

    from diffusers import PixArtSigmaPipeline
    from diffusers.utils import logging as dlogging

    from diffprune.testbed.assets import dit_testbed_folder

    verbosity = dlogging.get_verbosity()
    dlogging.set_verbosity_warning()  # the tests run with diffusers' warnings off (conftest)
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    log = logging.getLogger("diffusers.pipelines.pipeline_utils")
    log.addHandler(handler)
    try:
        pipe = diffprune.load("shapes-dit")
        assert type(pipe.text_encoder).__name__ == "CLIPTextModel"
        assert not [m for m in messages if m.startswith("Expected types")]
        PixArtSigmaPipeline.from_pretrained(dit_testbed_folder())
        assert [m for m in messages if m.startswith("Expected types for text_encoder")]
    finally:
        log.removeHandler(handler)
        dlogging.set_verbosity(verbosity)
