import random

import numpy as np
import pytest

from diffprune.testbed.world import (COLORS, POSITIONS, Scene, ShapeObject, is_heldout_pair, render,
                                     sample_scene, single_object_scenes, split_of)


def test_captions():
    one = Scene((ShapeObject("red", "circle", "large", 0),))
    assert one.caption == "a large red circle in the top left"
    two = Scene((ShapeObject("blue", "square", "small", 5), ShapeObject("orange", "star", "small", 3)),
                "to the right of")
    assert two.caption == "a blue square to the right of an orange star"


def test_relations_must_hold():
    left, right = ShapeObject("red", "circle", "small", 3), ShapeObject("blue", "star", "small", 5)
    with pytest.raises(ValueError):
        Scene((right, left), "to the left of")
    with pytest.raises(ValueError):
        ShapeObject("pink", "circle", "small", 0)


def test_rendering_is_deterministic_and_seed_dependent():
    scene = Scene((ShapeObject("green", "triangle", "large", 4),))
    a, b, c = (np.asarray(render(scene, seed=s)) for s in (3, 3, 4))
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("color", list(COLORS))
def test_object_colour_sits_at_its_grid_cell(color):
    for position in range(len(POSITIONS)):
        image = np.asarray(render(Scene((ShapeObject(color, "square", "large", position),)), seed=position))
        row, col = divmod(position, 3)
        y, x = (12, 32, 52)[row], (12, 32, 52)[col]
        assert np.abs(image[y, x].astype(int) - COLORS[color]).max() <= 3  # centre pixel is the object
    corner = np.asarray(render(Scene((ShapeObject(color, "circle", "small", 8),))))[2, 2]
    assert np.abs(corner.astype(int) - (236, 233, 226)).max() <= 8  # far corner is background


def test_two_object_relations_are_visible_in_the_pixels():
    rng = random.Random(1)
    for i in range(40):
        scene = sample_scene(rng, "any", two_object_prob=1.0)
        a, b = scene.objects
        if a.color == b.color:
            continue
        image = np.asarray(render(scene, seed=i)).astype(int)
        centroid = []
        for obj in scene.objects:
            ys, xs = np.nonzero(np.abs(image - COLORS[obj.color]).max(axis=2) <= 10)
            centroid.append((xs.mean(), ys.mean()))
        (ax, ay), (bx, by) = centroid
        assert {"to the left of": ax < bx, "to the right of": ax > bx, "above": ay < by,
                "below": ay > by}[scene.relation], scene.caption


def test_splits_hold_out_colour_shape_combinations():
    scenes = single_object_scenes()
    assert len(scenes) == 6 * 4 * 2 * 9
    heldout = {(s.objects[0].color, s.objects[0].shape) for s in scenes if split_of(s) == "heldout"}
    assert heldout == {("red", "circle"), ("green", "square"), ("blue", "triangle"), ("yellow", "star")}
    rng = random.Random(0)
    for _ in range(300):
        train = sample_scene(rng, "train")
        assert split_of(train) == "train"
        assert not any(is_heldout_pair(o.color, o.shape) for o in train.objects)
        assert split_of(sample_scene(rng, "heldout")) == "heldout"


def test_sampling_is_deterministic():
    a = [sample_scene(random.Random(5)).caption for _ in range(3)]
    b = [sample_scene(random.Random(5)).caption for _ in range(3)]
    assert a == b


def test_evaluator_layouts_hold_one_to_three_objects_and_no_overlapping_large_pair():
    import random

    from diffprune.testbed.data import extra_object_items
    from diffprune.testbed.world import sample_layout

    rng = random.Random(3)
    layouts = [sample_layout(rng) for _ in range(2000)]
    assert {len(objects) for objects in layouts} == {1, 2, 3}
    for objects in layouts:
        cells = [o.position for o in objects]
        assert len(set(cells)) == len(cells)
        large = [o for o in objects if o.size == "large"]
        for i, a in enumerate(large):
            for b in large[i + 1:]:
                assert max(abs(a.row - b.row), abs(a.col - b.col)) > 1
    assert any(o.size == "large" for objects in layouts if len(objects) == 3 for o in objects)
    assert {o.color for objects in layouts for o in objects} == set(COLORS)
    for scene, drawn, _ in extra_object_items(50, seed=1):
        big, extra = drawn
        assert scene.objects == (big,) and big.size == "large" and extra.size == "small"
        assert max(abs(big.row - extra.row), abs(big.col - extra.col)) == 1
