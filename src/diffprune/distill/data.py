"""Training data for distillation, as VAE latents (encoded once, cacheable on disk) and captions.

Three sources:

- :func:`shapes_data`: renders of the shapes world's training split (the testbed's own data; held-out
  colour-shape combinations are never drawn);
- :func:`folder_data`: an image-caption folder as diffusers' ``train_text_to_image`` reads it (an
  ``imagefolder`` with ``metadata.jsonl``) or a ``datasets`` folder written by ``save_to_disk`` (needs the
  ``datasets`` package: ``pip install 'diffprune[data]'``);
- :func:`prompt_data`: prompts only — the teacher draws its own training latents (data-free distillation).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from diffprune.anatomy import call_options, geometry, has_unet
from diffprune.errors import DiffpruneError
from diffprune.progress import pipeline_bar_disabled

from .denoising import unpack


@dataclass
class DistillData:
    """Unscaled VAE latent means and standard deviations (a sample is ``mean + std * noise``, times the VAE's
    scaling factor) and one caption per latent."""

    means: torch.Tensor
    stds: torch.Tensor
    captions: list[str]
    source: str

    def __post_init__(self) -> None:
        if len(self.means) != len(self.captions) or self.means.shape != self.stds.shape:
            raise DiffpruneError("distillation data: one latent mean, one std and one caption per sample")
        if len(self.captions) == 0:
            raise DiffpruneError("distillation data is empty")

    def __len__(self) -> int:
        return len(self.captions)

    def save(self, path: str | Path) -> Path:
        """Cache to one safetensors file (captions in its metadata)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({"means": self.means.contiguous(), "stds": self.stds.contiguous()}, str(tmp),
                  metadata={"captions": json.dumps(self.captions), "source": self.source})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "DistillData":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                return cls(f.get_tensor("means"), f.get_tensor("stds"), json.loads(meta["captions"]),
                           meta.get("source", str(path)))
        except (OSError, KeyError, ValueError, json.JSONDecodeError) as e:
            raise DiffpruneError(f"{path} is not a distillation latent cache: {e}") from None


