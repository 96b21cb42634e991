"""Metric maths and prompt lists of the evaluation suites (no trained weights needed)."""

import math

import pytest
import torch

from diffprune.errors import DiffpruneError
from diffprune.evaluate.fidelity import PSNR_CAP_DB, fidelity_metrics, psnr, ssim
from diffprune.evaluate.frechet import frechet_distance
from diffprune.evaluate.prompts import file_prompts, shapes_prompts
from diffprune.testbed.world import split_of


def _first_two_pixels(images):
    return images.flatten(1)[:, :2].double()


def test_frechet_distance_of_a_shift_is_the_squared_shift():
    gen = torch.Generator().manual_seed(0)
    real = torch.rand(200, 3, 4, 4, generator=gen)
    shifted = real + torch.tensor([0.3, -0.4, 0, 0]).repeat(12).view(3, 4, 4)  # (+0.3, -0.4) on the features
    fd = frechet_distance(_first_two_pixels, 2, real, shifted)
    assert fd == pytest.approx(0.3**2 + 0.4**2, abs=1e-6)
    assert frechet_distance(_first_two_pixels, 2, real, real) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_of_scaled_gaussians_matches_closed_form():
    # 1-D: FD = (m1 - m2)^2 + s1^2 + s2^2 - 2 s1 s2 with the sample moments torchmetrics uses
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(500, 1, 1, 2, generator=gen)
    b = 2 * a + 1
    fa, fb = a.flatten(1)[:, :1].double(), b.flatten(1)[:, :1].double()
    va, vb = fa.var(unbiased=True).item(), fb.var(unbiased=True).item()
    want = (fa.mean() - fb.mean()).item() ** 2 + va + vb - 2 * math.sqrt(va * vb)
    fd = frechet_distance(lambda x: x.flatten(1)[:, :1].double(), 1, a, b)
    assert fd == pytest.approx(want, rel=1e-5)


def test_psnr_ssim_by_hand():
    ref = torch.full((2, 3, 16, 16), 0.5)
    assert psnr(ref + 0.1, ref).tolist() == pytest.approx([20.0, 20.0], abs=1e-4)  # 10 log10(1 / 0.01)
    assert psnr(ref, ref).tolist() == [PSNR_CAP_DB, PSNR_CAP_DB]
    noisy = (ref + 0.2 * torch.randn(ref.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert ssim(ref, ref).tolist() == pytest.approx([1.0, 1.0])
    assert (ssim(noisy, ref) < 0.9).all()
    m = fidelity_metrics(noisy, ref, features=lambda x: x.flatten(1))
    assert m["psnr"] < 20 and 0 < m["feature_cosine"] < 1
    with pytest.raises(DiffpruneError, match="one size"):
        fidelity_metrics(ref[:1], ref)


def test_shapes_prompts_are_fixed_heldout_and_seeded_by_place():
    prompts = shapes_prompts()
    assert len(prompts) == 100 and len({p.caption for p in prompts}) == 100
    assert all(split_of(p.scene) == "heldout" for p in prompts)
    assert sum(len(p.scene.objects) == 2 for p in prompts) == 28
    assert [p.seed for p in prompts] == list(range(100))
    assert shapes_prompts(10) == prompts[:10]
    assert {len(p.scene.objects) for p in prompts[:10]} == {1, 2}  # a prefix mixes both kinds
    assert shapes_prompts(3, seed=1)[2].seed == 100_003 + 2
    with pytest.raises(DiffpruneError, match="between 1 and 100"):
        shapes_prompts(101)


def test_file_prompts(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("# comment\na cat\n\n  a dog  \n")
    assert [(p.caption, p.seed) for p in file_prompts(f)] == [("a cat", 0), ("a dog", 1)]
    assert len(file_prompts(f, n=1)) == 1
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(DiffpruneError, match="no prompts"):
        file_prompts(tmp_path / "empty.txt")
    with pytest.raises(DiffpruneError, match="cannot read"):
        file_prompts(tmp_path / "missing.txt")


def test_train_split_prompts_mirror_the_heldout_list():
    train = shapes_prompts(split="train")
    assert len(train) == 100 and all(split_of(p.scene) == "train" for p in train)
    assert sum(len(p.scene.objects) == 2 for p in train) == 28
    assert not {p.caption for p in train} & {p.caption for p in shapes_prompts()}
    with pytest.raises(DiffpruneError, match="unknown split"):
        shapes_prompts(split="test")


def test_reading_agreement_by_hand():
    from diffprune.evaluate.fidelity import reading_agreement
    from diffprune.testbed.evaluator import Detection

    red_circle = Detection(0, "red", "circle", "small", 0.9)
    moved = Detection(4, "red", "circle", "small", 0.8)            # same object, another cell
    blue_square = Detection(8, "blue", "square", "large", 0.7)
    readings = [[red_circle], [moved, blue_square], [red_circle, blue_square], []]
    reference = [[red_circle], [red_circle, blue_square], [blue_square, red_circle], [red_circle]]
    m = reading_agreement(readings, reference)
    # pairs: identical; position differs only; same objects in another order; nothing read vs one object
    assert m["agreement_all"] == pytest.approx(2 / 4)
    assert m["agreement_position"] == pytest.approx(2 / 4)
    assert m["agreement_color"] == m["agreement_shape"] == m["agreement_size"] == pytest.approx(3 / 4)
    assert m["agreement_count"] == pytest.approx(3 / 4)
