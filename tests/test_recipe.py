"""The Recipe (one spec for every family) and compress(): validation, files, and the families composed."""

import copy

import pytest
import torch

import diffprune
from diffprune.errors import DiffpruneError
from diffprune.recipe import CalibrationSpec, LayerStep, Recipe, WeightStep, compress
from diffprune.weights import make_config

SMALL = {"num_prompts": 2, "steps": 2, "batch_size": 2}
STACK = {"name": "stack", "calibration": SMALL,
         "layers": {"criterion": "magnitude", "ratio": 0.15},
         "weights": {"text_encoder": {"method": "magnitude", "sparsity": 0.3},
                     "unet": {"method": "wanda", "sparsity": 0.3}},
         "tokens": "atedm:ratio=0.5"}


def _image(pipe, prompt="a large red circle in the top left"):
    return pipe(prompt, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="pt").images


def test_a_recipe_round_trips_through_yaml_and_json(tmp_path):
    recipe = Recipe.from_dict(STACK)
    assert recipe.layers == LayerStep(ratio=0.15, criterion="magnitude")
    assert recipe.weights["unet"] == WeightStep("wanda", 0.3)
    assert recipe.calibration == CalibrationSpec(num_prompts=2, steps=2, batch_size=2)
    for suffix, fmt in ((".yaml", "yaml"), (".json", "json")):
        path = tmp_path / f"r{suffix}"
        path.write_text(recipe.dumps(fmt))
        assert Recipe.load(path) == recipe
    unnamed = tmp_path / "my-recipe.yaml"
    unnamed.write_text("tokens: tome:ratio=0.5\n")
    assert Recipe.load(unnamed).name == "my-recipe"


@pytest.mark.parametrize("data, message", [
    ({"tokens": "tome:ratio=0.5", "extra": 1}, "unknown key 'extra'"),
    ({"layers": {"ratio": 0.2, "critrion": "magnitude"}}, "unknown key 'critrion'"),
    ({"layers": {"ratio": 0.2, "preset": "bk-small"}}, "either a ratio or a preset"),
    ({"weights": {"unet": {"method": "wanda", "sparsity": 0.5, "scope": "global"}}}, "does not use the option 'scope'"),
    ({"weights": {"vae": {"method": "magnitude", "sparsity": 0.5}}}, "'vae' cannot be pruned"),
    ({"weights": {"unet": {"method": "magnitude"}}}, "needs at least a method and a sparsity"),
    ({"tokens": "atedm:ratio=2"}, "ratio"),
    ({"calibration": {"num_prompts": 0}, "tokens": "tome:ratio=0.5"}, "at least 1"),
    ({}, "no step"),
    ([1, 2], "expected a mapping"),
])
def test_bad_recipes_are_refused_with_the_reason(data, message):
    with pytest.raises(DiffpruneError, match=message):
        Recipe.from_dict(data)


def test_an_option_the_method_does_not_use_is_an_error_not_dropped():
    with pytest.raises(DiffpruneError, match="does not use the option 'scope'"):
        make_config("wanda", 0.5, scope="global")
    assert make_config("magnitude", 0.5, scope="global").scope == "global"
    assert make_config("wanda", 0.5, scope=None).method == "wanda"  # None: not given


def test_the_whole_recipe_is_checked_before_anything_changes(shapes):
    pipe = copy.deepcopy(shapes)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    recipe = Recipe.from_dict({"weights": {"unet": {"method": "magnitude", "sparsity": 0.3},
                                           "text_encoder_2": {"method": "magnitude", "sparsity": 0.3}}})
    with pytest.raises(DiffpruneError, match="text_encoder_2"):
        compress(pipe, recipe, progress=False)
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())
    assert not pipe._diffprune["history"]


def test_the_stack_applies_every_family_in_order_and_records_it(shapes):
    pipe = copy.deepcopy(shapes)
    result = compress(pipe, Recipe.from_dict(STACK), progress=False)
    steps = [s["step"] for s in pipe._diffprune["history"]]
    assert steps == ["prune-layers", "prune-weights", "prune-weights", "prune-tokens"]
    assert result.layers.params_after < result.layers.params_before
    # the weights were pruned on the layer-pruned U-Net: its remaining matrices carry the zeros
    assert result.weights.components["unet"].sparsity == pytest.approx(0.3, abs=0.01)
    assert diffprune.tokens.applied_config(pipe).spec() == "atedm:ratio=0.5"
    image = _image(pipe)
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()
    assert (image - _image(shapes)).abs().mean() > 1e-3
    assert set(result.to_json()) >= {"recipe", "layers", "weights", "tokens", "seconds"}


@pytest.mark.parametrize("pair", [("layers", "weights"), ("layers", "tokens"), ("weights", "tokens")])
def test_every_pair_of_families_composes(shapes, pair):
    data = {"calibration": SMALL, **{k: STACK[k] for k in pair}}
    pipe = copy.deepcopy(shapes)
    compress(pipe, Recipe.from_dict(data), progress=False)
    recorded = {s["step"] for s in pipe._diffprune["history"]}
    assert recorded == {f"prune-{k}" for k in pair}
    assert torch.isfinite(_image(pipe)).all()


