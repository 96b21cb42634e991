import pytest
import torch
from torch import nn
import torch.nn.functional as F

from diffprune import archs
from diffprune.measure import count_flops, unet_inputs


class _Attention(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


@pytest.mark.parametrize("on_meta", [True, False])
def test_linear_matches_hand_formula(on_meta):
    layer = nn.Linear(16, 32)
    flops = count_flops(layer, torch.randn(4, 16), on_meta=on_meta)
    assert flops.total == 2 * 4 * 16 * 32  # one multiply + one add per MAC; bias not counted
    assert flops.attention == 0


@pytest.mark.parametrize("on_meta", [True, False])
def test_conv2d_matches_hand_formula(on_meta):
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
    flops = count_flops(conv, torch.randn(2, 3, 10, 10), on_meta=on_meta)
    assert flops.total == 2 * (2 * 10 * 10) * 8 * (3 * 3 * 3)


@pytest.mark.parametrize("on_meta", [True, False])
def test_cross_attention_matches_hand_formula(on_meta):
    # On real CPU tensors torch runs the fused kernel, which FlopCounterMode alone counts as 0.
    b, h, s_q, s_k, d = 2, 4, 64, 77, 16
    q, k, v = torch.randn(b, h, s_q, d), torch.randn(b, h, s_k, d), torch.randn(b, h, s_k, d)
    flops = count_flops(_Attention(), q, k, v, on_meta=on_meta)
    expected = 2 * b * h * s_q * s_k * d * 2  # QK^T and (softmax)V
    assert flops.total == expected
    assert flops.attention == expected


def test_meta_and_real_counts_agree_on_a_unet(tiny_sd):
    kwargs = unet_inputs(tiny_sd.unet, resolution=64)
    meta = count_flops(tiny_sd.unet, **kwargs)
    real = count_flops(tiny_sd.unet, on_meta=False, **kwargs)
    assert meta.total == real.total
    assert meta.attention == real.attention > 0


def test_flops_scale_linearly_with_batch(tiny_sd):
    one = count_flops(tiny_sd.unet, **unet_inputs(tiny_sd.unet, resolution=64, batch=1))
    three = count_flops(tiny_sd.unet, **unet_inputs(tiny_sd.unet, resolution=64, batch=3))
    assert three.total == 3 * one.total


def test_meta_counting_leaves_the_module_untouched(tiny_sd):
    before = {k: v.clone() for k, v in tiny_sd.unet.state_dict().items()}
    count_flops(tiny_sd.unet, **unet_inputs(tiny_sd.unet, resolution=64))
    after = tiny_sd.unet.state_dict()
    assert all(after[k].device.type == "cpu" and torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize("arch,resolution,reference", [("sd15", 512, 0.803e12), ("sdxl", 1024, 6.76e12)])
def test_full_size_unet_references(arch, resolution, reference):
    pipe = archs.build_pipeline(arch, device="meta")
    flops = count_flops(pipe.unet, **unet_inputs(pipe.unet, resolution=resolution))
    assert abs(flops.total - reference) / reference < 0.01


def test_sd15_without_attention_matches_the_convolution_and_projection_count():
    # Tools that miss attention (thop, fvcore) report 338.7 GMACs = 0.677 TFLOPs for SD-1.5 at 512^2.
    pipe = archs.build_pipeline("sd15", device="meta")
    flops = count_flops(pipe.unet, **unet_inputs(pipe.unet, resolution=512))
    assert abs((flops.total - flops.attention) - 0.677e12) / 0.677e12 < 0.01


def test_text_encoder_flops_match_the_transformer_formula(tiny_sd):
    # Per CLIP layer: q, k, v, out projections 4 x 2SH^2; MLP 2 x 2SHI; attention scores and mix 2 x 2S^2H.
    from diffprune.measure import text_encoder_inputs

    cfg = tiny_sd.text_encoder.config
    s, h, i, layers = 77, cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    flops = count_flops(tiny_sd.text_encoder, **text_encoder_inputs(tiny_sd.text_encoder))
    assert flops.total == layers * (8 * s * h * h + 4 * s * h * i + 4 * s * s * h)
    assert flops.attention == layers * 4 * s * s * h
