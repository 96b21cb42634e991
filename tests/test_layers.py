"""Layer pruning: units, exact knapsack, surgery (units really gone, identity units exact), save/load round trips,
BK-SDM presets and the CLI's refusals."""

import itertools
import json
import random

import pytest
import torch

import diffprune
from diffprune.archs import build_unet
from diffprune.cli import main
from diffprune.errors import DiffpruneError
from diffprune.layers import (build_preset, enumerate_units, greedy_cover, knapsack_min_cover, remove_units,
                              units_removed)
from diffprune.layers.storage import is_layer_pruned_folder, load_unet, plain_config, save_unet
from diffprune.measure import count_flops, unet_inputs


def _brute_force(scores, costs, target):
    best = None
    for r in range(len(scores) + 1):
        for subset in itertools.combinations(range(len(scores)), r):
            if sum(costs[i] for i in subset) >= target:
                value = sum(scores[i] for i in subset)
                if best is None or value < best - 1e-12:
                    best = value
    return best


@pytest.mark.parametrize("seed", range(12))
def test_knapsack_matches_brute_force(seed):
    rng = random.Random(seed)
    n = rng.randint(3, 9)
    scores = [rng.random() for _ in range(n)]
    costs = [rng.randint(1, 20) for _ in range(n)]
    target = rng.randint(1, sum(costs))
    chosen = knapsack_min_cover(scores, costs, target, bins=None)
    assert sum(costs[i] for i in chosen) >= target
    assert sum(scores[i] for i in chosen) == pytest.approx(_brute_force(scores, costs, target))
    for rule in ("score", "ratio"):
        greedy = greedy_cover(scores, costs, target, rule)
        assert sum(costs[i] for i in greedy) >= target
        assert sum(scores[i] for i in greedy) >= sum(scores[i] for i in chosen) - 1e-12


def test_binned_knapsack_still_reaches_the_target():
    rng = random.Random(0)
    costs = [rng.randint(10**6, 5 * 10**7) for _ in range(40)]
    scores = [rng.random() for _ in costs]
    target = sum(costs) // 2
    chosen = knapsack_min_cover(scores, costs, target, bins=500)
    assert sum(costs[i] for i in chosen) >= target
    with pytest.raises(DiffpruneError):
        knapsack_min_cover(scores, costs, sum(costs) + 1)


def test_sd15_units_and_removability():
    unet = build_unet("sd15", device="meta")
    units = enumerate_units(unet)
    kinds = [u.kind for u in units]
    assert kinds.count("attention") == 16 and kinds.count("resnet") + kinds.count("up_resnet") == 22
    table = {u.name: u for u in units}
    assert not table["down_blocks.1.resnets.0"].removable  # 320 -> 640
    assert table["down_blocks.1.resnets.1"].removable
    assert not table["up_blocks.3.resnets.0"].removable and table["up_blocks.3.resnets.1"].removable
    assert table["up_blocks.0.resnets.0"].removable  # main path already 1280 wide
    assert table["down_blocks.0.attentions.0"].params == 2_546_240
    layers = enumerate_units(unet, "layer")
    assert sum(u.kind == "layer" for u in layers) == 16


def test_bk_sdm_presets_have_the_published_sizes():
    unet = build_unet("sd15", device="meta")
    assert sum(p.numel() for p in build_preset(unet, "bk-base").parameters()) == 579_384_964
    assert sum(p.numel() for p in build_preset(unet, "bk-tiny").parameters()) == 323_384_964


def test_every_bk_sdm_preset_builds_from_the_testbed():
    # The testbed's two innermost stages share a width (64), so even Tiny applies; each preset keeps the I/O shape.
    unet = diffprune.load("shapes").unet
    kwargs = unet_inputs(unet, resolution=64, batch=1)
    sizes = []
    for name in ("bk-base", "bk-small", "bk-tiny"):
        student = build_preset(unet, name)
        sizes.append(sum(p.numel() for p in student.parameters()))
        with torch.no_grad():
            assert student(**kwargs)[0].shape == unet(**kwargs)[0].shape
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < 0.45 * sum(p.numel() for p in unet.parameters())


@pytest.fixture
def pipe():
    return diffprune.load("random:tiny-sdxl", seed=0)


def _out(unet, resolution=64):
    kwargs = unet_inputs(unet, resolution=resolution, batch=2)
    with torch.no_grad():
        return unet(**kwargs)[0]


def test_removed_units_are_really_gone(pipe):
    unet = pipe.unet
    units = {u.name: u for u in enumerate_units(unet, "layer")}
    names = ["down_blocks.1.attentions.0.transformer_blocks.1", "up_blocks.1.resnets.2", "mid_block.resnets.1"]
    params = sum(p.numel() for p in unet.parameters())
    kwargs = unet_inputs(unet, resolution=64, batch=1)
    flops = count_flops(unet, **kwargs).total
    remove_units(unet, names, units)
    assert sum(p.numel() for p in unet.parameters()) == params - sum(units[n].params for n in names)
    assert count_flops(unet, **kwargs).total == flops - sum(units[n].flops for n in names)
    assert len(unet.down_blocks[1].attentions[0].transformer_blocks) == 1


