"""Diffusion-transformer architectures: published sizes, hand-counted FLOPs of one block, tiny pipelines that run,
save and reload, offline tokenizers, and the parameter/FLOP split by role."""

from __future__ import annotations

import pytest
import torch

import diffprune
from diffprune import archs
from diffprune.anatomy import geometry
from diffprune.archs.family import Family, detect_family
from diffprune.measure import count_flops, count_params, denoiser_inputs, measure_pipeline, parameter_groups

#: transformer parameters of the published configs, counted from the built modules (reference sizes: PixArt-Sigma
#: 0.611 B, SD3-medium 2.03 B, SD3.5-large 8.06 B, FLUX.1-dev 11.90 B, Sana-600M 0.59 B)
PUBLISHED = {
    "pixart-sigma": 610_856_096, "sd3-medium": 2_028_328_000, "sd35-medium": 2_243_171_520,
    "sd35-large": 8_056_627_520, "flux-schnell": 11_891_178_560, "flux-dev": 11_901_408_320,
    "sana-600m": 591_747_872, "sana-1600m": 1_604_462_752,
}
T5_XXL_ENCODER = 4_762_310_656
#: published text-encoder sizes: CLIP ViT-L/14's text tower (123 060 480) with its 768 x 768 projection, as SD3
#: loads it; OpenCLIP bigG's text tower with projection; Gemma-2-2B
CLIP_L, CLIP_L_PROJECTED, CLIP_G, GEMMA2_2B = 123_060_480, 123_650_304, 694_659_840, 2_614_341_888
TINY = ("tiny-pixart", "tiny-sd3", "tiny-sd35", "tiny-flux", "tiny-sana")


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_transformer_sizes_are_exact(name):
    model = archs.build_denoiser(name, device="meta")
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[name]


def test_published_text_encoders_have_published_sizes():
    pipe = diffprune.load("random:flux-dev", device="meta")
    counts = count_params(pipe, count_nonzero=False).components
    assert counts["text_encoder_2"].params == T5_XXL_ENCODER
    assert pipe.text_encoder_2.config.vocab_size == 32128 and pipe.text_encoder.config.vocab_size == 49408
    sana = diffprune.load("random:sana-600m", device="meta")
    assert sana.text_encoder.config.vocab_size == 256_000
    assert sana.text_encoder.get_input_embeddings().weight.shape == (256_000, 2304)


# ---- one block, counted by the FLOP counter and by hand -----------------------------------------------------------
B, N, L = 1, 256, 40  # a 16x16 grid of image tokens and 40 text tokens


def _x(*shape):
    return torch.empty(*shape, device="meta")


def _pixart_block(model):
    d = model.config.num_attention_heads * model.config.attention_head_dim
    block = model.transformer_blocks[0]
    flops = count_flops(block, _x(B, N, d), encoder_hidden_states=_x(B, L, d), timestep=_x(B, 6 * d))
    # self-attention q,k,v,out; cross-attention q,out on image tokens and k,v on text; a 4x GELU MLP
    hand = 2 * B * (4 * N * d * d + 2 * N * d * d + 2 * L * d * d + 8 * N * d * d)
    hand += 2 * B * (2 * N * N * d + 2 * N * L * d)  # scores and weighted sums
    return flops, hand


def _sd3_block(model):
    d = model.config.num_attention_heads * model.config.attention_head_dim
    block = model.transformer_blocks[0]
    flops = count_flops(block, _x(B, N, d), _x(B, L, d), _x(B, d))
    dual = bool(model.config.dual_attention_layers) and 0 in model.config.dual_attention_layers
    t = N + L
    hand = 2 * B * ((9 if dual else 6) * d * d + 6 * d * d)  # AdaLN-Zero modulation of both streams
    hand += 2 * B * (4 * t * d * d + 8 * t * d * d)  # joint q,k,v,out of both streams; 4x MLPs of both
    hand += 2 * B * 2 * t * t * d  # joint attention over image + text tokens
    if dual:  # MMDiT-X: a second self-attention over the image tokens
        hand += 2 * B * (4 * N * d * d + 2 * N * N * d)
    return flops, hand


def _flux_double_block(model):
    d = model.config.num_attention_heads * model.config.attention_head_dim
    head = model.config.attention_head_dim
    rope = (_x(N + L, head), _x(N + L, head))
    flops = count_flops(model.transformer_blocks[0], _x(B, N, d), _x(B, L, d), _x(B, d), image_rotary_emb=rope)
    t = N + L
    hand = 2 * B * (12 * d * d)  # AdaLN-Zero of both streams
    hand += 2 * B * (4 * t * d * d + 8 * t * d * d) + 2 * B * 2 * t * t * d
    return flops, hand


