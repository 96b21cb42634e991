"""``diffprune eval``: JSON keys, reports, one-line errors, and sharding across processes."""

import json
import os
import subprocess
import sys

import pytest

from diffprune.cli import main

KEYS = ("accuracy_all", "accuracy_color", "accuracy_shape", "accuracy_position", "fd", "n_images", "seconds")


def _one_line_error(capsys, code):
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in captured.err
    return lines[0]


def test_eval_shapes_writes_json_and_report(tmp_path, capsys):
    out, report = tmp_path / "m.json", tmp_path / "rep"
    assert main(["eval", "shapes", "--prompts", "4", "--steps", "4", "--batch-size", "2",
                 "--json", str(out), "--report", str(report)]) == 0
    data = json.loads(out.read_text())
    assert all(k in data for k in KEYS) and data["n_images"] == 4 and data["steps"] == 4
    saved = json.loads((report / "report.json").read_text())
    assert "images.png" in saved["files"] and saved["accuracy_all"] == data["accuracy_all"]
    assert "Per prompt" in (report / "report.md").read_text()
    assert "accuracy_all" in capsys.readouterr().out


def test_eval_of_the_testbed_folder_as_saved(tmp_path):
    """The testbed's pipeline folder as training writes it (fp16 on disk), given as a plain folder without
    ``--dtype``: it evaluates like ``shapes`` (which loads the same weights in fp32)."""
    import shutil

    from diffprune.testbed.assets import testbed_folder

    folder = shutil.copytree(testbed_folder(), tmp_path / "pipeline")
    args = ["--prompts", "2", "--steps", "3", "--batch-size", "2"]
    assert main(["eval", str(folder), *args, "--json", str(tmp_path / "a.json")]) == 0
    assert main(["eval", "shapes", *args, "--json", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert {k: a[k] for k in KEYS if k != "seconds"} == {k: b[k] for k in KEYS if k != "seconds"}


def test_eval_fidelity_of_a_pipeline_against_itself(tmp_path):
    out = tmp_path / "f.json"
    assert main(["eval", "shapes", "--suite", "fidelity", "--reference", "shapes", "--prompts", "3",
                 "--steps", "3", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["psnr"] == 100.0 and data["ssim"] == pytest.approx(1.0) and data["feature_cosine"] == pytest.approx(1.0)
    assert {k: v for k, v in data.items() if k.startswith("agreement_")} == {
        f"agreement_{a}": 1.0 for a in ("all", "count", "color", "shape", "size", "position")}


@pytest.mark.parametrize("argv", [
    ["eval", "shapes", "--suite", "nope"],
    ["eval", "shapes", "--prompts", "0"],
    ["eval", "shapes", "--prompts", "101"],
    ["eval", "shapes", "--prompts", "1"],
    ["eval", "shapes", "--suite", "fid", "--prompts", "1", "--inception-weights", "p.txt"],
    ["eval", "shapes", "--suite", "pickscore", "--pickscore-model", ".", "--pickscore-processor", "/no/such"],
    ["eval", "shapes", "--prompts-file", "p.txt"],
    ["eval", "shapes", "--suite", "clip", "--prompts", "2", "--steps", "1"],
    ["eval", "shapes", "--suite", "fid", "--prompts", "2", "--steps", "1"],
    ["eval", "shapes", "--suite", "pickscore", "--pickscore-model", "/no/such", "--prompts", "2", "--steps", "1"],
    ["eval", "does/not/exist"],
])
def test_eval_user_errors(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.txt").write_text("a cat\n")
    _one_line_error(capsys, main(argv))


def test_eval_json_is_checked_before_running(tmp_path, capsys):
    _one_line_error(capsys, main(["eval", "shapes", "--json", str(tmp_path / "missing" / "m.json")]))
    assert not (tmp_path / "missing").exists()


def test_two_processes_give_the_same_numbers(tmp_path):
    """Sharded over two CPU processes (torchrun, as accelerate's multi-process launchers do) == one process,
    with the same number of threads per process."""
    args = ["eval", "shapes", "--prompts", "6", "--steps", "3", "--batch-size", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    single = subprocess.run([sys.executable, "-m", "diffprune.cli", *args, "--json", str(one)], env=env,
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29533", "-m", "diffprune.cli", *args, "--json", str(two)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "on 2 processes" in run.stdout and "on 2 processes" not in single.stdout
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    a.pop("seconds"), b.pop("seconds")
    assert a == b and a["n_images"] == 6
