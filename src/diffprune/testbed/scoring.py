"""Scoring rules of the shapes testbed: what share of a caption's request an evaluator reading shows."""

from __future__ import annotations

import math

from .evaluator import Detection
from .world import COLORS, SHAPES, ShapeObject, Scene, relation_holds


def _log_likelihood(d: Detection, o: ShapeObject) -> float:
    """log p(colour) + log p(shape) of the requested object at the detection (0 for hand-made readings)."""
    total = 0.0
    if d.color_probs:
        total += math.log(max(d.color_probs[list(COLORS).index(o.color)], 1e-12))
    if d.shape_probs:
        total += math.log(max(d.shape_probs[SHAPES.index(o.shape)], 1e-12))
    return total


def match_two(scene: Scene, found: list[Detection]) -> tuple[Detection | None, Detection | None]:
    """The two most confident detections assigned to the caption's two objects, without looking at cells.

    The assignment agreeing on more colours and shapes wins; a tie goes to the one under which the
    evaluator finds the requested colours and shapes more likely (its class probabilities); a remaining
    tie (hand-made readings without probabilities) to the one giving the more confident detection to the
    first-named object. One detection goes to the object it agrees with more.
    """
    top = found[:2]
    orders = ((0, 1), (1, 0)) if len(top) == 2 else ((0, None), (None, 0))
    best, best_rank = None, None
    for order in orders:
        dets = tuple(top[i] if i is not None else None for i in order)
        hits = sum(float(d.color == o.color) + float(d.shape == o.shape)
                   for d, o in zip(dets, scene.objects) if d is not None)
        rank = (hits, sum(_log_likelihood(d, o) for d, o in zip(dets, scene.objects) if d is not None))
        if best_rank is None or rank > best_rank:
            best, best_rank = dets, rank
    return best


def score_scene(scene: Scene, found: list[Detection]) -> dict[str, float]:
    """Which requested attributes an image shows, each 0 or 1 (a fraction where a scene has two objects).

    One object: the most confident detection is compared on colour, shape, size and grid cell (``position``).
    Two objects: the two most confident detections are matched to the requested objects (:func:`match_two`);
    colour and shape score 0.5 per object; ``position`` is whether the caption's relation holds between the
    matched cells (the caption names no cells; when both requested objects have the same colour and shape,
    either reading counts). ``count`` is whether exactly the requested number of objects was found; ``all``
    requires every attribute and the count.
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
        dets = match_two(scene, found)
        colors = [float(d is not None and d.color == o.color) for d, o in zip(dets, want)]
        shapes = [float(d is not None and d.shape == o.shape) for d, o in zip(dets, want)]
        relation = 0.0
        if None not in dets:
            a, b = dets[0].position, dets[1].position
            symmetric = (want[0].color, want[0].shape) == (want[1].color, want[1].shape)
            relation = float(relation_holds(scene.relation, a, b)
                             or (symmetric and relation_holds(scene.relation, b, a)))
        result = {"color": sum(colors) / 2, "shape": sum(shapes) / 2, "position": relation, "count": count}
    result["all"] = float(all(v == 1.0 for v in result.values()))
    return result