def test_token_pruning_after_a_layer_step_that_emptied_an_attention_module(shapes):
    # the layer step removed both transformer layers of a module; that module has nothing left to prune tokens
    # in, and token pruning must go on the others instead of failing
    pipe = copy.deepcopy(shapes)
    names = [f"down_blocks.0.attentions.0.transformer_blocks.{i}" for i in range(2)]
    diffprune.layers.remove_units(pipe.unet, names)
    assert len(pipe.unet.down_blocks[0].attentions[0].transformer_blocks) == 0
    diffprune.tokens.apply(pipe, diffprune.tokens.parse_spec("atedm:ratio=0.5"))
    assert torch.isfinite(_image(pipe)).all()
    diffprune.tokens.remove(pipe)


def test_save_then_load_of_a_composed_pipeline_draws_the_same_images(shapes, tmp_path):
    # layers + weights + tokens: the U-Net is stored layer-pruned and sparse, the token step in the manifest
    pipe = copy.deepcopy(shapes)
    compress(pipe, Recipe.from_dict(STACK), progress=False)
    expected = _image(pipe)
    folder = diffprune.save(pipe, tmp_path / "stack", weights_format="bitmask")
    loaded = diffprune.load(folder)
    loaded.set_progress_bar_config(disable=True)
    assert diffprune.tokens.applied_config(loaded).spec() == "atedm:ratio=0.5"
    assert torch.equal(_image(loaded), expected)
    bare = diffprune.load(folder, runtime_patches=False)  # the opt-out: no token patch
    assert diffprune.tokens.applied_config(bare) is None


def test_the_shipped_recipes_load_and_hold_their_published_settings():
    from diffprune.recipe import example_recipes, load_recipe

    assert set(example_recipes()) == {"sd2-study", "laptop-50", "atedm", "stack", "dit-half"}
    sd2 = load_recipe("sd2-study")
    assert (sd2.weights["text_encoder"].sparsity, sd2.weights["unet"].sparsity) == (0.475, 0.35)
    assert load_recipe("laptop-50").layers == LayerStep(ratio=0.5, criterion="output-loss")
    assert load_recipe("atedm").tokens == "atedm:ratio=0.63"
    stack = load_recipe("stack")
    assert stack.layers and stack.weights and stack.tokens
    with pytest.raises(DiffpruneError, match="shipped recipes"):
        load_recipe("no-such-recipe")


def test_the_denoiser_alias_prunes_whichever_denoiser_a_pipeline_has():
    from diffprune.recipe import Recipe, compress, load_recipe

    recipe = Recipe.from_dict({"weights": {"denoiser": {"method": "magnitude", "sparsity": 0.4}}})
    for name, attr in (("tiny-sd", "unet"), ("tiny-flux", "transformer")):
        pipe = diffprune.load(f"random:{name}", seed=0)
        result = compress(pipe, recipe, progress=False)
        assert list(result.weights.components) == [attr]
        assert result.weights.components[attr].sparsity == pytest.approx(0.4, abs=1e-3)
    with pytest.raises(DiffpruneError, match="not both"):
        Recipe.from_dict({"weights": {"denoiser": {"method": "magnitude", "sparsity": 0.4},
                                      "unet": {"method": "magnitude", "sparsity": 0.4}}})
    half = load_recipe("dit-half")
    assert half.layers == LayerStep(ratio=0.25, criterion="output-loss") and "denoiser" in half.weights


def test_cli_compress_then_generate_equals_the_in_memory_result(shapes, tmp_path, capsys):
    from diffprune.cli import main
    from diffprune.evaluate.generate import to_pil
    from diffprune.recipe import recipe_from_specs
    from diffprune.report import image_grid_png

    specs = ["--layers", "magnitude:ratio=0.15", "--weights", "text_encoder=magnitude:sparsity=0.3",
             "--weights", "unet=wanda:sparsity=0.3", "--tokens", "atedm:ratio=0.5",
             "--calib-num-prompts", "2", "--calib-steps", "2"]
    out = tmp_path / "stack"
    assert main(["compress", "shapes", "--out", str(out), *specs, "--weights-format", "bitmask",
                 "--json", str(tmp_path / "r.json")]) == 0
    assert "tokens: atedm:ratio=0.5" in capsys.readouterr().out
    png = tmp_path / "x.png"
    assert main(["generate", str(out), "--prompt", "a small blue star below a red square", "--steps", "4",
                 "--out", str(png)]) == 0
    recipe = recipe_from_specs("magnitude:ratio=0.15", ["text_encoder=magnitude:sparsity=0.3",
                                                        "unet=wanda:sparsity=0.3"], "atedm:ratio=0.5",
                               {"num_prompts": 2, "steps": 2})
    assert recipe.calibration.batch_size == 8  # the defaults a spec leaves alone
    pipe = copy.deepcopy(shapes)
    compress(pipe, recipe, progress=False)
    with torch.inference_mode():
        images = pipe(["a small blue star below a red square"], num_inference_steps=4, guidance_scale=5.0,
                      height=64, width=64, generator=[torch.Generator().manual_seed(0)], output_type="pt").images
    assert png.read_bytes() == image_grid_png(to_pil(images), columns=1)


@pytest.mark.parametrize("argv, message", [
    (["--recipe", "stack", "--tokens", "tome:ratio=0.5"], "either --recipe or step specs"),
    ([], "either --recipe or step specs"),
    (["--weights", "unet=wanda:sparsity=0.3,scope=global"], "does not use the option 'scope'"),
    (["--weights", "unet"], "expected COMPONENT=METHOD"),
    (["--layers", "output-loss:ratio"], "expected key=value"),
    (["--recipe", "missing.yaml"], "no recipe file"),
])
def test_cli_compress_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, message):
    from diffprune.cli import main

    assert main(["compress", "shapes", "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
