"""The families' shared entry shape (target, config, progress= -> StepResult, history recorded), the orders
the entry points allow outside a recipe, pipeline anatomy and geometry, shared calibration, the kept-token
observer."""

import copy
import json

import pytest
import torch

import diffprune
from diffprune import anatomy, layers, tokens, weights
from diffprune.calibration import calibration_generators
from diffprune.errors import DiffpruneError
from diffprune.history import history_of
from diffprune.results import StepResult


def _image(pipe, prompt="a small blue square in the center"):
    return pipe(prompt, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="pt").images


def _steps(pipe):
    return [s["step"] for s in history_of(pipe)]


def test_every_family_returns_a_step_result_and_records_itself(shapes):
    pipe = copy.deepcopy(shapes)
    results = [
        layers.prune(pipe, layers.LayerPruningConfig(ratio=0.1, criterion="magnitude"), progress=False),
        weights.prune(pipe, {"unet": weights.MagnitudeConfig(sparsity=0.3)}, progress=False),
        tokens.prune(pipe, tokens.parse_spec("atedm:ratio=0.5"), progress=False),
    ]
    assert [r.family for r in results] == ["layers", "weights", "tokens"]
    assert _steps(pipe) == ["prune-layers", "prune-weights", "prune-tokens"]
    for r in results:
        assert isinstance(r, StepResult)
        assert isinstance(r.summary(), str) and r.summary()
        assert r.seconds >= 0
        json.dumps(r.to_json())
    assert results[2].sites == len(tokens.active_patch(pipe).runtime.sites) > 0
    assert "-" in results[0].summary() and "%" in results[0].summary()


def test_bare_models_are_targets_where_the_method_allows_it(shapes):
    unet = copy.deepcopy(shapes.unet)
    before = sum(p.numel() for p in unet.parameters())
    r = layers.prune(unet, layers.LayerPruningConfig(ratio=0.1, criterion="magnitude"))
    assert r.params_after == sum(p.numel() for p in unet.parameters()) < before
    with pytest.raises(DiffpruneError, match="calibrates through a whole pipeline"):
        layers.prune(copy.deepcopy(shapes.unet), layers.LayerPruningConfig(ratio=0.1))
    w = weights.prune(unet, {"unet": weights.MagnitudeConfig(sparsity=0.2)})
    assert w.components["unet"].sparsity == pytest.approx(0.2, abs=0.01)
    t = tokens.prune(unet, tokens.parse_spec("tome:ratio=0.5"))
    assert t.spec == "tome:ratio=0.5" and tokens.applied_config(unet).method == "tome"
    with pytest.raises(DiffpruneError, match="bare"):
        diffprune.compress(unet, diffprune.Recipe.from_dict({"tokens": "tome:ratio=0.5"}))


def test_weights_then_layers_keeps_the_zeros_of_the_surviving_layers(shapes):
    def zero_share(unet):
        linear = [m.weight for m in unet.modules() if isinstance(m, torch.nn.Linear)]
        return sum(int((w == 0).sum()) for w in linear) / sum(w.numel() for w in linear)

    pipe = copy.deepcopy(shapes)
    weights.prune(pipe, {"unet": weights.MagnitudeConfig(sparsity=0.4)})
    before = zero_share(pipe.unet)
    layers.prune(pipe, layers.LayerPruningConfig(ratio=0.1, criterion="magnitude"))
    assert _steps(pipe) == ["prune-weights", "prune-layers"]
    assert before > 0.3 and zero_share(pipe.unet) == pytest.approx(before, abs=0.05)
    assert torch.isfinite(_image(pipe)).all()


def test_tokens_then_weights_calibrates_through_the_patched_pipeline(shapes):
    pipe = copy.deepcopy(shapes)
    tokens.prune(pipe, tokens.parse_spec("atedm:ratio=0.5"))
    calibration = weights.CalibrationConfig(num_prompts=2, steps=2, batch_size=2)
    weights.prune(pipe, {"unet": weights.make_config("wanda", 0.3)}, calibration)
    assert _steps(pipe) == ["prune-tokens", "prune-weights"]
    assert tokens.applied_config(pipe).spec() == "atedm:ratio=0.5"
    assert torch.isfinite(_image(pipe)).all()


