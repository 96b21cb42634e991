"""The committed shapes testbed: loads as a standard pipeline, has the promised structure, and its evaluator
reads ground truth."""

import json

import pytest
import torch

import diffprune
from diffprune.testbed.assets import WEIGHTS_DIR
from diffprune.testbed.assets import testbed_folder as shapes_folder
from diffprune.testbed.data import augment, render_images, sample_scenes, to_float
from diffprune.testbed.evaluator import load_evaluator
from diffprune.testbed.scoring import score_scene


@pytest.fixture(scope="module")
def shapes_pipe():
    return diffprune.load("shapes")


@pytest.fixture(scope="module")
def evaluator():
    return load_evaluator()


def test_loads_with_plain_diffusers_and_with_diffprune(shapes_pipe):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(shapes_folder(), torch_dtype=torch.float32)
    assert type(shapes_pipe).__name__ == "StableDiffusionPipeline"
    assert shapes_pipe.unet.dtype == torch.float32 and shapes_pipe._diffprune["source"] == "shapes"
    for name in ("unet", "text_encoder", "vae"):
        a, b = getattr(pipe, name).state_dict(), getattr(shapes_pipe, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert shapes_pipe.tokenizer("a large red circle in the top left").input_ids[1:-1] == \
        [shapes_pipe.tokenizer.convert_tokens_to_ids(w + "</w>") for w in "a large red circle in the top left".split()]


def test_unet_has_the_structure_compression_methods_need(shapes_pipe):
    unet = shapes_pipe.unet
    assert unet.config.sample_size == 16 and shapes_pipe.vae_scale_factor == 4
    top = unet.down_blocks[0]
    assert len(top.resnets) >= 2 and len(top.attentions) == len(top.resnets)  # ResNet+attention pairs
    for block in [b for b in unet.down_blocks if hasattr(b, "attentions")]:
        assert all(len(t.transformer_blocks) >= 2 for t in block.attentions)
    first = top.attentions[0].transformer_blocks[0]
    assert first.attn1 is not None and first.attn2 is not None and first.attn2.is_cross_attention
    assert unet.mid_block is not None and hasattr(unet.mid_block, "attentions")
    tokens = {}
    hook = first.attn1.register_forward_hook(lambda m, args, out: tokens.setdefault("n", args[0].shape[1]))
    ids = shapes_pipe.tokenizer([""], padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        unet(torch.zeros(1, 4, 16, 16), 10, shapes_pipe.text_encoder(ids)[0])
    hook.remove()
    assert tokens["n"] >= 256


def test_weights_fit_the_size_budget():
    files = [p for p in WEIGHTS_DIR.rglob("*") if p.is_file() and "dit" not in p.relative_to(WEIGHTS_DIR).parts]
    assert sum(p.stat().st_size for p in files) <= 30 * 2**20
    log = json.loads((WEIGHTS_DIR / "training.json").read_text())
    assert log["config"]["seed"] == 0 and sum(log["seconds"][k] for k in ("evaluator", "vae", "diffusion")) <= 3 * 3600


def test_shipped_weights_come_from_the_default_training_config():
    # `python -m diffprune.testbed.train` with no options must reproduce what ships, so the config must match.
    from dataclasses import asdict

    from diffprune.testbed.train import TrainConfig

    log = json.loads((WEIGHTS_DIR / "training.json").read_text())
    assert log["config"] == json.loads(json.dumps(asdict(TrainConfig())))


def test_evaluator_reads_heldout_ground_truth(evaluator):
    items = sample_scenes(400, seed=12345, split="heldout")
    images = to_float(render_images(items))
    clean = [score_scene(s, f)["all"] for (s, _), f in zip(items, evaluator.read(images))]
    assert sum(clean) / len(clean) >= 0.99
    noisy = augment(images, torch.Generator().manual_seed(0))
    degraded = [score_scene(s, f)["all"] for (s, _), f in zip(items, evaluator.read(noisy))]
    assert sum(degraded) / len(degraded) >= 0.95


def test_evaluator_flags_an_extra_object_next_to_a_large_one(evaluator):
    from diffprune.testbed.data import extra_object_items

    items = extra_object_items(300, seed=4242)  # other draws than the check in training.json
    readings = evaluator.read(to_float(render_images([(drawn, seed) for _, drawn, seed in items])))
    flagged = [score_scene(scene, found)["count"] == 0.0 for (scene, _, _), found in zip(items, readings)]
    assert sum(flagged) / len(flagged) >= 0.98
    # and the large object alone reads right
    alone = evaluator.read(to_float(render_images([(scene, seed) for scene, _, seed in items])))
    assert sum(score_scene(scene, found)["all"] for (scene, _, _), found in zip(items, alone)) / len(items) >= 0.99


def test_images_do_not_depend_on_batching(shapes_pipe):
    from diffprune.evaluate import generate, shapes_prompts

    prompts = shapes_prompts(5)
    a = generate(shapes_pipe, prompts, steps=3, batch_size=2, progress=False)
    b = generate(shapes_pipe, prompts, steps=3, batch_size=5, progress=False)
    assert a.shape == (5, 3, 64, 64)
    # images are 8-bit: a last-digit float difference between batch shapes may flip one rounding, never more
    diff = (a - b).abs()
    assert diff.max() <= 1 / 255 + 1e-6 and (diff > 0).float().mean() < 1e-3
    c = generate(shapes_pipe, shapes_prompts(5, seed=1), steps=3, batch_size=5, progress=False)
    assert (a - c).abs().mean() > 0.01  # another seed draws other images


def test_shapes_suite_reports_every_key(shapes_pipe, evaluator):
    from diffprune.evaluate import ShapesSuiteConfig, run_shapes_suite

    res = run_shapes_suite(shapes_pipe, ShapesSuiteConfig(prompts=8, steps=10, progress=False), evaluator)
    m = res.metrics
    for key in ("accuracy_all", "accuracy_color", "accuracy_shape", "accuracy_position", "fd", "n_images", "seconds"):
        assert key in m
    assert m["n_images"] == 8 and len(res.per_prompt) == 8 and res.images.shape == (8, 3, 64, 64)
    assert 0 <= m["accuracy_all"] <= min(m["accuracy_color"], m["accuracy_shape"], m["accuracy_position"])
    assert m["fd"] > m["fd_ground_truth"] >= 0
