"""Published architectures (SD-1.5, SD-2.1, SD-XL and tiny test variants) as JSON, and random builds of them.

``random:<arch>`` pipelines have the exact module structure and parameter counts of the published models
with seeded random weights, built on any device (``meta`` for FLOPs and parameter counts without memory).
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import torch

from diffprune.errors import DiffpruneError

from .family import Family, detect_family  # noqa: F401  (re-exported)

_COMPONENT_KEYS = ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler")


@lru_cache(maxsize=None)
def _read(name: str) -> str:
    return resources.files(__package__).joinpath(f"{name}.json").read_text(encoding="utf-8")


def available() -> list[str]:
    """Names accepted by ``random:<arch>``."""
    return sorted(p.name[:-5] for p in resources.files(__package__).iterdir() if p.name.endswith(".json"))


def arch_spec(name: str) -> dict:
    """The JSON description of an architecture (a fresh copy: callers may modify it)."""
    if name not in available():
        raise DiffpruneError(f"unknown architecture '{name}' (choose from {', '.join(available())})")
    return json.loads(_read(name))


def _config(spec: dict) -> dict:
    return {k: v for k, v in spec.items() if not k.startswith("_")}


def build_unet(name: str, *, seed: int = 0, device: str | torch.device = "cpu"):
    """Only the U-Net of ``name``, with the same seeded weights :func:`build_components` gives it (it is built
    first there), without allocating the text encoders and VAE."""
    import diffusers

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            unet = diffusers.UNet2DConditionModel.from_config(_config(arch_spec(name)["unet"]))
    return unet.eval().requires_grad_(False)


def _text_encoder(spec: dict, eos_id: int):
    import transformers

    cls = getattr(transformers, spec["_class_name"])
    cfg = _config(spec)
    if cfg.get("eos_token_id") is None:
        cfg["eos_token_id"] = eos_id
    return cls(transformers.CLIPTextConfig(**cfg))


def build_components(name: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                     seed: int = 0) -> dict:
    """Instantiate every component of ``name`` with seeded random weights.

    The global RNG is left untouched. On the ``meta`` device nothing is allocated, so even SD-XL builds
    in a second or two.
    """
    import diffusers

    from .tokenizer import build_tokenizer

    spec = arch_spec(name)
    tokenizer = build_tokenizer()
    eos_id = tokenizer.eos_token_id
    parts: dict = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            parts["unet"] = diffusers.UNet2DConditionModel.from_config(_config(spec["unet"]))
            parts["vae"] = diffusers.AutoencoderKL.from_config(_config(spec["vae"]))
            parts["text_encoder"] = _text_encoder(spec["text_encoder"], eos_id)
            if "text_encoder_2" in spec:
                parts["text_encoder_2"] = _text_encoder(spec["text_encoder_2"], eos_id)
    for key in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if key in parts:
            parts[key].eval().requires_grad_(False)
            if dtype is not None:
                parts[key].to(dtype)
    scheduler_cls = getattr(diffusers, spec["scheduler"]["_class_name"])
    parts["scheduler"] = scheduler_cls.from_config(_config(spec["scheduler"]))
    parts["tokenizer"] = tokenizer
    if "text_encoder_2" in parts:
        parts["tokenizer_2"] = build_tokenizer()
    return parts


def build_pipeline(name: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                   seed: int = 0):
    """A complete diffusers pipeline of architecture ``name`` with seeded random weights."""
    import diffusers

    spec = arch_spec(name)
    parts = build_components(name, device=device, dtype=dtype, seed=seed)
    if spec["pipeline"] == "StableDiffusionXLPipeline":
        pipe = diffusers.StableDiffusionXLPipeline(**parts, force_zeros_for_empty_prompt=True,
                                                   add_watermarker=False)
    else:
        pipe = diffusers.StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                                 requires_safety_checker=False)
    return pipe