def test_layer_pruning_refuses_a_token_patched_unet_and_changes_nothing(shapes):
    pipe = copy.deepcopy(shapes)
    tokens.prune(pipe, tokens.parse_spec("atedm:ratio=0.5"))
    before = sum(p.numel() for p in pipe.unet.parameters())
    with pytest.raises(DiffpruneError, match="remove it first"):
        layers.prune(pipe, layers.LayerPruningConfig(ratio=0.1, criterion="magnitude"))
    with pytest.raises(DiffpruneError, match="remove it first"):
        layers.apply_preset(pipe, "bk-small")
    assert sum(p.numel() for p in pipe.unet.parameters()) == before
    assert _steps(pipe) == ["prune-tokens"]


def test_anatomy_tells_pipelines_unets_and_other_modules_apart(shapes):
    assert anatomy.is_pipeline(shapes) and anatomy.has_unet(shapes)
    assert anatomy.is_unet(shapes.unet) and not anatomy.is_pipeline(shapes.unet)
    assert anatomy.unet_of(shapes) is shapes.unet and anatomy.unet_of(shapes.unet) is shapes.unet
    with pytest.raises(DiffpruneError, match="needs a UNet2DConditionModel.*bare CLIPTextModel"):
        anatomy.unet_of(shapes.text_encoder, "token pruning")
    assert list(anatomy.model_components(shapes))[:1] == ["unet"]
    assert anatomy.model_components(shapes.vae) == {"model": shapes.vae}


def test_geometry_of_a_pipeline_and_of_a_bare_unet(shapes):
    g = anatomy.geometry(shapes)
    # the testbed: a 4x VAE and a short tokenizer; 16x16 latents draw 64x64 images
    assert (g.vae_scale_factor, g.latent_side, g.resolution) == (shapes.vae_scale_factor, 16, 16 * shapes.vae_scale_factor)
    assert g.text_length == shapes.tokenizer.model_max_length
    bare = anatomy.geometry(shapes.unet)
    assert (bare.vae_scale_factor, bare.text_length) == (8, 77)
    assert anatomy.geometry(shapes, vae_scale_factor=2).resolution == 32


def test_weight_and_layer_calibration_draw_the_same_noise():
    # one formula for both families: prompt k of a run seeded s uses generator seed s * 100003 + k
    a = calibration_generators(3, 2, 2)
    expected = [torch.Generator().manual_seed(3 * 100_003 + k) for k in (2, 3)]
    for g, e in zip(a, expected):
        assert torch.equal(torch.randn(4, generator=g), torch.randn(4, generator=e))
    assert weights.CalibrationConfig().num_prompts == layers.LayerCalibrationConfig().num_prompts
    assert weights.CalibrationConfig().batch_size == layers.LayerCalibrationConfig().batch_size


def test_the_kept_token_observer_sees_what_each_block_keeps_without_changing_images(shapes):
    pipe = copy.deepcopy(shapes)
    tokens.prune(pipe, tokens.parse_spec("atedm:ratio=0.5"))
    expected = _image(pipe)
    seen = []
    with tokens.observe_kept(pipe, seen.append):
        image = _image(pipe)
    assert torch.equal(image, expected)
    assert seen and len(tokens.active_patch(pipe).runtime.observers) == 0
    event = seen[0]
    h, w = event.grid
    assert event.tokens == h * w
    # half the tokens kept (rounded as the ranking does), distinct indices in range, per batch row
    assert event.kept.shape[1] == tokens.gwpr.kept_count(event.tokens, 0.5)
    assert all(len(set(row.tolist())) == event.kept.shape[1] for row in event.kept)
    assert int(event.kept.max()) < event.tokens
    assert {e.timestep for e in seen} <= {float(t) for t in pipe.scheduler.timesteps}
    tokens.remove(pipe)
    with pytest.raises(DiffpruneError, match="apply one first"):
        with tokens.observe_kept(pipe, seen.append):
            pass
