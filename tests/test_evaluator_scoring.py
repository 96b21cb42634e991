"""Scoring rules of the shapes evaluator, on hand-made readings (no weights needed)."""

import torch

from diffprune.testbed.evaluator import Detection, ShapesEvaluator, evaluator_loss, scene_targets
from diffprune.testbed.scoring import score_scene
from diffprune.testbed.world import POSITIONS, Scene, ShapeObject

ONE = Scene((ShapeObject("red", "circle", "large", 0),))
TWO = Scene((ShapeObject("blue", "triangle", "small", 0), ShapeObject("green", "star", "small", 2)),
            "to the left of")


def det(position, color, shape, size="small", confidence=0.9):
    return Detection(position, color, shape, size, confidence)


def test_one_object_all_right():
    assert score_scene(ONE, [det(0, "red", "circle", "large")]) == {
        "color": 1.0, "shape": 1.0, "size": 1.0, "position": 1.0, "count": 1.0, "all": 1.0}


def test_one_object_wrong_cell_and_extra_object():
    found = [det(4, "red", "circle", "large", 0.95), det(8, "blue", "square", "small", 0.6)]
    assert score_scene(ONE, found) == {
        "color": 1.0, "shape": 1.0, "size": 1.0, "position": 0.0, "count": 0.0, "all": 0.0}


def test_nothing_found_scores_zero():
    assert score_scene(ONE, [])["all"] == 0.0
    assert score_scene(TWO, []) == {"color": 0.0, "shape": 0.0, "position": 0.0, "count": 0.0, "all": 0.0}


def test_two_objects_matched_in_either_order_and_relation_from_cells():
    # drawn in other cells than the training scene, listed in the other order: the relation still holds
    found = [det(5, "green", "star"), det(3, "blue", "triangle")]
    assert score_scene(TWO, found)["all"] == 1.0
    # same objects, relation broken (blue right of green)
    assert score_scene(TWO, [det(3, "green", "star"), det(5, "blue", "triangle")]) == {
        "color": 1.0, "shape": 1.0, "position": 0.0, "count": 1.0, "all": 0.0}


def test_two_objects_half_credit_for_one_wrong_colour():
    score = score_scene(TWO, [det(0, "blue", "triangle"), det(2, "orange", "star")])
    assert score["color"] == 0.5 and score["shape"] == 1.0 and score["all"] == 0.0


def test_targets_and_loss_shapes():
    t = scene_targets([ONE, TWO])
    assert t["present"].tolist() == [[1] + [0] * 8, [1, 0, 1] + [0] * 6]
    assert t["shape"][1, 2].item() == 3 and t["color"][1, 0].item() == 2  # star, blue
    model = ShapesEvaluator()
    logits = model(torch.rand(2, 3, 64, 64))
    assert logits["present"].shape == (2, len(POSITIONS)) and logits["color"].shape == (2, 9, 6)
    loss = evaluator_loss(logits, t)
    loss.backward()
    assert loss.item() > 0 and model.head.weight.grad is not None


def test_two_identical_requested_objects_count_either_reading():
    same = Scene((ShapeObject("red", "circle", "small", 0), ShapeObject("red", "circle", "small", 1)),
                 "to the left of")
    # "a red circle to the left of a red circle": any two red circles side by side satisfy it
    assert score_scene(same, [det(1, "red", "circle", confidence=0.9), det(0, "red", "circle", confidence=0.8)])[
        "all"] == 1.0
    # stacked vertically: no reading puts one left of the other
    assert score_scene(same, [det(1, "red", "circle"), det(4, "red", "circle")])["position"] == 0.0


def probs(index, n, p=0.9):
    return tuple(p if i == index else (1 - p) / (n - 1) for i in range(n))


def test_a_tie_is_broken_by_the_class_probabilities_not_by_the_relation():
    # both detections are blue stars: each matching agrees on one colour and one shape of TWO (a blue triangle
    # to the left of a green star). The left one looks more like a triangle, so it is the blue triangle; the
    # relation then holds. Swap the probabilities and the right one is the triangle: the relation fails, even
    # though the other matching would have satisfied it.
    left_tri = Detection(0, "blue", "star", "small", 0.9, probs(2, 6), (0.05, 0.05, 0.45, 0.45))
    right_star = Detection(2, "blue", "star", "small", 0.8, probs(2, 6), (0.05, 0.05, 0.1, 0.8))
    assert score_scene(TWO, [left_tri, right_star])["position"] == 1.0
    left_star = Detection(0, "blue", "star", "small", 0.9, probs(2, 6), (0.05, 0.05, 0.1, 0.8))
    right_tri = Detection(2, "blue", "star", "small", 0.8, probs(2, 6), (0.05, 0.05, 0.45, 0.45))
    assert score_scene(TWO, [left_star, right_tri])["position"] == 0.0
    assert score_scene(TWO, [right_tri, left_star])["position"] == 0.0  # order of confidence is irrelevant here


def test_a_tie_without_probabilities_never_looks_at_the_relation():
    # hand-made readings with no probabilities: the more confident detection goes to the first-named object,
    # whichever way that leaves the relation
    both = [det(2, "blue", "star", confidence=0.9), det(0, "blue", "star", confidence=0.8)]
    assert score_scene(TWO, both)["position"] == 0.0
    assert score_scene(TWO, [det(0, "blue", "star", confidence=0.9), det(2, "blue", "star", confidence=0.8)])[
        "position"] == 1.0


def test_two_objects_with_one_found():
    score = score_scene(TWO, [det(0, "blue", "triangle")])
    assert score == {"color": 0.5, "shape": 0.5, "position": 0.0, "count": 0.0, "all": 0.0}