def _flux_single_block(model):
    d = model.config.num_attention_heads * model.config.attention_head_dim
    head = model.config.attention_head_dim
    rope = (_x(N + L, head), _x(N + L, head))
    flops = count_flops(model.single_transformer_blocks[0], _x(B, N, d), _x(B, L, d), _x(B, d),
                        image_rotary_emb=rope)
    t = N + L
    # modulation (3d); q,k,v; the 4x MLP input; the joint output projection from attention (d) + MLP (4d)
    hand = 2 * B * (3 * d * d) + 2 * B * t * (3 * d * d + 4 * d * d + 5 * d * d) + 2 * B * 2 * t * t * d
    return flops, hand


def _sana_block(model):
    cfg = model.config
    d = cfg.num_attention_heads * cfg.attention_head_dim
    head = cfg.attention_head_dim
    side = 16
    flops = count_flops(model.transformer_blocks[0], _x(B, N, d), encoder_hidden_states=_x(B, L, d),
                        timestep=_x(B, 6 * d), height=side, width=side)
    hidden = int(cfg.mlp_ratio * d)
    hand = 2 * B * N * 4 * d * d  # linear self-attention: q, k, v, out
    hand += 2 * B * 2 * N * d * (head + 1)  # K^T V with the ones row that normalises, then times Q
    hand += 2 * B * (2 * N * d * d + 2 * L * d * d) + 2 * B * 2 * N * L * d  # cross-attention
    hand += 2 * B * N * (d * 2 * hidden + 9 * 2 * hidden + hidden * d)  # Mix-FFN: 1x1 up, 3x3 depthwise, 1x1 down
    return flops, hand


BLOCKS = {"pixart-sigma": [_pixart_block], "sd3-medium": [_sd3_block], "sd35-medium": [_sd3_block],
          "sd35-large": [_sd3_block], "flux-dev": [_flux_double_block, _flux_single_block],
          "sana-600m": [_sana_block], "sana-1600m": [_sana_block]}


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_one_block_flops_match_a_hand_count(name):
    model = archs.build_denoiser(name, device="meta")
    for count in BLOCKS[name]:
        flops, hand = count(model)
        assert flops.total == hand, f"{count.__name__}: counted {flops.total:,}, by hand {hand:,}"


def test_flux_modulation_holds_a_quarter_of_the_parameters_and_no_flops():
    model = archs.build_denoiser("flux-dev", device="meta")
    g = geometry(model)
    groups = parameter_groups(model, denoiser_inputs(model, resolution=g.resolution, vae_scale_factor=8,
                                                     text_length=g.text_length))
    assert sum(s.params for s in groups.values()) == PUBLISHED["flux-dev"]
    # by hand: AdaLN-Zero of both streams in 19 double blocks (6d each), of 38 single blocks (3d), final norm (2d)
    d = 3072
    assert groups["modulation"].params == 19 * 2 * (d * 6 * d + 6 * d) + 38 * (d * 3 * d + 3 * d) + d * 2 * d + 2 * d
    assert 0.27 < groups["modulation"].param_share < 0.28 and groups["modulation"].flop_share < 1e-4
    assert groups["attention"].flop_share + groups["feed-forward"].flop_share > 0.999


# ---- tiny pipelines -----------------------------------------------------------------------------------------------
FAMILIES = {"tiny-pixart": Family.PIXART, "tiny-sd3": Family.SD3, "tiny-sd35": Family.SD3,
            "tiny-flux": Family.FLUX, "tiny-sana": Family.SANA}


