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
