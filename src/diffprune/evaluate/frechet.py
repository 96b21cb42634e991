"""Frechet distance between two image sets in a feature space (the maths of FID), via torchmetrics."""

from __future__ import annotations

import torch
from torch import nn


class _Features(nn.Module):
    """Adapts a feature function to torchmetrics' custom-extractor interface."""

    def __init__(self, fn, num_features: int) -> None:
        super().__init__()
        self.fn = fn
        self.num_features = num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fn(images)


@torch.no_grad()
def frechet_distance(fn, num_features: int, real: torch.Tensor, fake: torch.Tensor, batch_size: int = 256) -> float:
    """FD between the Gaussians fitted to ``fn(real)`` and ``fn(fake)`` (images in [0, 1]; 2 or more each)."""
    if min(len(real), len(fake)) < 2:
        from ..errors import DiffpruneError

        raise DiffpruneError("a Frechet distance needs at least 2 images per set")
    from torchmetrics.image.fid import FrechetInceptionDistance

    # every process holds all images after the gather: summing metric states across processes would double count
    metric = FrechetInceptionDistance(feature=_Features(fn, num_features), reset_real_features=True,
                                      sync_on_compute=False)
    for images, is_real in ((real, True), (fake, False)):
        for i in range(0, len(images), batch_size):
            metric.update(images[i:i + batch_size], real=is_real)
    return float(metric.compute())
