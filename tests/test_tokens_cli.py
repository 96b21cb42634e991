"""--tokens on the command line: generate, measure (mean FLOPs over a schedule) and eval; bad specs are one line,
exit 2, and nothing is written."""

import json

import pytest
from PIL import Image

from diffprune.cli import main


def test_measure_reports_the_mean_over_the_schedule(tmp_path, capsys):
    base, pruned = tmp_path / "base.json", tmp_path / "pruned.json"
    assert main(["measure", "random:tiny-sdxl", "--steps", "10", "--json", str(base)]) == 0
    assert main(["measure", "random:tiny-sdxl", "--tokens", "atedm:ratio=0.5,tau=0.3", "--steps", "10",
                 "--json", str(pruned)]) == 0
    out = capsys.readouterr().out
    assert "U-Net calls of a 10-step schedule" in out and "tokens atedm:ratio=0.5,tau=0.3" in out
    b, p = json.loads(base.read_text()), json.loads(pruned.read_text())
    assert p["steps"] == 10 and len(p["unet_tflops_per_step"]) == p["unet_calls"] == 10
    assert p["unet_tflops"] == pytest.approx(sum(p["unet_tflops_per_step"]) / 10, rel=1e-9)
    assert b["unet_tflops_per_step"] == [b["unet_tflops"]] * 10
    assert max(p["unet_tflops_per_step"]) < b["unet_tflops"]
    assert len(set(p["unet_tflops_per_step"])) == 2  # DSAP: an early and a late plan


def test_generate_writes_one_grid_and_the_same_seed_gives_the_same_pixels(tmp_path, capsys):
    args = ["generate", "random:tiny-sd", "--prompt", "a red circle", "--prompt", "a blue square",
            "--steps", "2", "--resolution", "64", "--tokens", "atedm:ratio=0.5"]
    assert main([*args, "--out", str(tmp_path / "a.png")]) == 0
    assert main([*args, "--out", str(tmp_path / "b.png")]) == 0
    a, b = Image.open(tmp_path / "a.png"), Image.open(tmp_path / "b.png")
    assert a.size == (128, 64) and a.tobytes() == b.tobytes()
    assert "tokens atedm:ratio=0.5" in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "a.png")]) == 2  # exists, no --overwrite
    assert main([*args, "--out", str(tmp_path / "a.png"), "--overwrite"]) == 0


@pytest.mark.parametrize("source", ["random:tiny-pixart", "random:tiny-sana"])
def test_generate_draws_a_dit_at_the_size_asked(tmp_path, capsys, source):
    # PixArt and Sana snap the size to aspect-ratio bins unless told not to; 64 is off every bin.
    out = tmp_path / "dit.png"
    assert main(["generate", source, "--prompt", "a red circle", "--steps", "2", "--resolution", "64",
                 "--out", str(out)]) == 0
    assert Image.open(out).size == (64, 64)
    assert "at 64x64" in capsys.readouterr().out


def test_eval_with_tokens_applies_them(tmp_path, capsys):
    def fd(extra):
        out = tmp_path / f"m{len(extra)}.json"
        assert main(["eval", "shapes", "--prompts", "4", "--steps", "4", *extra, "--json", str(out)]) == 0
        data = json.loads(out.read_text())
        metrics = data.get("metrics", data)
        assert metrics["n_images"] == 4
        return metrics["fd"]

    assert fd(["--tokens", "atedm:ratio=0.6"]) != fd([])


@pytest.mark.parametrize("argv, message", [
    (["measure", "random:tiny-sd", "--tokens", "atedm:ratio=1.5"], "ratio must be in [0, 1)"),
    (["measure", "random:tiny-sd", "--tokens", "fastest"], "unknown token pruning method 'fastest'"),
    (["generate", "random:tiny-sd", "--prompt", "x", "--tokens", "atedm:speed=2"], "bad token pruning option"),
    (["eval", "shapes", "--tokens", "tome:ratio=0.9"], "merges at most 0.75"),
    (["generate", "random:tiny-sd", "--prompt", "x"], "--out must name a .png file"),
])
def test_bad_specs_are_one_line_exit_2_and_nothing_written(tmp_path, capsys, argv, message):
    target = tmp_path / "out.png"
    extra = ["--out", str(target)] if argv[0] == "generate" and "--tokens" in argv else []
    if argv[0] == "generate" and not extra:
        extra = ["--out", str(tmp_path / "out.jpg")]
    json_out = ["--json", str(tmp_path / "m.json")] if argv[0] != "generate" else []
    code = main([*argv, *extra, *json_out])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []
