"""Published architectures as JSON, and random builds of them.

U-Nets: SD-1.5, SD-2.1, SD-XL. Diffusion transformers: PixArt-Sigma, SD3-medium, SD3.5-medium/large, FLUX.1-schnell/dev,
Sana 600M/1600M. Plus tiny test variants of each block structure. ``random:<arch>`` pipelines have the exact module
structure and parameter counts of the published models with seeded random weights, built on any device (``meta`` for
FLOPs and parameter counts without memory), with offline tokenizers of the right kind (CLIP, T5, Gemma).
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import torch

from diffprune.errors import DiffpruneError

from .family import Family, detect_family  # noqa: F401  (re-exported)

_TEXT_ENCODER_KEYS = ("text_encoder", "text_encoder_2", "text_encoder_3")


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


def denoiser_key(spec: dict) -> str:
    """``"unet"`` or ``"transformer"``: the component of an architecture that denoises."""
    return "transformer" if "transformer" in spec else "unet"


def _diffusers_model(spec: dict):
    import diffusers

    return getattr(diffusers, spec["_class_name"]).from_config(_config(spec))


def build_denoiser(name: str, *, seed: int = 0, device: str | torch.device = "cpu"):
    """Only the U-Net or transformer of ``name``, with the same seeded weights :func:`build_components` gives it
    (it is built first there), without allocating the text encoders and VAE."""
    spec = arch_spec(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            model = _diffusers_model(spec[denoiser_key(spec)])
    return model.eval().requires_grad_(False)


def build_unet(name: str, *, seed: int = 0, device: str | torch.device = "cpu"):
    """Only the U-Net of ``name`` (a U-Net architecture; see :func:`build_denoiser` for any)."""
    if denoiser_key(arch_spec(name)) != "unet":
        raise DiffpruneError(f"'{name}' is a transformer (DiT) architecture; it has no U-Net")
    return build_denoiser(name, seed=seed, device=device)


def _text_encoder(spec: dict, eos_id: int):
    import transformers

    cls = getattr(transformers, spec["_class_name"])
    cfg = _config(spec)
    model_type = cfg.pop("model_type", None)
    if model_type is None:  # the SD-1/2/XL specs: CLIP text configs without a model_type
        if cfg.get("eos_token_id") is None:
            cfg["eos_token_id"] = eos_id
        return cls(transformers.CLIPTextConfig(**cfg))
    if model_type == "clip_text_model" and cfg.get("eos_token_id") is None:
        cfg["eos_token_id"] = eos_id
    return cls(transformers.AutoConfig.for_model(model_type, **cfg))


def tokenizer_kinds(spec: dict) -> dict[str, str]:
    """Tokenizer slot -> kind (``clip``, ``t5``, ``gemma``) of an architecture."""
    if "tokenizers" in spec:
        return dict(spec["tokenizers"])
    kinds = {"tokenizer": "clip"}
    if "text_encoder_2" in spec:
        kinds["tokenizer_2"] = "clip"
    return kinds


def build_components(name: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                     seed: int = 0) -> dict:
    """Instantiate every component of ``name`` with seeded random weights.

    The global RNG is left untouched. On the ``meta`` device nothing is allocated, so even Flux builds
    in seconds. Tokenizers are built offline (:mod:`diffprune.archs.tokenizer`).
    """
    import diffusers

    from .tokenizer import build_any_tokenizer, build_tokenizer

    spec = arch_spec(name)
    eos_id = build_tokenizer().eos_token_id
    models = [denoiser_key(spec), "vae", *_TEXT_ENCODER_KEYS]
    parts: dict = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            for key in models:
                if key not in spec:
                    continue
                is_text = key.startswith("text_encoder")
                parts[key] = _text_encoder(spec[key], eos_id) if is_text else _diffusers_model(spec[key])
    for key in models:
        if key in parts:
            parts[key].eval().requires_grad_(False)
            if dtype is not None:
                parts[key].to(dtype)
    scheduler_cls = getattr(diffusers, spec["scheduler"]["_class_name"])
    parts["scheduler"] = scheduler_cls.from_config(_config(spec["scheduler"]))
    for slot, kind in tokenizer_kinds(spec).items():
        parts[slot] = build_any_tokenizer(kind)
    return parts


def build_pipeline(name: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                   seed: int = 0):
    """A complete diffusers pipeline of architecture ``name`` with seeded random weights."""
    import diffusers

    spec = arch_spec(name)
    parts = build_components(name, device=device, dtype=dtype, seed=seed)
    cls = getattr(diffusers, spec["pipeline"])
    if spec["pipeline"] == "StableDiffusionXLPipeline":
        return cls(**parts, force_zeros_for_empty_prompt=True, add_watermarker=False)
    if spec["pipeline"] == "StableDiffusionPipeline":
        return cls(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return cls(**parts)