def _make_identity(module):
    """Zero the output projections so the module's residual update is exactly zero."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if any(k in name for k in ("to_out.0", "ff.net.2", "conv2", "proj_out")):
                p.zero_()


@pytest.mark.parametrize("name", ["down_blocks.1.attentions.1.transformer_blocks.0", "down_blocks.1.resnets.1",
                                  "up_blocks.1.attentions.0"])
def test_removing_an_identity_unit_gives_exactly_the_original_output(pipe, name):
    unet = pipe.unet
    _make_identity(unet.get_submodule(name))
    reference = _out(unet)
    with units_removed(unet, [name]):
        assert torch.equal(_out(unet), reference)
    assert torch.equal(_out(unet), reference)


def test_units_removed_restores_everything(pipe):
    unet = pipe.unet
    reference, state = _out(unet), {k: v.clone() for k, v in unet.state_dict().items()}
    with units_removed(unet, ["down_blocks.2.attentions.0", "up_blocks.0.resnets.1"]):
        assert not torch.equal(_out(unet), reference)
    assert torch.equal(_out(unet), reference)
    assert all(torch.equal(state[k], v) for k, v in unet.state_dict().items())


def test_layer_removal_saves_as_a_plain_diffusers_unet(pipe, tmp_path):
    from diffusers import UNet2DConditionModel

    unet = pipe.unet
    remove_units(unet, ["down_blocks.2.attentions.1.transformer_blocks.1",
                        "up_blocks.0.attentions.2.transformer_blocks.0"])
    assert plain_config(unet) is not None
    reference = _out(unet)
    assert save_unet(unet, tmp_path / "unet") == "diffusers"
    loaded, info = UNet2DConditionModel.from_pretrained(tmp_path / "unet", output_loading_info=True)
    assert all(not v for v in info.values()), info
    state = loaded.state_dict()
    assert state.keys() == unet.state_dict().keys()
    assert all(torch.equal(v, state[k]) for k, v in unet.state_dict().items())
    # bit-identical weights; diffusers' own save/load of an unpruned U-Net moves outputs by ~1e-6 (the loaded
    # tensors take other CPU kernel paths), so the output is compared at that precision
    assert torch.allclose(_out(loaded.eval()), reference, rtol=0, atol=1e-5)


def test_resnet_removal_round_trips_through_the_diffprune_format(pipe, tmp_path):
    unet = pipe.unet
    remove_units(unet, ["up_blocks.1.resnets.1", "down_blocks.2.attentions.0", "mid_block.resnets.0",
                        "mid_block.resnets.1", "mid_block.attentions.0"])
    assert unet.mid_block is None and plain_config(unet) is None
    reference = _out(unet)
    out = diffprune.save(pipe, tmp_path / "p")
    assert is_layer_pruned_folder(out / "unet")
    again = diffprune.load(out)
    assert torch.equal(_out(again.unet), reference)
    assert sum(p.numel() for p in again.unet.parameters()) == sum(p.numel() for p in unet.parameters())
    assert torch.equal(_out(load_unet(out / "unet")), reference)


@pytest.mark.parametrize("argv, message", [
    (["--ratio", "0.97"], "is not below the most that can be removed"),
    (["--ratio", "0.3", "--criterion", "oracle"], "unknown criterion 'oracle'"),
    (["--ratio", "1.5"], "ratio must be in (0, 1)"),
    ([], "give exactly one of --ratio and --preset"),
    (["--ratio", "0.3", "--preset", "bk-base"], "give exactly one of --ratio and --preset"),
])
def test_prune_layers_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, message):
    code = main(["prune-layers", "random:tiny-sd", "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_prune_layers_refuses_a_model_without_a_unet(tmp_path, tiny_sd_folder, capsys):
    code = main(["prune-layers", str(tiny_sd_folder / "text_encoder"), "--out", str(tmp_path / "o"),
                 "--ratio", "0.3"])
    assert code == 2 and "prune-layers needs one" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_prune_layers_cli_writes_a_loadable_folder(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["prune-layers", "random:tiny-sd", "--out", str(out), "--ratio", "0.3", "--criterion", "magnitude",
                 "--json", str(tmp_path / "r.json")]) == 0
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["params_after"] <= 0.7 * data["params_before"]
    loaded = diffprune.load(out)
    assert sum(p.numel() for p in loaded.unet.parameters()) == data["params_after"]


def test_output_loss_and_the_additivity_report_mechanics():
    from diffprune.layers import LayerCalibrationConfig, record_calibration, score_units
    from diffprune.layers.additivity import additivity, random_sets
    from diffprune.layers.criterion import output_loss
    from diffprune.layers.units import removable_units

    pipe = diffprune.load("shapes")
    pipe.set_progress_bar_config(disable=True)
    data = record_calibration(pipe, LayerCalibrationConfig(num_prompts=2, steps=4, timesteps=2, batch_size=2))
    assert len(data.inputs) == 2 and data.inputs[0]["sample"].shape[0] == 2
    units = removable_units(enumerate_units(pipe.unet, vae_scale_factor=4, text_length=16))[:8]
    assert output_loss(pipe.unet, data, []) == 0.0
    scores = {c: score_units(pipe, units, c, data) for c in ("output-loss", "magnitude")}
    assert all(v > 0 for v in scores["output-loss"].values())
    assert random_sets(units, 5, (2, 3), seed=1) == random_sets(units, 5, (2, 3), seed=1)
    result = additivity(pipe.unet, data, units, scores, count=6, sizes=(1, 1))
    # mechanics: for sets of one unit the real loss is the single score itself
    assert result.pearson("output-loss") == pytest.approx(1.0)
    assert result.real == pytest.approx(result.summed["output-loss"])
    # for pairs the real loss is measured, not summed: it differs from the sum (units interact)
    pairs = additivity(pipe.unet, data, units, scores, count=4, sizes=(2, 2), seed=3)
    assert all(len(s) == 2 for s in pairs.sets) and all(r > 0 for r in pairs.real)
    assert pairs.real != pytest.approx(pairs.summed["output-loss"], rel=1e-6)


def test_non_finite_scores_are_refused():
    for bad in (float("nan"), float("inf")):
        with pytest.raises(DiffpruneError, match="not finite"):
            knapsack_min_cover([bad, 1.0], [10, 1], 5)


def test_pruning_twice_works_on_the_already_pruned_unet(pipe, tmp_path):
    from diffprune.layers import LayerPruningConfig, prune

    first = prune(pipe, LayerPruningConfig(ratio=0.2, criterion="magnitude"))
    second = prune(pipe, LayerPruningConfig(ratio=0.2, criterion="magnitude"))
    assert not set(first.removed) & set(second.removed)
    assert second.params_before == first.params_after and second.params_after < second.params_before
    out = diffprune.save(pipe, tmp_path / "p")
    again = diffprune.load(out)
    third = prune(again, LayerPruningConfig(ratio=0.1, criterion="random"))
    assert third.params_after < third.params_before


def test_a_module_emptied_at_layer_granularity_keeps_what_was_scored(pipe, tmp_path):
    unet = pipe.unet
    names = [f"up_blocks.1.attentions.0.transformer_blocks.{k}" for k in range(2)]
    with units_removed(unet, names):
        scored = _out(unet)
    remove_units(unet, names)
    assert torch.equal(_out(unet), scored)
    assert plain_config(unet) is not None  # depth 0 is a valid diffusers configuration
    save_unet(unet, tmp_path / "unet")
    from diffusers import UNet2DConditionModel

    loaded = UNet2DConditionModel.from_pretrained(tmp_path / "unet").eval()
    assert torch.allclose(_out(loaded), scored, rtol=0, atol=1e-5)


def test_bk_copy_rule_takes_the_teachers_last_up_pair():
    teacher = diffprune.load("random:tiny-sd", seed=0).unet
    student = build_preset(teacher, "bk-base")
    t, s = teacher.state_dict(), student.state_dict()
    for stage in range(len(student.up_blocks)):
        key = f"up_blocks.{stage}.resnets.1.conv1.weight"
        last = len(teacher.up_blocks[stage].resnets) - 1
        assert torch.equal(s[key], t[f"up_blocks.{stage}.resnets.{last}.conv1.weight"])
        assert not torch.equal(s[key], t[f"up_blocks.{stage}.resnets.1.conv1.weight"]) or last == 1
    assert torch.equal(s["down_blocks.0.resnets.0.conv1.weight"], t["down_blocks.0.resnets.0.conv1.weight"])


def test_presets_follow_per_module_depths():
    from diffprune.layers.presets import preset_config

    config = dict(build_unet("sdxl", device="meta").config)
    config["transformer_layers_per_block"] = [1, [2, 2], [10, 4]]
    config["reverse_transformer_layers_per_block"] = [[10, 4, 6], [2, 2, 2], [1, 1, 1]]
    student = preset_config(config, "bk-base")
    assert student["transformer_layers_per_block"] == [1, [2], [10]]
    assert student["reverse_transformer_layers_per_block"] == [[10, 6], [2, 2], [1, 1]]
    with pytest.raises(DiffpruneError, match="share a width"):
        preset_config(dict(build_unet("sdxl", device="meta").config), "bk-tiny")
