"""diffprune's promises under bad input and accidents: one clear line and exit 2 with nothing written (every case of
docs/reliability.md, whose table must match these runs), byte-identical outputs across processes, repair after a
kill, umask modes, formats stock diffusers must refuse, and the stacked layer + weight pruned save."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import diffprune
from reliability_cases import CASES, doc_table, render, run_case

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


_OUTCOMES = {}  # each case runs once: its own test, then the table check reuses the outcome


def _outcome(case, tmp_path_factory):
    if case.name not in _OUTCOMES:
        _OUTCOMES[case.name] = run_case(case, tmp_path_factory.mktemp("case") / case.name)
    return _OUTCOMES[case.name]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path_factory, case):
    o = _outcome(case, tmp_path_factory)
    assert o.code == 2, o.stderr
    assert len(o.stderr.strip().splitlines()) == 1 and "Traceback" not in o.stderr, o.stderr
    assert case.expect in o.stderr, o.stderr
    assert o.changed == [], f"the run changed {o.changed}"


@pytest.mark.slow
def test_the_reliability_doc_holds_exactly_the_measured_table(tmp_path_factory):
    outcomes = {case.name: _outcome(case, tmp_path_factory) for case in CASES}
    assert doc_table() == render(outcomes), "docs/reliability.md is stale: run python tests/reliability_cases.py"


def _cli(*argv, cwd):
    proc = subprocess.run([sys.executable, "-m", "diffprune.cli", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_same_seed_gives_the_same_bytes_across_processes(tmp_path):
    calib = ["--calib-num-prompts", "2", "--calib-steps", "2", "--seed", "0"]
    runs = {
        "wanda-bitmask": ["prune-weights", "shapes", "--method", "wanda", "--unet-sparsity", "0.3",
                          "--text-encoder-sparsity", "0.3", *calib],
        "random-dense": ["prune-weights", "shapes", "--method", "random", "--unet-sparsity", "0.4", "--format", "dense",
                         "--seed", "3"],
        "layers-block": ["prune-layers", "shapes", "--ratio", "0.3", "--calib-timesteps", "2", *calib],
        "layers-plain": ["prune-layers", "shapes", "--ratio", "0.1", "--expressible", "--calib-timesteps", "2", *calib],
    }
    for name, argv in runs.items():
        first, second = tmp_path / f"{name}-1", tmp_path / f"{name}-2"
        _cli(*argv, "--out", str(first), cwd=tmp_path)  # a new process each: hash seeds and map orders differ
        _cli(*argv, "--out", str(second), cwd=tmp_path)
        a, b = _tree_bytes(first), _tree_bytes(second)
        assert sorted(a) == sorted(b), name
        assert [k for k in a if a[k] != b[k]] == [], name
    assert (tmp_path / "layers-block-1" / "unet" / "diffprune_layers.json").exists()  # both U-Net storages covered
    assert not (tmp_path / "layers-plain-1" / "unet" / "diffprune_layers.json").exists()
    for i in (1, 2):
        _cli("generate", "shapes", "--prompt", "a big red circle", "--steps", "4", "--out", f"g{i}.png", cwd=tmp_path)
    assert (tmp_path / "g1.png").read_bytes() == (tmp_path / "g2.png").read_bytes()


_KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from diffprune._fs import staged_dir

    target, when = Path(sys.argv[1]), sys.argv[2]
    rename = Path.rename

    def rename_then_die(self, dst):  # SIGKILL right after the old result was moved aside
        moved = rename(self, dst)
        if ".old-" in Path(dst).name:
            os.kill(os.getpid(), signal.SIGKILL)
        return moved

    if when == "between-renames":
        Path.rename = rename_then_die
    with staged_dir(target, overwrite=True) as staging:
        (staging / "diffprune.json").write_text('{"format": "diffprune-report"}')
        (staging / "result.txt").write_text("new")
        if when == "staging":
            os.kill(os.getpid(), signal.SIGKILL)
        if when == "live":  # a run in progress: hold the staging folder until told to go on
            print("staging", flush=True)
            sys.stdin.readline()
""")


def _write_result(target: Path, text: str) -> None:
    from diffprune._fs import staged_dir

    with staged_dir(target, overwrite=True) as staging:
        (staging / "diffprune.json").write_text('{"format": "diffprune-report"}')
        (staging / "result.txt").write_text(text)


