"""Sweep and search: grids, restoring the dense weights between points, collapse points, budget search."""

import json

import pytest
import torch

import diffprune
from diffprune.cli import main
from diffprune.errors import DiffpruneError
from diffprune.weights.search import SearchConfig, search
from diffprune.weights.sweep import SweepConfig, plot_sweep, run_sweep
from diffprune.weights.targets import find_targets


def _sparsity(module) -> float:
    targets = find_targets(module)
    return sum(int((t.weight == 0).sum()) for t in targets) / sum(t.weight.numel() for t in targets)


def _quality(pipe) -> dict:
    """A known quality surface: flat up to 40 % U-Net / 50 % text-encoder sparsity, then a steep fall."""
    su, st = _sparsity(pipe.unet), _sparsity(pipe.text_encoder)
    loss = max(0.0, su - 0.4) * 4 + max(0.0, st - 0.5) * 4 + 0.01 * (su + st)
    return {"accuracy_all": 0.9 - loss, "fd": 10 + 100 * loss}


def test_sweep_restores_dense_weights_and_finds_the_collapse():
    pipe = diffprune.load("random:tiny-sd")
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    config = SweepConfig(methods=["magnitude", "random"], components=["unet", "text_encoder"],
                         sparsities=[0.2, 0.4, 0.5, 0.6, 0.7])
    result = run_sweep(pipe, config, _quality)
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())
    assert len(result.points) == 2 * 2 * 5
    assert result.dense["accuracy_all"] == pytest.approx(0.9)
    # below half of 0.9 = 0.45: the U-Net falls 4 per unit past 0.4 -> first at 0.6 (0.9 - 0.8 - ...)
    assert result.collapse("magnitude", "unet") == 0.6
    assert result.collapse("magnitude", "text_encoder") == 0.7
    curve = result.curve("magnitude", "unet")
    assert [v for _, v in curve] == sorted((v for _, v in curve), reverse=True)  # monotone here
    fig = plot_sweep(result)
    assert len(fig.axes) == 2


def test_search_finds_the_highest_sparsities_within_budget():
    pipe = diffprune.load("random:tiny-sd")
    config = SearchConfig(components=["text_encoder", "unet"], budget=0.02, step=0.05, max_sparsity=0.8)
    result = search(pipe, config, _quality)
    # alone: TE 0.5 costs 0.005 (ok), 0.55 costs 0.2055 (too much); U-Net 0.4 costs 0.004 (ok)
    # together 0.5 + 0.4 cost 0.009 <= 0.02
    assert result.best == {"text_encoder": 0.5, "unet": 0.4}
    assert result.drop <= 0.02
    assert _sparsity(pipe.unet) == 0  # the pipeline is left dense
    lower = search(pipe, SearchConfig(components=["unet"], budget=1.0, step=0.05, max_sparsity=0.8,
                                      metric="fd"), _quality)
    assert lower.best == {"unet": 0.4}  # fd: lower is better; 0.4 costs 0.4 fd points, 0.45 costs 20


@pytest.mark.parametrize("kwargs, message", [
    ({"sparsities": [0.5, 1.2]}, "sparsities must be in [0, 1)"),
    ({"methods": ["nope"]}, "unknown pruning method"),
    ({"components": ["vae"]}, "'vae' cannot be pruned"),
])
def test_bad_sweeps_fail_before_any_evaluation(kwargs, message):
    pipe = diffprune.load("random:tiny-sd")
    calls = []
    with pytest.raises(DiffpruneError, match=message.replace("[", r"\[").replace(")", r"\)")):
        run_sweep(pipe, SweepConfig(**kwargs), lambda p: calls.append(1) or {"accuracy_all": 1.0})
    assert calls == []


def test_sweep_and_search_commands_on_the_testbed(tmp_path, capsys):
    common = ["--prompts", "4", "--steps", "2", "--batch-size", "4", "--calib-num-prompts", "2",
              "--calib-steps", "2"]
    code = main(["sweep", "shapes", "--out", str(tmp_path / "sweep"), "--methods", "magnitude,wanda",
                 "--components", "unet", "--sparsities", "0.3,0.6", *common])
    assert code == 0, capsys.readouterr().err
    data = json.loads((tmp_path / "sweep" / "report.json").read_text())
    assert len(data["sweep"]["points"]) == 4 and (tmp_path / "sweep" / "sweep.png").is_file()
    code = main(["search", "shapes", "--out", str(tmp_path / "search"), "--budget", "1.0", "--components", "unet",
                 "--step", "0.3", "--max-sparsity", "0.6", *common])
    assert code == 0, capsys.readouterr().err
    data = json.loads((tmp_path / "search" / "report.json").read_text())
    assert data["search"]["best"] == {"unet": 0.6}  # a budget of 1.0 allows anything
    assert main(["search", "shapes", "--out", str(tmp_path / "bad"), "--budget", "-1"]) == 2
    assert not (tmp_path / "bad").exists()


def test_sweep_and_search_default_to_the_pipelines_denoiser_on_a_transformer():
    pipe = diffprune.load("random:tiny-pixart")
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}

    def quality(p):
        return {"accuracy_all": 1.0 - _sparsity(p.transformer)}

    result = run_sweep(pipe, SweepConfig(sparsities=[0.5]), quality)
    assert sorted(pt.component for pt in result.points) == ["text_encoder", "transformer"]
    point = next(pt for pt in result.points if pt.component == "transformer")
    assert point.metrics["accuracy_all"] == pytest.approx(0.5, abs=0.01)
    assert all(torch.equal(before[k], v) for k, v in pipe.transformer.state_dict().items())
    found = search(pipe, SearchConfig(budget=0.35, step=0.1, max_sparsity=0.5), quality)
    assert found.best == {"text_encoder": 0.5, "transformer": 0.3}
    with pytest.raises(DiffpruneError, match="named twice"):
        run_sweep(pipe, SweepConfig(components=["transformer", "denoiser"], sparsities=[0.5]), quality)
