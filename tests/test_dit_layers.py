"""Block pruning of diffusion transformers: units, criteria through the real pipeline, exact selection, and surgery
that leaves a plain diffusers config stock ``from_pretrained`` loads cleanly."""

from __future__ import annotations


import pytest
import torch

import diffprune
from diffprune import archs, layers
from diffprune.layers.dit import blocks_removed

CALIB = layers.LayerCalibrationConfig(num_prompts=2, steps=3, timesteps=2, batch_size=2)


def _pipe(name: str):
    pipe = diffprune.load(f"random:{name}", seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _stock_reload(model, folder):
    model.save_pretrained(folder)
    back, info = type(model).from_pretrained(folder, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return back


def test_units_are_the_blocks_in_forward_order():
    flux = archs.build_denoiser("tiny-flux")
    units = layers.enumerate_units(flux)
    assert [u.name for u in units] == ["transformer_blocks.0", "transformer_blocks.1", "single_transformer_blocks.0",
                                       "single_transformer_blocks.1", "single_transformer_blocks.2"]
    assert [u.kind for u in units] == ["double"] * 2 + ["single"] * 3
    assert all(u.flops > 0 and u.removable for u in units)
    assert units[0].params == sum(p.numel() for p in flux.transformer_blocks[0].parameters())
    sd3 = layers.enumerate_units(archs.build_denoiser("tiny-sd3"))
    assert [u.removable for u in sd3] == [True, True, False]  # the last joint block ends the text stream
    assert "text stream" in sd3[-1].reason


def test_removing_a_block_for_a_while_changes_the_output_and_puts_it_back():
    pipe = _pipe("tiny-pixart")
    model = pipe.transformer
    from diffprune.measure import denoiser_inputs

    x = denoiser_inputs(model, resolution=32, vae_scale_factor=2, text_length=8)
    with torch.no_grad():
        before = model(**x)[0]
        with blocks_removed(model, ["transformer_blocks.1"]):
            assert len(model.transformer_blocks) == 1 and layers.is_layer_pruned(model)
            without = model(**x)[0]
        after = model(**x)[0]
    assert torch.equal(before, after) and not torch.allclose(before, without)
    assert not layers.is_layer_pruned(model)
    layers.remove_units(model, ["transformer_blocks.0"])
    assert not layers.is_layer_pruned(model)  # the config follows a removal for good
    with pytest.raises(diffprune.DiffpruneError, match="save_pretrained"):
        layers.save_unet(model, "unused")


@pytest.mark.parametrize("name,remove,depths", [
    ("tiny-flux", ["transformer_blocks.0", "single_transformer_blocks.1"], {"num_layers": 1, "num_single_layers": 2}),
    ("tiny-sd3", ["transformer_blocks.0"], {"num_layers": 2}),
    ("tiny-pixart", ["transformer_blocks.0"], {"num_layers": 1}),
    ("tiny-sana", ["transformer_blocks.1"], {"num_layers": 1}),
])
def test_removed_blocks_leave_a_plain_config_stock_diffusers_loads(name, remove, depths, tmp_path):
    model = archs.build_denoiser(name, seed=2)
    kept = {k: v.clone() for k, v in model.state_dict().items()}
    layers.remove_units(model, remove)
    assert {k: model.config[k] for k in depths} == depths
    back = _stock_reload(model, tmp_path / "t")
    assert sum(p.numel() for p in back.parameters()) == sum(p.numel() for p in model.parameters())
    # the remaining blocks are the original ones, renumbered
    first_kept = "transformer_blocks.1." if name != "tiny-sana" else "transformer_blocks.0."
    sample = next(k for k in kept if k.startswith(first_kept))
    assert torch.equal(back.state_dict()[sample.replace(first_kept, "transformer_blocks.0.")], kept[sample])


def test_sd35_dual_attention_indices_follow_their_blocks(tmp_path):
    model = archs.build_denoiser("tiny-sd35")
    assert list(model.config.dual_attention_layers) == [0, 1]
    layers.remove_units(model, ["transformer_blocks.0"])
    assert list(model.config.dual_attention_layers) == [0] and model.config.num_layers == 2
    back = _stock_reload(model, tmp_path / "t")
    assert hasattr(back.transformer_blocks[0], "attn2") and getattr(back.transformer_blocks[1], "attn2", None) is None


@pytest.mark.parametrize("criterion", ["output-loss", "taylor", "magnitude", "random"])
@pytest.mark.parametrize("name", ["tiny-flux", "tiny-sd3", "tiny-pixart", "tiny-sana"])
def test_every_criterion_prunes_every_dit_family_through_its_pipeline(name, criterion):
    pipe = _pipe(name)
    params = sum(p.numel() for p in pipe.transformer.parameters())
    config = layers.LayerPruningConfig(ratio=0.25, criterion=criterion, calibration=CALIB)
    result = layers.prune(pipe, config)
    assert result.removed and result.params_before == params
    removed = params - result.params_after
    assert removed >= 0.25 * params  # the knapsack covers the target
    assert result.flops_after < result.flops_before
    assert pipe._diffprune["history"][-1]["step"] == "prune-layers"
    size = archs.arch_spec(name)["resolution"]
    from diffprune.anatomy import call_options

    image = pipe("a red circle", num_inference_steps=2, height=size, width=size, max_sequence_length=16,
                 generator=torch.Generator().manual_seed(0), output_type="np", **call_options(pipe)).images
    assert image.shape == (1, size, size, 3)


def test_output_loss_is_zero_without_removal_and_ranks_blocks():
    pipe = _pipe("tiny-flux")
    data = layers.record_calibration(pipe, CALIB)
    assert len(data.inputs) == CALIB.timesteps  # one batch of two prompts
    assert data.inputs[0]["hidden_states"].shape[0] == 2  # the batch, no guidance doubling in Flux
    assert layers.output_loss(pipe.transformer, data, []) == 0.0
    units = layers.removable_units(layers.enumerate_units(pipe.transformer))
    scores = layers.score_units(pipe, units, "output-loss", data)
    assert all(v > 0 for v in scores.values())
    pair = [units[0].name, units[-1].name]
    both = layers.output_loss(pipe.transformer, data, pair)
    assert both > max(scores[n] for n in pair) * 0.5  # removing two costs at least about as much as one
    result = layers.additivity(pipe.transformer, data, units, {"output-loss": scores}, count=4, sizes=(2, 3))
    assert len(result.real) == 4 and all(r > 0 for r in result.real)


def test_cfg_pipelines_record_the_conditional_half():
    pipe = _pipe("tiny-sd3")
    data = layers.record_calibration(pipe, CALIB)
    x = data.inputs[0]
    assert x["hidden_states"].shape[0] == 2 and x["encoder_hidden_states"].shape[0] == 2
    assert x["pooled_projections"].shape[0] == 2 and x["timestep"].shape == (2,)


def test_presets_are_refused_on_a_dit_and_compress_prunes_its_blocks(tmp_path, capsys):
    from diffprune.cli import main

    assert main(["prune-layers", "random:tiny-flux", "--preset", "bk-small", "--out", str(tmp_path / "x")]) == 2
    assert "presets" in capsys.readouterr().err
    out = tmp_path / "pruned"
    assert main(["prune-layers", "random:tiny-flux", "--ratio", "0.3", "--criterion", "magnitude",
                 "--out", str(out)]) == 0
    assert "plain diffusers FluxTransformer2DModel" in capsys.readouterr().out
    from diffusers import FluxTransformer2DModel

    _, info = FluxTransformer2DModel.from_pretrained(out / "transformer", output_loading_info=True)
    assert not any(info.values())
    assert len(diffprune.load(out).transformer.single_transformer_blocks) + len(
        diffprune.load(out).transformer.transformer_blocks) < 5


def test_pixart_sigma_half_by_parameters_reloads_with_stock_diffusers(tmp_path):
    """The published PixArt-Sigma transformer (0.61 B parameters), half of it removed by magnitude."""
    model = archs.build_denoiser("pixart-sigma", seed=0)
    before = sum(p.numel() for p in model.parameters())
    result = layers.prune(model, layers.LayerPruningConfig(ratio=0.5, criterion="magnitude"))
    after = sum(p.numel() for p in model.parameters())
    assert after <= 0.5 * before and model.config.num_layers == 28 - len(result.removed)
    del result
    _stock_reload(model, tmp_path / "pixart")


@pytest.mark.parametrize("name", ["tiny-flux", "tiny-sd3", "tiny-pixart"])
def test_half_through_the_command_reloads_with_stock_diffusers_bit_identically(name, tmp_path, capsys):
    """``prune-layers --ratio 0.5`` writes through diffprune's own save; the stock class alone reloads the
    transformer cleanly, and it holds exactly the weights the Python API's pruning of the same source gives."""
    from diffprune.cli import main

    out = tmp_path / "half"
    assert main(["prune-layers", f"random:{name}", "--ratio", "0.5", "--criterion", "magnitude",
                 "--out", str(out)]) == 0
    pipe = _pipe(name)
    before = sum(p.numel() for p in pipe.transformer.parameters())
    layers.prune(pipe, layers.LayerPruningConfig(ratio=0.5, criterion="magnitude"))
    model = pipe.transformer
    assert sum(p.numel() for p in model.parameters()) <= 0.5 * before
    back, info = type(model).from_pretrained(out / "transformer", output_loading_info=True)
    assert not any(info.values()), info
    import json

    def public(config):  # as written to config.json (tuples become lists)
        return json.loads(json.dumps({k: v for k, v in config.items() if not k.startswith("_")}))

    assert public(back.config) == public(model.config)
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
