"""The shapes world: procedural 64x64 scenes of one or two coloured shapes, rendered deterministically from a
seed, with the caption that describes each scene and fixed train / held-out splits.

Held-out scenes contain a (colour, shape) combination that never appears in training, so a model is tested
on composing attributes it has only seen apart (the idea behind GenEval).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

IMAGE_SIZE = 64
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
    "yellow": (235, 205, 35), "purple": (140, 60, 180), "orange": (245, 135, 25),
}
SHAPES = ("circle", "square", "triangle", "star")
SIZES: dict[str, int] = {"small": 14, "large": 26}  # side of the bounding box in pixels
POSITIONS = ("top left", "top center", "top right", "center left", "center", "center right",
             "bottom left", "bottom center", "bottom right")
RELATIONS = ("to the left of", "to the right of", "above", "below")
_CELL_CENTERS = (12, 32, 52)
_BACKGROUND = (236, 233, 226)
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapeObject:
    color: str
    shape: str
    size: str
    position: int  # index into POSITIONS (row-major 3x3 grid)

    def __post_init__(self) -> None:
        if self.color not in COLORS or self.shape not in SHAPES or self.size not in SIZES:
            raise ValueError(f"unknown attribute in {self}")
        if not 0 <= self.position < len(POSITIONS):
            raise ValueError(f"position must be 0..{len(POSITIONS) - 1}, got {self.position}")

    @property
    def row(self) -> int:
        return self.position // 3

    @property
    def col(self) -> int:
        return self.position % 3


@dataclass(frozen=True)
class Scene:
    """One object, or two objects whose caption states their relation (first object relative to second)."""

    objects: tuple[ShapeObject, ...]
    relation: str | None = None

    def __post_init__(self) -> None:
        if len(self.objects) == 1 and self.relation is None:
            return
        if len(self.objects) != 2 or self.relation not in RELATIONS:
            raise ValueError("a scene has one object, or two objects and a relation from RELATIONS")
        a, b = self.objects
        if not relation_holds(self.relation, a.position, b.position):
            raise ValueError(f"positions of {self} do not satisfy '{self.relation}'")

    @property
    def caption(self) -> str:
        if self.relation is None:
            o = self.objects[0]
            return f"a {o.size} {o.color} {o.shape} in the {POSITIONS[o.position]}"
        a, b = self.objects
        return f"{_article(a.color)} {a.color} {a.shape} {self.relation} {_article(b.color)} {b.color} {b.shape}"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def relation_holds(relation: str, first: int, second: int) -> bool:
    """Whether grid cell ``first`` stands in ``relation`` to grid cell ``second``."""
    (r1, c1), (r2, c2) = divmod(first, 3), divmod(second, 3)
    return {"to the left of": c1 < c2, "to the right of": c1 > c2, "above": r1 < r2, "below": r1 > r2}[relation]


def is_heldout_pair(color: str, shape: str) -> bool:
    """The held-out (colour, shape) combinations: red circle, green square, blue triangle, yellow star."""
    return (list(COLORS).index(color) - SHAPES.index(shape)) % len(COLORS) == 0


def split_of(scene: Scene) -> str:
    """``"heldout"`` if any object has a held-out colour-shape combination, else ``"train"``."""
    return "heldout" if any(is_heldout_pair(o.color, o.shape) for o in scene.objects) else "train"


def single_object_scenes() -> list[Scene]:
    """Every one-object scene (6 colours x 4 shapes x 2 sizes x 9 positions = 432), in a fixed order."""
    return [Scene((ShapeObject(c, s, z, p),)) for c in COLORS for s in SHAPES for z in SIZES
            for p in range(len(POSITIONS))]


def _random_pair(rng: random.Random, split: str) -> tuple[str, str]:
    while True:
        color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
        if (split == "heldout") == is_heldout_pair(color, shape) or split == "any":
            return color, shape


def sample_scene(rng: random.Random, split: str = "train", two_object_prob: float = 0.3) -> Scene:
    """Draw a scene of ``split`` (``"train"``, ``"heldout"`` or ``"any"``) from ``rng``.

    Two-object scenes use small objects in distinct grid cells; for ``"heldout"`` the first object carries
    the held-out combination and the second may be anything.
    """
    if split not in ("train", "heldout", "any"):
        raise ValueError(f"unknown split '{split}'")
    if rng.random() >= two_object_prob:
        color, shape = _random_pair(rng, split)
        return Scene((ShapeObject(color, shape, rng.choice(list(SIZES)), rng.randrange(len(POSITIONS))),))
    relation = rng.choice(RELATIONS)
    pa, pb = rng.choice([(a, b) for a in range(len(POSITIONS)) for b in range(len(POSITIONS))
                         if relation_holds(relation, a, b)])
    ca, sa = _random_pair(rng, split)
    cb, sb = _random_pair(rng, "train" if split == "train" else "any")
    return Scene((ShapeObject(ca, sa, "small", pa), ShapeObject(cb, sb, "small", pb)), relation)


def sample_layout(rng: random.Random, max_objects: int = 3) -> tuple[ShapeObject, ...]:
    """1 to ``max_objects`` objects of any colour, shape and size in distinct grid cells, no caption: what the
    evaluator trains on, so that it has seen extra objects (next to large ones too) and knows to count them.

    Two large objects are never placed in neighbouring cells (they would overlap); a large object next to a
    small one is allowed.
    """
    while True:
        cells = rng.sample(range(len(POSITIONS)), rng.randint(1, max_objects))
        sizes = [rng.choice(list(SIZES)) for _ in cells]
        large = [c for c, z in zip(cells, sizes) if z == "large"]
        if all(max(abs(a // 3 - b // 3), abs(a % 3 - b % 3)) > 1 for i, a in enumerate(large) for b in large[i + 1:]):
            break
    return tuple(ShapeObject(*_random_pair(rng, "any"), size, cell) for cell, size in zip(cells, sizes))


def _polygon(shape: str, cx: float, cy: float, half: float) -> list[tuple[float, float]]:
    if shape == "square":
        return [(cx - half, cy - half), (cx + half, cy - half), (cx + half, cy + half), (cx - half, cy + half)]
    if shape == "triangle":
        return [(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)]
    # a five-pointed star: outer points on the box's circle, inner points at 40 % of its radius
    points = []
    for k in range(10):
        radius = half if k % 2 == 0 else 0.4 * half
        angle = -math.pi / 2 + k * math.pi / 5
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points


def render(scene: Scene | tuple[ShapeObject, ...], seed: int = 0) -> Image.Image:
    """Draw ``scene`` (or a bare tuple of objects) as a 64x64 RGB image; ``seed`` sets small jitters of position,
    size and background."""
    objects = scene.objects if isinstance(scene, Scene) else scene
    rng = random.Random(seed)
    scale = _SUPERSAMPLE
    shade = rng.randint(-8, 8)
    background = tuple(min(255, max(0, c + shade)) for c in _BACKGROUND)
    canvas = Image.new("RGB", (IMAGE_SIZE * scale, IMAGE_SIZE * scale), background)
    draw = ImageDraw.Draw(canvas)
    for obj in objects:
        half = (SIZES[obj.size] + rng.uniform(-1.5, 1.5)) / 2
        cx = _CELL_CENTERS[obj.col] + rng.uniform(-2.5, 2.5)
        cy = _CELL_CENTERS[obj.row] + rng.uniform(-2.5, 2.5)
        # keep the object inside the frame whatever the jitter
        cx, cy = (min(IMAGE_SIZE - half - 1, max(half + 1, v)) for v in (cx, cy))
        color = COLORS[obj.color]
        if obj.shape == "circle":
            box = [(cx - half) * scale, (cy - half) * scale, (cx + half) * scale, (cy + half) * scale]
            draw.ellipse(box, fill=color)
        else:
            draw.polygon([(x * scale, y * scale) for x, y in _polygon(obj.shape, cx, cy, half)], fill=color)
    return canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
