"""A pixel check of which grid cells of a shapes-world image hold an object, independent of the evaluator's CNN.

The world's objects are saturated colours on a light, nearly uniform background. A pixel belongs to the
foreground when one of its channels differs from the image's background colour (the per-channel median: the
background always covers most of the frame) by more than ``threshold``; foreground pixels are grouped into
8-connected blobs, and a blob of at least ``min_area`` pixels counts as an object in the grid cell of its
centroid. The evaluator uses it as a second opinion on presence: a faded or degraded object whose presence
score falls just under the cut-off is still counted when its pixels are there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .world import IMAGE_SIZE

#: a small star (the smallest object the world draws) covers about 55 pixels at 64x64
MIN_AREA = 24
THRESHOLD = 0.25  # in [0, 1] units of a channel: about 64 of 255


def foreground(images: torch.Tensor, threshold: float = THRESHOLD) -> torch.Tensor:
    """``(B, H, W)`` bool mask of pixels that differ from the image's background colour, for images in [0, 1]."""
    background = images.flatten(2).median(dim=2).values[:, :, None, None]
    return (images - background).abs().amax(dim=1) > threshold


def label_blobs(mask: torch.Tensor) -> torch.Tensor:
    """8-connected components of a ``(B, H, W)`` bool mask: ``(B, H, W)`` long labels, 0 for background.

    Each foreground pixel starts with its own label and takes the largest label among its foreground
    neighbours until nothing changes (at most one step per pixel of the longest path through a blob).
    """
    b, h, w = mask.shape
    ids = torch.arange(1, h * w + 1, dtype=torch.float32).view(1, h, w).expand(b, h, w)
    labels = torch.where(mask, ids, torch.zeros(()))
    while True:
        grown = F.max_pool2d(labels[:, None], 3, stride=1, padding=1)[:, 0]
        grown = torch.where(mask, grown, torch.zeros(()))
        if torch.equal(grown, labels):
            return labels.long()
        labels = grown


def cell_of(x: float, y: float, size: int = IMAGE_SIZE) -> int:
    """Grid cell (row-major 0..8) of the point ``(x, y)`` in pixels: the image split into thirds."""
    col = min(2, max(0, int(3 * x / size)))
    row = min(2, max(0, int(3 * y / size)))
    return 3 * row + col


def occupied_cells(images: torch.Tensor, threshold: float = THRESHOLD, min_area: int = MIN_AREA) -> list[set[int]]:
    """For each image in ``(B, 3, H, W)`` (floats in [0, 1]), the grid cells holding the centroid of a blob of at
    least ``min_area`` foreground pixels."""
    labels = label_blobs(foreground(images, threshold))
    h, w = labels.shape[1:]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    out = []
    for lab in labels:
        cells = set()
        for value in lab.unique():
            if value == 0:
                continue
            blob = lab == value
            area = int(blob.sum())
            if area >= min_area:
                cells.add(cell_of(float(xs[blob].mean()), float(ys[blob].mean()), w))
        out.append(cells)
    return out
