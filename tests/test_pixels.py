"""The evaluator's pixel check and its robust presence decision, on hand-made images."""

import torch

from diffprune.evaluate.prompts import EvalPrompt
from diffprune.evaluate.shapes import summarize
from diffprune.testbed.evaluator import ShapesEvaluator
from diffprune.testbed.pixels import cell_of, label_blobs, occupied_cells
from diffprune.testbed.world import Scene, ShapeObject


def canvas(n=1):
    return torch.full((n, 3, 64, 64), 0.9)


def paint(image, x0, y0, side, rgb):
    image[:, y0:y0 + side, x0:x0 + side] = torch.tensor(rgb)[:, None, None]


def test_blobs_are_found_in_the_cells_of_their_centroids():
    images = canvas(3)
    paint(images[0], 5, 5, 8, (0.9, 0.1, 0.1))       # centroid (8.5, 8.5): top left
    paint(images[0], 45, 45, 12, (0.1, 0.1, 0.9))    # centroid (50.5, 50.5): bottom right
    paint(images[0], 28, 6, 2, (0.1, 0.1, 0.9))      # 4 pixels: a speck, not an object
    paint(images[1], 26, 26, 12, (0.85, 0.8, 0.75))  # faint: closer to the background than the threshold
    paint(images[2], 18, 26, 28, (0.2, 0.6, 0.2))    # one large blob straddling three columns: the centre
    assert occupied_cells(images) == [{0, 8}, set(), {4}]


def test_labels_join_diagonal_neighbours_and_split_separate_blobs():
    mask = torch.zeros(1, 6, 6, dtype=torch.bool)
    mask[0, 0, 0] = mask[0, 1, 1] = True      # diagonal: one blob
    mask[0, 4, 4] = mask[0, 4, 5] = True      # another
    labels = label_blobs(mask)[0]
    assert labels[0, 0] == labels[1, 1] != labels[4, 4] == labels[4, 5]
    assert (labels[~mask[0]] == 0).all() and len(labels.unique()) == 3


def test_cell_of_splits_the_frame_in_thirds():
    assert [cell_of(x, y) for x, y in ((0, 0), (21, 21), (22, 22), (63, 0), (32, 63))] == [0, 0, 4, 2, 7]


def test_presence_is_decided_by_either_the_score_or_the_pixels():
    torch.manual_seed(0)
    model = ShapesEvaluator().eval()
    with torch.no_grad():  # presence logits of -10 everywhere: the CNN alone finds nothing
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.bias.view(9, -1)[:, 0] = -10.0
    image = canvas()
    paint(image[0], 26, 26, 12, (0.9, 0.5, 0.1))
    assert model.read(image, pixel_check=False) == [[]]
    found = model.read(image)[0]
    assert [d.position for d in found] == [4] and found[0].confidence < 0.5
    assert model.read(canvas()) == [[]]  # nothing drawn, nothing found
    with torch.no_grad():  # presence certain everywhere: the pixels never remove an object
        model.head.bias.view(9, -1)[:, 0] = 10.0
    assert len(model.read(canvas())[0]) == 9


def test_cell_relation_and_position_accuracies():
    one = Scene((ShapeObject("red", "square", "small", 0),))
    two = Scene((ShapeObject("red", "square", "small", 0), ShapeObject("blue", "star", "small", 2)), "to the left of")
    prompts = [EvalPrompt(s.caption, i, s) for i, s in enumerate((one, one, one, one, two, two))]
    scores = [{"position": p, "all": 0.0, "color": 1.0, "shape": 1.0, "count": 1.0} for p in (1, 1, 1, 0, 0, 1)]
    m = summarize(scores, prompts)
    assert m["accuracy_cell"] == 0.75 and m["accuracy_relation"] == 0.5
    assert m["accuracy_position"] == 0.625  # the mean of the two, not the pooled 4/6
