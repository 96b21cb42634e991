"""The public peers benched beside diffprune (tomesd, DeepCache): variant specs, clear errors, and patches that
install and remove cleanly on a real pipeline, alone and stacked on diffprune's token pruning."""

from __future__ import annotations

import pytest
import torch

import diffprune
from diffprune.bench.peers import apply_variant, parse_peer, split_variant
from diffprune.errors import DiffpruneError


def test_variant_specs_split_only_before_a_method_name():
    assert split_variant("atedm:ratio=0.63+deepcache:interval=3") == ["atedm:ratio=0.63", "deepcache:interval=3"]
    assert split_variant("tome:ratio=0.5,levels=1+2") == ["tome:ratio=0.5,levels=1+2"]
    assert split_variant("tome:levels=1+2+tomesd:ratio=0.4") == ["tome:levels=1+2", "tomesd:ratio=0.4"]
    assert parse_peer("tomesd:ratio=0.4,max_downsample=2").options == {"ratio": 0.4, "max_downsample": 2}
    for bad in ("tomesd:speed=2", "deepcache:interval=x", "fastcache:ratio=1"):
        with pytest.raises(DiffpruneError):
            parse_peer(bad)


@pytest.fixture(scope="module")
def pipe():
    pipe = diffprune.load("random:tiny-sd", seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _images(pipe):
    return pipe(["a red circle", "a blue square"], num_inference_steps=4, height=64, width=64, output_type="pt",
                generator=[torch.Generator().manual_seed(s) for s in (0, 1)]).images


@pytest.mark.parametrize("spec", ["tomesd:ratio=0.5,max_downsample=2", "deepcache:interval=2",
                                  "atedm:ratio=0.5+deepcache:interval=2"])
def test_peers_install_change_the_images_and_remove_exactly(pipe, spec):
    for name in {"tomesd": "tomesd", "deepcache": "DeepCache"}.items():
        if name[0] in spec:
            pytest.importorskip(name[1])
    reference = _images(pipe)
    remove = apply_variant(pipe, spec)
    try:
        patched = _images(pipe)
    finally:
        remove()
    assert patched.shape == reference.shape and not torch.equal(patched, reference)
    assert torch.equal(_images(pipe), reference)


def test_two_diffprune_specs_in_one_variant_are_refused(pipe):
    with pytest.raises(DiffpruneError, match="one patch at a time"):
        apply_variant(pipe, "atedm:ratio=0.5+tome:ratio=0.5")