@pytest.mark.parametrize("when", ["between-renames", "staging"])
def test_a_killed_replacement_is_repaired_by_the_next_run(tmp_path, when):
    from diffprune._fs import check_output_dir

    target = tmp_path / "out"
    _write_result(target, "old")
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(target), when], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    assert leftovers, "the kill left nothing behind; the test did not hit its moment"
    if when == "between-renames":
        assert not target.exists()  # the state a crash there leaves
    check_output_dir(target, overwrite=True)  # what any next run that writes `out` does first
    assert (target / "result.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    _write_result(target, "newer")
    assert (target / "result.txt").read_text() == "newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_run_in_progress_is_left_alone_by_another_run(tmp_path):
    from diffprune._fs import check_output_dir

    target = tmp_path / "out"
    _write_result(target, "old")
    writer = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(target), "live"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "staging"
        staged = sorted(p.name for p in tmp_path.iterdir())
        check_output_dir(target, overwrite=True)  # another run checks the same output meanwhile
        assert sorted(p.name for p in tmp_path.iterdir()) == staged  # its staging folder and lock are untouched
        writer.communicate("go\n", timeout=120)
    finally:
        writer.kill()
    assert writer.returncode == 0
    assert (target / "result.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_saved_files_follow_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        out = diffprune.save(diffprune.load("random:tiny-sd"), tmp_path / "p", weights_format="bitmask")
    finally:
        os.umask(previous)
    modes = {p.relative_to(out).as_posix(): p.stat().st_mode & 0o777 for p in [out, *out.rglob("*")]}
    assert {m for p, m in modes.items() if (out / p).is_dir()} == {0o750}, modes
    assert {m for p, m in modes.items() if (out / p).is_file()} == {0o640}, modes


def _layer_pruned_testbed():
    from diffprune.layers import remove_units

    pipe = diffprune.load("shapes")
    remove_units(pipe.unet, ["up_blocks.1.resnets.1", "mid_block.resnets.1"])
    return pipe


def test_stock_diffusers_refuses_a_folder_in_the_layers_format(tmp_path):
    from diffusers import StableDiffusionPipeline

    out = diffprune.save(_layer_pruned_testbed(), tmp_path / "p")
    assert (out / "unet" / "diffprune_layers.json").exists()
    with pytest.raises(Exception, match="no file named diffusion_pytorch_model"):
        StableDiffusionPipeline.from_pretrained(out)
    assert "diffprune.load" in (out / "README.md").read_text()
    assert diffprune.load(out).unet.mid_block is not None


def test_a_layer_and_weight_pruned_unet_saves_as_bitmask_and_loads_bit_exact(tmp_path):
    from diffprune.weights import MagnitudeConfig, prune

    pipe = _layer_pruned_testbed()
    prune(pipe, {"unet": MagnitudeConfig(0.5), "text_encoder": MagnitudeConfig(0.5)})
    out = diffprune.save(pipe, tmp_path / "p", weights_format="bitmask")
    assert (out / "unet" / "diffprune_sparse.safetensors").exists()
    assert not (out / "unet" / "diffprune_layers.safetensors").exists()
    dense = diffprune.save(pipe, tmp_path / "d")
    # Linear layers at 50 %, convolutions dense: 0.83x of the dense file in fp32
    assert (out / "unet" / "diffprune_sparse.safetensors").stat().st_size < \
        0.9 * (dense / "unet" / "diffprune_layers.safetensors").stat().st_size
    again = diffprune.load(out)
    want, have = pipe.unet.state_dict(), again.unet.state_dict()
    assert sorted(want) == sorted(have)
    assert all(torch.equal(want[k], have[k]) for k in want)
    assert diffprune.load(out / "unet").state_dict().keys() == want.keys()  # the component folder alone


def test_verification_and_the_finite_check_can_be_skipped(tmp_path):
    pipe = diffprune.load("shapes")
    with torch.no_grad():
        pipe.unet.conv_in.bias[0] = float("inf")
    out = diffprune.save(pipe, tmp_path / "p")
    with pytest.raises(diffprune.DiffpruneError, match="'conv_in.bias' holds NaN or infinite"):
        diffprune.load(out)
    assert torch.isinf(diffprune.load(out, allow_nonfinite=True).unet.conv_in.bias[0])
    file = out / "vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(file.read_bytes())
    data[-3] ^= 0x01
    file.write_bytes(bytes(data))
    with pytest.raises(diffprune.DiffpruneError, match="vae/diffusion_pytorch_model.safetensors is damaged"):
        diffprune.load(out, allow_nonfinite=True)
    diffprune.load(out, allow_nonfinite=True, verify=False)  # the user asked to skip the check


def test_a_model_folder_never_reaches_diffusers_with_foreign_code(tmp_path, monkeypatch):
    from diffusers import DiffusionPipeline

    from reliability_cases import evil_library_folder

    evil_library_folder(tmp_path)
    calls = []
    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", classmethod(lambda cls, *a, **k: calls.append(a)))
    with pytest.raises(diffprune.DiffpruneError, match="names the library 'evil_unet'"):
        diffprune.load(tmp_path / "E")
    assert calls == [] and not (tmp_path / "EVIL_RAN").exists()


@pytest.mark.slow
def test_prune_layers_prints_no_progress_bars_when_stderr_is_not_a_terminal(tmp_path):
    proc = _cli("prune-layers", "shapes", "--out", "o", "--ratio", "0.2", "--calib-num-prompts", "2",
                "--calib-steps", "2", "--calib-timesteps", "2", cwd=tmp_path)
    assert proc.stderr == ""


def test_calibration_and_evaluation_read_prompt_files_alike(tmp_path):
    from diffprune.evaluate.prompts import file_prompts
    from diffprune.weights import read_prompt_file

    path = tmp_path / "p.txt"
    path.write_text("\ufeff# my prompts\nred circle\n\n  # indented comment\nblue square  \n", encoding="utf-8")
    assert read_prompt_file(path) == ["red circle", "blue square"]
    assert [p.caption for p in file_prompts(path)] == ["red circle", "blue square"]


def test_a_hub_model_index_is_checked_before_anything_is_downloaded(tmp_path, offline_hub, monkeypatch):
    import json

    from diffusers import DiffusionPipeline

    from reliability_cases import evil_library_folder

    evil_library_folder(tmp_path)
    repo = tmp_path / "cache" / "models--some-org--evil"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "model_index.json").write_text(
        json.dumps(json.loads((tmp_path / "E" / "model_index.json").read_text())))
    calls = []
    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", classmethod(lambda cls, *a, **k: calls.append(a)))
    with pytest.raises(diffprune.DiffpruneError, match="some-org/evil/model_index.json: 'unet' names the library"):
        diffprune.load("some-org/evil", cache_dir=str(tmp_path / "cache"))
    assert calls == []


def test_the_config_folder_of_a_single_file_checkpoint_is_checked_too(tmp_path, monkeypatch):
    import diffusers
    from safetensors.torch import save_file

    from reliability_cases import evil_library_folder

    evil_library_folder(tmp_path)
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4)}, tmp_path / "ckpt.safetensors")
    calls = []
    monkeypatch.setattr(diffusers.StableDiffusionPipeline, "from_single_file",
                        classmethod(lambda cls, *a, **k: calls.append(a)))
    with pytest.raises(diffprune.DiffpruneError, match="names the library 'evil_unet'"):
        diffprune.load(tmp_path / "ckpt.safetensors", config=str(tmp_path / "E"))
    assert calls == [] and not (tmp_path / "EVIL_RAN").exists()


