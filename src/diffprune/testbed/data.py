"""Seeded data sets of rendered shapes-world scenes, and the image augmentations the evaluator trains with."""

from __future__ import annotations

import random

import numpy as np
import torch

from .world import Scene, ShapeObject, render, sample_layout, sample_scene


def sample_scenes(n: int, seed: int, split: str = "train", two_object_prob: float = 0.3) -> list[tuple[Scene, int]]:
    """``n`` (scene, render seed) pairs drawn from ``split``; the same ``seed`` gives the same list."""
    rng = random.Random(seed)
    return [(sample_scene(rng, split, two_object_prob), rng.randrange(2**31)) for _ in range(n)]


def sample_layouts(n: int, seed: int, max_objects: int = 3) -> list[tuple[tuple[ShapeObject, ...], int]]:
    """``n`` (objects, render seed) pairs of 1 to ``max_objects`` objects (:func:`~.world.sample_layout`)."""
    rng = random.Random(seed)
    return [(sample_layout(rng, max_objects), rng.randrange(2**31)) for _ in range(n)]


def extra_object_items(n: int, seed: int) -> list[tuple[Scene, tuple[ShapeObject, ...], int]]:
    """``n`` (one-object held-out scene, the objects actually drawn, render seed) triples: a large object with an
    extra small object in a neighbouring cell. A reader that counts right flags every one as wrong."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        scene = sample_scene(rng, "heldout", two_object_prob=0.0)
        big = ShapeObject(scene.objects[0].color, scene.objects[0].shape, "large", scene.objects[0].position)
        r, c = big.row, big.col
        cells = [3 * (r + dr) + c + dc for dr in (-1, 0, 1) for dc in (-1, 0, 1)
                 if (dr or dc) and 0 <= r + dr < 3 and 0 <= c + dc < 3]
        color, shape = sample_layout(rng, 1)[0].color, sample_layout(rng, 1)[0].shape
        extra = ShapeObject(color, shape, "small", rng.choice(cells))
        out.append((Scene((big,)), (big, extra), rng.randrange(2**31)))
    return out


def render_images(items: list[tuple[Scene | tuple[ShapeObject, ...], int]]) -> torch.Tensor:
    """Render (scene or objects, seed) pairs into a ``(N, 3, 64, 64)`` uint8 tensor."""
    arrays = np.stack([np.asarray(render(scene, seed)) for scene, seed in items])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous()


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, 3, H, W)`` to float in [0, 1]."""
    return images.float() / 255.0


def _gaussian_kernels(sigmas: torch.Tensor, size: int = 5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    k = torch.exp(-(x[None, :] ** 2) / (2 * sigmas[:, None].clamp_min(1e-3) ** 2))
    return k / k.sum(-1, keepdim=True)  # (B, size)


def augment(images: torch.Tensor, generator: torch.Generator, max_noise: float = 0.08,
            max_blur: float = 1.2, max_shift: float = 0.06) -> torch.Tensor:
    """Random Gaussian blur, brightness / contrast shift and pixel noise, per image, for float images in [0, 1].

    Generated images are softer and noisier than renders; the evaluator must read both the same way.
    """
    b = images.shape[0]
    sigmas = torch.rand(b, generator=generator) * max_blur
    k = _gaussian_kernels(sigmas)  # separable blur, one kernel per image
    pad = k.shape[1] // 2
    x = images.reshape(1, b * 3, *images.shape[2:])
    kh = k.repeat_interleave(3, 0)[:, None, None, :]
    x = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (pad, pad, 0, 0), mode="replicate"), kh, groups=b * 3)
    kv = k.repeat_interleave(3, 0)[:, None, :, None]
    x = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 0, pad, pad), mode="replicate"), kv, groups=b * 3)
    x = x.reshape(images.shape)
    shift = (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * max_shift
    gain = 1 + (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * max_shift
    x = (x - 0.5) * gain + 0.5 + shift
    x = x + torch.randn(x.shape, generator=generator) * (torch.rand(b, 1, 1, 1, generator=generator) * max_noise)
    return x.clamp(0, 1)
