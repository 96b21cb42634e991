import pytest
import torch

import diffprune
from diffprune.measure import count_params


@pytest.mark.parametrize("arch,expected", [
    ("sd15", {"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863}),
    ("sd21", {"unet": 865_910_724, "text_encoder": 340_387_840, "vae": 83_653_863}),
    ("sdxl", {"unet": 2_567_463_684, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840,
              "vae": 83_653_863}),
])
def test_published_parameter_counts(arch, expected):
    counts = count_params(diffprune.load(f"random:{arch}", device="meta"))
    assert {k: c.params for k, c in counts.components.items()} == expected
    assert all(c.nonzero is None for c in counts.components.values())  # meta weights have no values


def test_nonzero_counts_follow_zeroed_weights():
    pipe = diffprune.load("random:tiny-sd", seed=3)
    before = count_params(pipe).components["unet"]
    weight = pipe.unet.conv_in.weight
    already_zero = int((weight == 0).sum())
    with torch.no_grad():
        weight.zero_()
    after = count_params(pipe).components["unet"]
    assert after.params == before.params
    assert before.nonzero - after.nonzero == weight.numel() - already_zero
    assert after.sparsity == pytest.approx(1 - after.nonzero / after.params)


def test_bytes_follow_dtype():
    pipe = diffprune.load("random:tiny-sd", dtype="fp16")
    unet = count_params(pipe).components["unet"]
    assert unet.dtype == "float16" and unet.bytes == 2 * unet.params