def test_a_sharded_unet_in_the_layers_format_keeps_every_shard(tmp_path, monkeypatch):
    import functools

    from diffusers import UNet2DConditionModel

    pipe = _layer_pruned_testbed()
    want = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    # what diffusers does by itself for an SD-XL-size U-Net (10 GB shards): several files and an index
    monkeypatch.setattr(UNet2DConditionModel, "save_pretrained",
                        functools.partialmethod(UNet2DConditionModel.save_pretrained, max_shard_size="4MB"))
    out = diffprune.save(pipe, tmp_path / "p")
    shards = sorted(p.name for p in (out / "unet").glob("*.safetensors"))
    assert len(shards) > 1 and not list((out / "unet").glob("*.index.json"))
    have = diffprune.load(out).unet.state_dict()
    assert sorted(have) == sorted(want) and all(torch.equal(want[k], have[k]) for k in want)


def test_saved_configs_do_not_record_where_the_model_was_loaded_from(tmp_path):
    import shutil

    from diffprune.testbed.assets import testbed_folder

    outs = []
    for name in ("a", "b"):
        shutil.copytree(testbed_folder(), tmp_path / name)
        outs.append(diffprune.save(diffprune.load(tmp_path / name), tmp_path / f"out-{name}"))
    a, b = _tree_bytes(outs[0]), _tree_bytes(outs[1])
    assert [k for k in a if a[k] != b[k]] == ["diffprune.json"]  # only the manifest names the source given
    assert not [k for k, v in a.items() if k.endswith(".json") and b"name_or_path" in v]


def test_a_replacement_interrupted_between_its_renames_puts_the_old_result_back(tmp_path, monkeypatch):
    target = tmp_path / "out"
    _write_result(target, "old")
    rename = Path.rename

    def refuse_second(self, dst):
        if Path(dst) == target and ".tmp-" in self.name:
            raise KeyboardInterrupt  # Ctrl-C right between moving the old result aside and the new one in
        return rename(self, dst)

    monkeypatch.setattr(Path, "rename", refuse_second)
    with pytest.raises(KeyboardInterrupt):
        _write_result(target, "new")
    assert (target / "result.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_sd1_folders_with_the_retired_feature_extractor_name_pass_the_index_check():
    from diffprune.integrity import check_model_index

    index = {"_class_name": "StableDiffusionPipeline", "feature_extractor": ["transformers", "CLIPFeatureExtractor"],
             "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
             "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"], "requires_safety_checker": True}
    check_model_index(index, "model_index.json")
