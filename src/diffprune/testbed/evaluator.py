"""The testbed's exact evaluator: a small CNN that reads every object of a shapes-world image back, cell by cell.

For each of the 3x3 grid cells it predicts whether an object sits there and, if so, its colour, shape and size.
:func:`score_scene` compares such a reading with the scene a caption asked for; :meth:`ShapesEvaluator.features`
gives the penultimate activations, the feature space of the testbed's Frechet distance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .world import COLORS, POSITIONS, SHAPES, SIZES, Scene, relation_holds

_N_CELLS = len(POSITIONS)
_HEADS = (("present", 1), ("color", len(COLORS)), ("shape", len(SHAPES)), ("size", len(SIZES)))
_PER_CELL = sum(n for _, n in _HEADS)
FEATURE_DIM = 256


@dataclass(frozen=True)
class Detection:
    """One object the evaluator found: its grid cell, attributes, and the confidence that it is there."""

    position: int
    color: str
    shape: str
    size: str
    confidence: float


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

    def read(self, images: torch.Tensor, threshold: float = 0.5, batch_size: int = 256) -> list[list[Detection]]:
        """Objects found in each image, most confident first (in batches of ``batch_size``)."""
        return [found for i in range(0, len(images), batch_size)
                for found in self._read_batch(images[i:i + batch_size], threshold)]

    @torch.no_grad()
    def _read_batch(self, images: torch.Tensor, threshold: float) -> list[list[Detection]]:
        logits = self(images)
        conf = logits["present"].sigmoid()
        color, shape, size = (logits[k].argmax(-1) for k in ("color", "shape", "size"))
        names = list(COLORS), SHAPES, list(SIZES)
        readings = []
        for b in range(images.shape[0]):
            found = [Detection(p, names[0][color[b, p]], names[1][shape[b, p]], names[2][size[b, p]],
                               float(conf[b, p])) for p in range(_N_CELLS) if conf[b, p] >= threshold]
            readings.append(sorted(found, key=lambda d: -d.confidence))
        return readings


def scene_targets(scenes: list[Scene]) -> dict[str, torch.Tensor]:
    """Training targets for :class:`ShapesEvaluator`: per cell presence, colour, shape and size indices."""
    n = len(scenes)
    present = torch.zeros(n, _N_CELLS)
    color = torch.zeros(n, _N_CELLS, dtype=torch.long)
    shape = torch.zeros_like(color)
    size = torch.zeros_like(color)
    colors, sizes = list(COLORS), list(SIZES)
    for i, scene in enumerate(scenes):
        for o in scene.objects:
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


def score_scene(scene: Scene, found: list[Detection]) -> dict[str, float]:
    """Which requested attributes an image shows, each 0 or 1 (a fraction where a scene has two objects).

    One object: the most confident detection is compared on colour, shape, size and grid position.
    Two objects: the two most confident detections are matched to the requested objects (the assignment
    agreeing on more colours and shapes wins, then the one satisfying the relation); ``position`` is whether the caption's relation holds between
    the matched cells (the caption names no cells). ``count`` is whether exactly the requested number of
    objects was found; ``all`` requires every attribute and the count.
    """
    want = scene.objects
    count = float(len(found) == len(want))
    if not found:
        result = {"color": 0.0, "shape": 0.0, "position": 0.0, "count": count, "all": 0.0}
        if len(want) == 1:
            result["size"] = 0.0
        return result
    if len(want) == 1:
        d, o = found[0], want[0]
        result = {"color": float(d.color == o.color), "shape": float(d.shape == o.shape),
                  "size": float(d.size == o.size), "position": float(d.position == o.position), "count": count}
    else:
        top = found[:2]
        best = None
        for order in ((0, 1), (1, 0)) if len(top) == 2 else ((0, None), (None, 0)):
            dets = [top[i] if i is not None else None for i in order]
            colors = [float(d is not None and d.color == o.color) for d, o in zip(dets, want)]
            shapes = [float(d is not None and d.shape == o.shape) for d, o in zip(dets, want)]
            relation = float(None not in dets and relation_holds(scene.relation, dets[0].position, dets[1].position))
            rank = (sum(colors) + sum(shapes), relation)
            if best is None or rank > best[0]:
                best = (rank, colors, shapes, relation)
        _, colors, shapes, relation = best
        result = {"color": sum(colors) / 2, "shape": sum(shapes) / 2, "position": relation, "count": count}
    result["all"] = float(all(v == 1.0 for v in result.values()))
    return result


def load_evaluator(path=None, device: str = "cpu") -> ShapesEvaluator:
    """The committed evaluator (or the weights at ``path``), in eval mode."""
    from safetensors.torch import load_file

    from .assets import evaluator_weights

    model = ShapesEvaluator()
    state = load_file(str(path or evaluator_weights()))
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.to(device).eval()
