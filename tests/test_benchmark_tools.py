"""The benchmark scripts that other checks rely on read their inputs right."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from diffprune.testbed.assets import WEIGHTS_DIR

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reproduction_report_counts_a_tensor_only_one_side_holds(tmp_path, capsys):
    reference = tmp_path / "reference"
    shutil.copytree(WEIGHTS_DIR, reference)
    evaluator = load_file(str(reference / "evaluator.safetensors"))
    dropped = min(evaluator)
    del evaluator[dropped]
    save_file(evaluator, str(reference / "evaluator.safetensors"))

    _load_script("testbed_reproduction").main([str(WEIGHTS_DIR), "--reference", str(reference)])
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "/" in line}
    total = len(evaluator) + 1
    assert rows["evaluator"] == [f"{total - 1} / {total}", "inf", "1"]
    unet = load_file(str(WEIGHTS_DIR / "pipeline/unet/diffusion_pytorch_model.safetensors"))
    assert rows["unet"] == [f"{len(unet)} / {len(unet)}", "0", "0"]


def test_reproduction_report_compares_two_dit_runs(tmp_path, capsys):
    """Two shapes-dit folders: the transformer is compared, and one changed weight shows."""
    from safetensors.torch import load_file as load

    run, reference = tmp_path / "run", tmp_path / "reference"
    shutil.copytree(WEIGHTS_DIR / "dit", run)
    shutil.copytree(WEIGHTS_DIR / "dit", reference)
    file = reference / "pipeline/transformer/diffusion_pytorch_model.safetensors"
    tensors = load(str(file))
    changed = sorted(tensors)[0]
    tensors[changed] = tensors[changed].clone()
    tensors[changed].view(-1)[0] += 1
    save_file(tensors, str(file))

    _load_script("testbed_reproduction").main([str(run), "--reference", str(reference)])
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "/" in line}
    n = len(tensors)
    assert rows["transformer"][0] == f"{n - 1} / {n}" and float(rows["transformer"][1]) > 0
    assert rows["vae"][0].split(" / ")[0] == rows["vae"][0].split(" / ")[1] and "unet" not in rows