@pytest.mark.parametrize("name", TINY)
def test_tiny_pipelines_draw_save_and_reload_bit_identically(name, tmp_path):
    pipe = diffprune.load(f"random:{name}", seed=1)
    assert detect_family(pipe) is FAMILIES[name] and detect_family(pipe.transformer) is FAMILIES[name]
    assert FAMILIES[name].is_dit
    pipe.set_progress_bar_config(disable=True)
    size = archs.arch_spec(name)["resolution"]
    extra = {"use_resolution_binning": False} if name in ("tiny-pixart", "tiny-sana") else {}
    image = pipe("a red circle", num_inference_steps=2, height=size, width=size, max_sequence_length=16,
                 generator=torch.Generator().manual_seed(0), output_type="np", **extra).images
    assert image.shape == (1, size, size, 3) and float(image.std()) > 0
    back = diffprune.load(diffprune.save(pipe, tmp_path / "out"))
    assert type(back) is type(pipe)
    for key in ("transformer", "vae", "text_encoder"):
        a, b = getattr(pipe, key).state_dict(), getattr(back, key).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name, encoders", [
    ("sd3-medium", {"text_encoder": CLIP_L_PROJECTED, "text_encoder_2": CLIP_G, "text_encoder_3": T5_XXL_ENCODER}),
    ("flux-dev", {"text_encoder": CLIP_L, "text_encoder_2": T5_XXL_ENCODER}),
    ("sana-600m", {"text_encoder": GEMMA2_2B}),
])
def test_measure_command_gives_the_exact_published_counts(name, encoders, tmp_path):
    import json

    from diffprune.cli import main

    out = tmp_path / "m.json"
    assert main(["measure", f"random:{name}", "--resolution", "1024", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["transformer_params"] == PUBLISHED[name] and data["resolution"] == 1024
    assert {k: data[f"{k}_params"] for k in encoders} == encoders
    assert data["transformer_attention_tflops"] > 0


def test_random_builds_are_seeded():
    a = archs.build_denoiser("tiny-flux", seed=3).state_dict()
    b = archs.build_denoiser("tiny-flux", seed=3).state_dict()
    c = archs.build_denoiser("tiny-flux", seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a) and not all(torch.equal(a[k], c[k]) for k in a)


def test_measure_reports_the_transformer_and_every_text_encoder():
    m = measure_pipeline(diffprune.load("random:sd3-medium", device="meta"))
    data = m.to_json()
    assert data["denoiser"] == "transformer" and data["resolution"] == 1024
    assert data["transformer_params"] == PUBLISHED["sd3-medium"]
    assert 0 < data["transformer_attention_tflops"] < data["transformer_tflops"]
    assert set(m.text_encoder_flops) == {"text_encoder", "text_encoder_2", "text_encoder_3"}
    # T5 reads the pipeline's 256 tokens, CLIP its 77: T5-XXL encoder FLOPs ~ 2 x (params - embedding) x 256
    t5 = m.text_encoder_flops["text_encoder_3"].total
    assert abs(t5 / (2 * (T5_XXL_ENCODER - 32128 * 4096) * 256) - 1) < 0.05
    assert data["transformer_groups"]["modulation"]["param_share"] > 0.3


def test_unet_measurement_keys_are_unchanged(tiny_sd):
    data = measure_pipeline(tiny_sd).to_json()
    assert data["denoiser"] == "unet" and data["unet_tflops"] > 0 and "transformer_tflops" not in data


def test_unsupported_pipelines_still_get_one_clear_line():
    from diffprune.errors import DiffpruneError

    class SomePipeline:
        transformer = torch.nn.Linear(2, 2)

    with pytest.raises(DiffpruneError, match="unsupported model: SomePipeline with Linear"):
        detect_family(SomePipeline())


def test_sana_text_encoder_reads_the_instruction_too():
    from diffprune.anatomy import call_default, text_lengths, tokens_read
    from diffprune.measure import count_flops, measure_pipeline, text_encoder_inputs

    pipe = diffprune.load("random:tiny-sana", seed=0)
    seen = []

    def record(module, args, kwargs):
        seen.append((args[0] if args else kwargs["input_ids"]).shape[1])

    hook = pipe.text_encoder.register_forward_pre_hook(record, with_kwargs=True)
    pipe.encode_prompt("a red circle", do_classifier_free_guidance=False, clean_caption=False,
                       complex_human_instruction=call_default(pipe, "complex_human_instruction"))
    hook.remove()
    assert tokens_read(pipe)["text_encoder"] == seen[0] > text_lengths(pipe)["text_encoder"]
    m = measure_pipeline(pipe, resolution=archs.arch_spec("tiny-sana")["resolution"])
    by_hand = count_flops(pipe.text_encoder, **text_encoder_inputs(pipe.text_encoder, text_length=seen[0])).total
    assert m.text_encoder_flops["text_encoder"].total == by_hand


def test_info_shows_a_transformers_parameters_by_role(capsys):
    from diffprune.cli import main
    from diffprune.measure import parameter_roles

    assert main(["info", "random:flux-dev"]) == 0
    out = capsys.readouterr().out
    roles = parameter_roles(archs.build_denoiser("flux-dev", device="meta"))
    assert sum(roles.values()) == PUBLISHED["flux-dev"]
    d = 3072  # the AdaLN layers, counted by hand as in the modulation test above
    assert roles["modulation"] == 19 * 2 * (6 * d * d + 6 * d) + 38 * (3 * d * d + 3 * d) + 2 * d * d + 2 * d
    assert f"modulation       {roles['modulation']:,}" in out and "27.3%" in out
    assert main(["info", "random:tiny-sd"]) == 0
    assert "by role" not in capsys.readouterr().out  # U-Nets have no such split
