"""The testbed's exact evaluator: a small CNN that reads every object of a shapes-world image back, cell by cell.

For each of the 3x3 grid cells it predicts whether an object sits there and, if so, its colour, shape and size.
:func:`~diffprune.testbed.scoring.score_scene` compares such a reading with the scene a caption asked for;
:meth:`ShapesEvaluator.features` gives the penultimate activations, the feature space of the testbed's Frechet
distance. Besides its presence scores, :meth:`ShapesEvaluator.read` takes a pixel check's word for which cells
hold an object (:mod:`~diffprune.testbed.pixels`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .pixels import occupied_cells
from .world import COLORS, POSITIONS, SHAPES, SIZES, ShapeObject, Scene

_N_CELLS = len(POSITIONS)
_HEADS = (("present", 1), ("color", len(COLORS)), ("shape", len(SHAPES)), ("size", len(SIZES)))
_PER_CELL = sum(n for _, n in _HEADS)
FEATURE_DIM = 256


@dataclass(frozen=True)
class Detection:
    """One object the evaluator found: its grid cell, attributes, the confidence that it is there, and the
    probabilities of each colour and shape (in the order of ``COLORS`` / ``SHAPES``; empty for hand-made
    readings)."""

    position: int
    color: str
    shape: str
    size: str
    confidence: float
    color_probs: tuple[float, ...] = ()
    shape_probs: tuple[float, ...] = ()


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.GroupNorm(8, c_out), nn.SiLU())


class ShapesEvaluator(nn.Module):
    """Reads 64x64 RGB images in [0, 1] (``(B, 3, 64, 64)``); see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _block(3, 32, 2), _block(32, 64, 1), _block(64, 64, 2),
            _block(64, 64, 1), _block(64, 64, 2),  # 8x8: a flatten keeps where things are
        )
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(64 * 8 * 8, FEATURE_DIM), nn.SiLU())
        self.head = nn.Linear(FEATURE_DIM, _N_CELLS * _PER_CELL)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(self.body(images * 2 - 1))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per head, each ``(B, 9, n)`` (``present``: ``(B, 9)``)."""
        out = self.head(self.features(images)).view(-1, _N_CELLS, _PER_CELL)
        logits, start = {}, 0
        for name, n in _HEADS:
            logits[name] = out[..., start:start + n]
            start += n
        logits["present"] = logits["present"].squeeze(-1)
        return logits

    def read(self, images: torch.Tensor, threshold: float = 0.5, batch_size: int = 256,
             pixel_check: bool = True) -> list[list[Detection]]:
        """Objects found in each image, most confident first (in batches of ``batch_size``).

        A cell holds an object when its presence score reaches ``threshold`` or, with ``pixel_check``, when
        :func:`~diffprune.testbed.pixels.occupied_cells` finds a blob of object-coloured pixels centred there
        (so a degraded object just under the cut-off is still counted)."""
        return [found for i in range(0, len(images), batch_size)
                for found in self._read_batch(images[i:i + batch_size], threshold, pixel_check)]

    @torch.no_grad()
    def _read_batch(self, images: torch.Tensor, threshold: float, pixel_check: bool) -> list[list[Detection]]:
        logits = self(images)
        conf = logits["present"].sigmoid()
        color_p, shape_p = logits["color"].softmax(-1), logits["shape"].softmax(-1)
        color, shape, size = color_p.argmax(-1), shape_p.argmax(-1), logits["size"].argmax(-1)
        names = list(COLORS), SHAPES, list(SIZES)
        blobs = occupied_cells(images) if pixel_check else [set()] * images.shape[0]
        readings = []
        for b in range(images.shape[0]):
            found = [Detection(p, names[0][color[b, p]], names[1][shape[b, p]], names[2][size[b, p]],
                               float(conf[b, p]), tuple(color_p[b, p].tolist()), tuple(shape_p[b, p].tolist()))
                     for p in range(_N_CELLS) if conf[b, p] >= threshold or p in blobs[b]]
            readings.append(sorted(found, key=lambda d: (-d.confidence, d.position)))
        return readings


def scene_targets(scenes: list[Scene | tuple[ShapeObject, ...]]) -> dict[str, torch.Tensor]:
    """Training targets for :class:`ShapesEvaluator` (scenes or bare object tuples): per cell presence, colour,
    shape and size indices."""
    n = len(scenes)
    present = torch.zeros(n, _N_CELLS)
    color = torch.zeros(n, _N_CELLS, dtype=torch.long)
    shape = torch.zeros_like(color)
    size = torch.zeros_like(color)
    colors, sizes = list(COLORS), list(SIZES)
    for i, scene in enumerate(scenes):
        for o in scene.objects if isinstance(scene, Scene) else scene:
            present[i, o.position] = 1
            color[i, o.position] = colors.index(o.color)
            shape[i, o.position] = SHAPES.index(o.shape)
            size[i, o.position] = sizes.index(o.size)
    return {"present": present, "color": color, "shape": shape, "size": size}


def evaluator_loss(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    present = targets["present"]
    loss = nn.functional.binary_cross_entropy_with_logits(logits["present"], present)
    mask = present.bool()
    for key in ("color", "shape", "size"):
        loss = loss + nn.functional.cross_entropy(logits[key][mask], targets[key][mask])
    return loss


def load_evaluator(path=None, device: str = "cpu") -> ShapesEvaluator:
    """The committed evaluator (or the weights at ``path``), in eval mode."""
    from safetensors.torch import load_file

    from .assets import evaluator_weights

    model = ShapesEvaluator()
    state = load_file(str(path or evaluator_weights()))
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.to(device).eval()