@torch.no_grad()
def encode_images(vae, images: torch.Tensor, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """``images`` in [0, 1], (N, 3, H, W) -> unscaled latent means and stds."""
    device, dtype = next(vae.parameters()).device, next(vae.parameters()).dtype
    means, stds = [], []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device, dtype) * 2 - 1
        encoded = vae.encode(x)
        dist = getattr(encoded, "latent_dist", None)
        if dist is None:  # a deterministic autoencoder (Sana's DC-AE): the latent itself, no spread
            means.append(encoded.latent.float().cpu())
            stds.append(torch.zeros_like(means[-1]))
            continue
        means.append(dist.mean.float().cpu())
        stds.append(dist.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


def shapes_data(pipe, n: int = 20_000, seed: int = 0, two_object_prob: float = 0.4) -> DistillData:
    """``n`` renders of the shapes world's training split, encoded with ``pipe``'s VAE."""
    from diffprune.testbed.data import render_images, sample_scenes, to_float

    items = sample_scenes(n, seed, "train", two_object_prob)
    means, stds = encode_images(pipe.vae, to_float(render_images(items)))
    return DistillData(means, stds, [scene.caption for scene, _ in items], f"shapes world, train split, seed {seed}")


def _columns(dataset, caption_column: str | None) -> tuple[str, str]:
    from datasets import Image

    images = [name for name, feature in dataset.features.items() if isinstance(feature, Image)]
    if not images:
        raise DiffpruneError("the data set has no image column")
    texts = [c for c in (caption_column, "text", "caption", "prompt") if c and c in dataset.column_names]
    if not texts:
        raise DiffpruneError(f"the data set has no caption column (columns: {', '.join(dataset.column_names)}); "
                             "name it with --caption-column")
    return images[0], texts[0]


def folder_data(pipe, folder: str | Path, *, resolution: int, caption_column: str | None = None,
                limit: int | None = None, batch_size: int = 16) -> DistillData:
    """An image-caption folder (``imagefolder`` with ``metadata.jsonl``, or ``save_to_disk`` output), centre-cropped
    to ``resolution`` and encoded with ``pipe``'s VAE."""
    try:
        import datasets
    except ImportError:
        raise DiffpruneError("image-caption folders need the datasets package: pip install 'diffprune[data]'") from None
    import numpy as np

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DiffpruneError(f"no data folder at {folder}")
    if (folder / "dataset_info.json").is_file() or (folder / "state.json").is_file():
        dataset = datasets.load_from_disk(str(folder))
        if isinstance(dataset, datasets.DatasetDict):
            dataset = dataset["train"]
    else:
        dataset = datasets.load_dataset("imagefolder", data_dir=str(folder), split="train")
    image_col, text_col = _columns(dataset, caption_column)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    means, stds, captions = [], [], []
    for start in range(0, count, batch_size):
        rows = dataset[start:min(count, start + batch_size)]
        pixels = []
        for image in rows[image_col]:
            image = image.convert("RGB")
            scale = resolution / min(image.size)
            image = image.resize((max(resolution, round(image.width * scale)),
                                  max(resolution, round(image.height * scale))))
            left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
            image = image.crop((left, top, left + resolution, top + resolution))
            pixels.append(torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255)
        m, s = encode_images(pipe.vae, torch.stack(pixels))
        means.append(m)
        stds.append(s)
        captions += [str(c) for c in rows[text_col]]
    return DistillData(torch.cat(means), torch.cat(stds), captions, str(folder))


@torch.no_grad()
def prompt_data(pipe, prompts: Sequence[str], *, steps: int = 20, guidance_scale: float = 5.0, seed: int = 0,
                batch_size: int = 16) -> DistillData:
    """Data-free: the teacher ``pipe`` draws one latent per prompt (prompt ``k`` from seed ``seed + k``)."""
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise DiffpruneError("no prompts to draw training latents from")
    scaling = float(pipe.vae.config.scaling_factor)
    shift = float(pipe.vae.config.get("shift_factor") or 0.0)
    g = geometry(pipe)
    side = g.latent_side if has_unet(pipe) else g.resolution // g.vae_scale_factor
    latents = []
    with pipeline_bar_disabled(pipe):
        for i in range(0, len(prompts), batch_size):
            batch = prompts[i:i + batch_size]
            generators = [torch.Generator().manual_seed(seed + i + k) for k in range(len(batch))]
            out = pipe(batch, num_inference_steps=steps, guidance_scale=guidance_scale, generator=generators,
                       output_type="latent", height=g.resolution, width=g.resolution, **call_options(pipe))
            drawn = out.images.float().cpu()
            if drawn.ndim == 3:  # Flux hands back its packed 2x2 tokens
                drawn = unpack(drawn, side, side)
            latents.append(drawn / scaling + shift)
    means = torch.cat(latents)
    return DistillData(means, torch.zeros_like(means), list(prompts), f"drawn by the teacher from {len(prompts)} prompts")


def check_data_spec(spec: str) -> None:
    """What can be checked of a data spec before any model work: its form, and that its file or folder exists."""
    if spec == "shapes" or spec.startswith("shapes:"):
        count = spec.partition(":")[2]
        if count and not (count.isdigit() and int(count) > 0):
            raise DiffpruneError(f"data 'shapes:N' needs a positive number of images, got '{count}'")
    elif spec.startswith("prompts:"):
        if not Path(spec.partition(":")[2]).expanduser().is_file():
            raise DiffpruneError(f"no prompt file {spec.partition(':')[2]}")
    elif not Path(spec).expanduser().is_dir():
        raise DiffpruneError(f"no data folder at {spec} (or give shapes[:N] or prompts:FILE)")


def data_from_spec(spec: str, teacher, *, seed: int = 0, limit: int | None = None, resolution: int | None = None,
                   caption_column: str | None = None) -> DistillData:
    """``shapes[:N]`` (the shapes world, N images, default 20 000), ``prompts:FILE`` (the teacher draws one latent
    per line) or an image-caption folder; ``limit`` caps the number of samples (e.g. for a quick check)."""
    check_data_spec(spec)
    if spec == "shapes" or spec.startswith("shapes:"):
        n = int(spec.partition(":")[2] or 20_000)
        return shapes_data(teacher, n=min(n, limit) if limit else n, seed=seed)
    if spec.startswith("prompts:"):
        from diffprune.prompt_files import read_prompt_file

        return prompt_data(teacher, read_prompt_file(spec.partition(":")[2])[:limit], seed=seed)
    from diffprune.anatomy import geometry

    return folder_data(teacher, spec, resolution=resolution or geometry(teacher).resolution,
                       caption_column=caption_column, limit=limit)
