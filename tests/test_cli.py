import json
import subprocess
import sys
from pathlib import Path

import pytest

from diffprune.cli import main


def _one_line_error(capsys, code):
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2
    assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in captured.err
    assert captured.out == ""
    return lines[0]


def test_measure_json_has_the_headline_keys(tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["measure", "random:tiny-sd", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["unet_params"] == 2_446_788 and data["text_encoder_params"] == 51_616
    assert data["resolution"] == 64 and data["batch"] == 1
    assert 0 < data["unet_attention_tflops"] < data["unet_tflops"]
    assert "unet" in capsys.readouterr().out


def test_measure_full_size_sd15_on_meta(tmp_path):
    out = tmp_path / "sd15.json"
    assert main(["measure", "random:sd15", "--resolution", "512", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["unet_params"] == 859_520_964
    assert abs(data["unet_tflops"] - 0.803) / 0.803 < 0.01


def test_measure_with_latency_and_batch(tmp_path):
    one, two = tmp_path / "b1.json", tmp_path / "b2.json"
    assert main(["measure", "random:tiny-sd", "--json", str(one)]) == 0
    assert main(["measure", "random:tiny-sd", "--latency", "2", "--batch", "2", "--json", str(two)]) == 0
    b1, b2 = json.loads(one.read_text()), json.loads(two.read_text())
    assert b2["unet_latency_median_s"] > 0 and b2["batch"] == 2
    assert b2["unet_tflops"] == pytest.approx(2 * b1["unet_tflops"], rel=1e-9)
    assert b2["unet_nonzero_params"] <= b2["unet_params"]  # real weights were loaded for the timing


def test_measure_sdxl_through_the_cli(tmp_path):
    out = tmp_path / "xl.json"
    assert main(["measure", "random:sdxl", "--resolution", "1024", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["unet_params"] == 2_567_463_684 and abs(data["unet_tflops"] - 6.76) / 6.76 < 0.01
    assert data["text_encoder_2_params"] == 694_659_840


def test_component_folders(tiny_sd_folder, tmp_path, capsys):
    assert main(["info", str(tiny_sd_folder / "unet")]) == 0
    assert "bare U-Net" in capsys.readouterr().out
    out = tmp_path / "unet.json"
    assert main(["measure", str(tiny_sd_folder / "unet"), "--json", str(out)]) == 0
    whole = tmp_path / "whole.json"
    assert main(["measure", str(tiny_sd_folder), "--json", str(whole)]) == 0
    unet_only, full = json.loads(out.read_text()), json.loads(whole.read_text())
    assert unet_only["unet_tflops"] == full["unet_tflops"] and unet_only["unet_params"] == full["unet_params"]
    assert main(["info", str(tiny_sd_folder / "vae")]) == 0
    assert "AutoencoderKL component" in capsys.readouterr().out
    assert "unsupported model" in _one_line_error(capsys, main(["measure", str(tiny_sd_folder / "vae")]))
    assert "whole pipeline" in _one_line_error(
        capsys, main(["demo", "--source", str(tiny_sd_folder / "unet"), "--out", str(tmp_path / "d")]))
    assert not (tmp_path / "d").exists()


def test_info_on_a_saved_folder(tiny_sd_folder, capsys):
    assert main(["info", str(tiny_sd_folder)]) == 0
    out = capsys.readouterr().out
    assert "SD-1.x" in out and "on disk:" in out and "2,446,788" in out


def test_demo_benches_the_shipped_recipes_and_writes_one_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "2", "--prompts", "2", "--recipes", "atedm", "sd2-study"]) == 0
    data = json.loads((out / "report.json").read_text())
    assert [row["variant"] for row in data["table"]] == ["baseline", "atedm", "sd2-study"]
    bench = data["bench"]
    assert bench["testbed"] and bench["config"]["steps"] == 2 and len(bench["captions"]) == 2
    assert all(0 <= v["quality"]["accuracy_all"] <= 1 for v in bench["variants"])
    assert {"pareto.png", "variants.png"} <= set(data["files"])
    assert "fewer than the full suite" in (out / "report.md").read_text()
    printed = capsys.readouterr().out
    assert "report.md" in printed and "all attributes right" in printed and "sd2-study" in printed
    code = main(["demo", "--out", str(out)])
    _one_line_error(capsys, code)
    assert json.loads((out / "report.json").read_text()) == data  # untouched


@pytest.mark.parametrize("argv", [
    ["measure", "does/not/exist"],
    ["measure", "random:nope"],
    ["measure", "random:tiny-sd", "--resolution", "100"],
    ["measure", "random:tiny-sd", "--batch", "0"],
    ["measure", "random:tiny-sd", "--dtype", "int8"],
    ["measure"],
    ["info", "./nowhere"],
    ["frobnicate"],
    ["measure", "random:tiny-sd", "--device", "foo"],
    ["measure", "random:tiny-sd", "--device", "cuda:7"],
    ["measure", "random:tiny-sd", "--device", "meta", "--latency", "2"],
    ["demo", "--source", "nope/x"],
])
def test_user_errors_are_one_line_with_exit_2(argv, capsys):
    _one_line_error(capsys, main(argv))


def test_json_into_a_missing_folder_writes_nothing(tmp_path, capsys):
    target = tmp_path / "no" / "such" / "m.json"
    _one_line_error(capsys, main(["measure", "random:tiny-sd", "--json", str(target)]))
    assert not (tmp_path / "no").exists()


def test_json_never_lands_in_the_input_folder(tiny_sd_folder, capsys):
    _one_line_error(capsys, main(["measure", str(tiny_sd_folder), "--json", str(tiny_sd_folder / "m.json")]))
    assert not (tiny_sd_folder / "m.json").exists()


def test_json_never_overwrites_the_input_checkpoint(tmp_path, capsys):
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"precious")
    _one_line_error(capsys, main(["measure", str(checkpoint), "--json", str(checkpoint)]))
    assert checkpoint.read_bytes() == b"precious"


def test_unsupported_model_folder(tmp_path, capsys):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "HunyuanDiTPipeline"}))
    assert "unsupported model" in _one_line_error(capsys, main(["info", str(tmp_path)]))


def test_uncached_hub_id(offline_hub, capsys):
    assert "Hugging Face cache" in _one_line_error(capsys, main(["measure", "nobody/nothing"]))


@pytest.mark.parametrize("argv", [["--help"], ["info", "--help"], ["measure", "--help"], ["demo", "--help"],
                                  ["eval", "--help"]])
def test_help_everywhere(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0 and "usage:" in capsys.readouterr().out


def test_installed_command_exits_2_without_traceback():
    command = Path(sys.executable).parent / "diffprune"  # the console script pip installed
    proc = subprocess.run([str(command), "measure", "does/not/exist"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "diffprune: error: no such file or folder: does/not/exist (and it is not a Hub id like 'org/name')"]


def test_source_help_names_every_random_architecture(capsys):
    from diffprune.archs import available
    from diffprune.cli.source import RANDOM_ARCHS

    listed = [name for names in RANDOM_ARCHS.values() for name in names]
    assert sorted(listed) == sorted(available())
    with pytest.raises(SystemExit):
        main(["measure", "--help"])
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines, also at hyphens
    assert all(name in text for name in listed)
