"""diffprune prune-weights: prints what it achieved, writes a loadable sparse folder, refuses bad input."""

import json

import pytest
import torch

import diffprune
from diffprune.cli import main


def test_prune_weights_writes_a_sparse_folder(tmp_path, capsys):
    out = tmp_path / "pruned"
    code = main(["prune-weights", "random:tiny-sd", "--out", str(out), "--method", "magnitude",
                 "--unet-sparsity", "0.35", "--text-encoder-sparsity", "0.475", "--dtype", "fp16",
                 "--json", str(tmp_path / "r.json")])
    assert code == 0
    text = capsys.readouterr().out
    assert "unet" in text and "35.00%" in text and "47.50%" in text and "on disk" in text
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["components"]["unet"]["sparsity"] == pytest.approx(0.35, abs=1e-6)
    pipe = diffprune.load(out)
    w = pipe.text_encoder.get_submodule(
        "text_model.encoder.layers.0.mlp.fc1" if hasattr(pipe.text_encoder, "text_model") else "encoder.layers.0.mlp.fc1")
    assert abs(float((w.weight == 0).float().mean()) - 0.475) < 0.01


@pytest.mark.parametrize("args, message", [
    (["--unet-sparsity", "1.0"], "--unet-sparsity must be in [0, 1)"),
    (["--unet-sparsity", "-0.2"], "--unet-sparsity must be in [0, 1)"),
    (["--unet-sparsity", "0.5", "--method", "obs"], "unknown pruning method 'obs'"),
    ([], "give at least one of"),
    (["--text-encoder-2-sparsity", "0.5"], "no component 'text_encoder_2'"),
    (["--unet-sparsity", "0.5", "--pattern", "4:8", "--conv"], "not a multiple of 8"),
    (["--unet-sparsity", "0.5", "--pattern", "2:4", "--method", "owl"], "OWL"),
    (["--unet-sparsity", "0.5", "--calib-prompts", "/nonexistent/prompts.txt", "--method", "wanda"],
     "cannot read prompts file"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, args, message):
    out = tmp_path / "pruned"
    code = main(["prune-weights", "random:tiny-sd", "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_input_folder_is_never_modified(tmp_path, tiny_sd_folder, capsys):
    before = {p: p.stat().st_mtime_ns for p in tiny_sd_folder.rglob("*")}
    w = diffprune.load(tiny_sd_folder).unet.conv_in.weight.clone()
    assert main(["prune-weights", str(tiny_sd_folder), "--out", str(tmp_path / "o"), "--unet-sparsity", "0.5",
                 "--conv"]) == 0
    assert {p: p.stat().st_mtime_ns for p in tiny_sd_folder.rglob("*")} == before
    assert torch.equal(diffprune.load(tiny_sd_folder).unet.conv_in.weight, w)
    assert main(["prune-weights", str(tiny_sd_folder), "--out", str(tiny_sd_folder / "inside"),
                 "--unet-sparsity", "0.5"]) == 2


def test_a_single_component_folder_is_refused_before_anything_is_written(tmp_path, tiny_sd_folder, capsys):
    out = tmp_path / "o"
    assert main(["prune-weights", str(tiny_sd_folder / "unet"), "--out", str(out), "--unet-sparsity", "0.5"]) == 2
    assert "give the whole pipeline folder" in capsys.readouterr().err and not out.exists()
