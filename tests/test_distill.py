"""Distillation: the loss terms against hand-computed values, feature sites, a run on the testbed, masks kept,
determinism, exact resume, and two processes against one."""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch

import diffprune
from diffprune import layers, weights
from diffprune.distill import (DistillConfig, DistillInterrupted, distill, feature_spread, matched_sites,
                               normalized_feature_terms, plain_feature_terms, stage_names, shapes_data, total_loss)
from diffprune.errors import DiffpruneError


def test_feature_terms_against_hand_computed_values():
    s, t = torch.tensor([[1.0, 2.0]]), torch.tensor([[2.0, 0.0]])
    # ||s - t||^2 = 1 + 4 = 5; ||t||^2 = 4, ||t|| = 2; the MSE is 5 / 2
    assert normalized_feature_terms([s], [t])[0].item() == pytest.approx(5 / 4, rel=1e-5)
    assert normalized_feature_terms([s], [t], power=1)[0].item() == pytest.approx(5 / 2, rel=1e-5)
    assert plain_feature_terms([s], [t])[0].item() == pytest.approx(5 / 2)
    # per sample, then the batch mean: (5/4 + 0) / 2
    batch_s, batch_t = torch.stack([s[0], t[0]]), torch.stack([t[0], t[0]])
    assert normalized_feature_terms([batch_s], [batch_t])[0].item() == pytest.approx(5 / 8, rel=1e-5)
    loss = total_loss(torch.tensor(1.0), torch.tensor(2.0), [torch.tensor(3.0), torch.tensor(4.0)],
                      lambda_task=1.0, lambda_out=0.5, lambda_feat=2.0)
    assert loss.item() == pytest.approx(1 + 1 + 14)


def test_normalized_terms_ignore_each_sites_scale_and_plain_ones_do_not():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)
    small = normalized_feature_terms([s], [t])[0]
    large = normalized_feature_terms([s * 100], [t * 100])[0]
    assert large.item() == pytest.approx(small.item(), rel=1e-4)
    assert plain_feature_terms([s * 100], [t * 100])[0].item() == pytest.approx(
        1e4 * plain_feature_terms([s], [t])[0].item(), rel=1e-4)
    log = [{"step": 1, "feat/a": 100.0, "feat/b": 0.1}, {"step": 2, "feat/a": 1.0, "feat/b": 1.0}]
    assert feature_spread(log) == pytest.approx([3.0, 0.0])


@pytest.fixture(scope="module")
def data(shapes):
    return shapes_data(shapes, n=48, seed=3)


def _student(shapes, ratio=0.3):
    student = copy.deepcopy(shapes)
    layers.prune(student, layers.LayerPruningConfig(ratio=ratio, criterion="magnitude"))
    return student


def _state(pipe):
    return {k: v.clone() for k, v in pipe.unet.state_dict().items()}


QUICK = DistillConfig(steps=4, batch_size=4, lr=1e-3, log_every=1)


def test_feature_sites_are_the_stages_both_models_have(shapes):
    student = _student(shapes)
    assert matched_sites(student.unet, shapes.unet) == [(n, n) for n in stage_names(shapes.unet)]
    small = copy.deepcopy(shapes)
    layers.apply_preset(small, "bk-small")  # no mid block left
    assert "mid_block" not in [s for s, _ in matched_sites(small.unet, shapes.unet)]
    units = [s for s, t in matched_sites(student.unet, shapes.unet, "units") if s == t]
    removed = set(history_removed(student))
    assert units and not removed & set(units)


def history_removed(pipe):
    return [n for s in pipe._diffprune["history"] if s["step"] == "prune-layers" for n in s["removed"]]


def test_a_run_trains_the_student_logs_every_term_and_leaves_the_teacher(shapes, data):
    student = _student(shapes)
    teacher_before, student_before = _state(shapes), _state(student)
    result = distill(student, shapes, data, QUICK, progress=False)
    assert all(torch.equal(v, shapes.unet.state_dict()[k]) for k, v in teacher_before.items())
    assert any(not torch.equal(v, student.unet.state_dict()[k]) for k, v in student_before.items())
    assert [e["step"] for e in result.log] == [1, 2, 3, 4]
    entry = result.log[-1]
    sites = [k for k in entry if k.startswith("feat/")]
    assert len(sites) == len(result.sites) == len(stage_names(shapes.unet))
    assert entry["loss"] == pytest.approx(entry["task"] + entry["output_kd"] + sum(entry[k] for k in sites), rel=1e-4)
    assert student._diffprune["history"][-1]["step"] == "distill"
    assert torch.isfinite(student("a red circle", num_inference_steps=2, output_type="pt").images).all()


def test_weight_pruned_students_keep_their_zeros(shapes, data):
    student = _student(shapes)
    weights.prune(student, {"unet": weights.MagnitudeConfig(sparsity=0.4)})
    zeros = {n: p == 0 for n, p in student.unet.named_parameters() if p.dim() >= 2}
    distill(student, shapes, data, QUICK, progress=False)
    for name, p in student.unet.named_parameters():
        if name in zeros:
            assert (p[zeros[name]] == 0).all(), name


def test_same_seed_same_weights_and_a_resumed_run_ends_exactly_where_an_uninterrupted_one_does(shapes, data, tmp_path):
    config = DistillConfig(steps=4, batch_size=4, lr=1e-3, ema_decay=0.9, log_every=1, checkpoint_every=2)
    a, b = _student(shapes), _student(shapes)
    distill(a, shapes, data, config, work_dir=tmp_path / "a", progress=False)
    distill(b, shapes, data, config, work_dir=tmp_path / "b", progress=False)
    assert all(torch.equal(v, b.unet.state_dict()[k]) for k, v in a.unet.state_dict().items())
    c = _student(shapes)
    with pytest.raises(DistillInterrupted):
        distill(c, shapes, data, config, work_dir=tmp_path / "run", stop_after=2, progress=False)
    d = _student(shapes)
    result = distill(d, shapes, data, config, work_dir=tmp_path / "run", resume="latest", progress=False)
    assert all(torch.equal(v, d.unet.state_dict()[k]) for k, v in a.unet.state_dict().items())
    assert [e["step"] for e in result.log] == [1, 2, 3, 4]
    assert len(list((tmp_path / "run" / "checkpoints").iterdir())) == 2  # the total limit


def test_bad_settings_are_refused():
    with pytest.raises(DiffpruneError, match="feature_kd"):
        DistillConfig(feature_kd="cosine")
    with pytest.raises(DiffpruneError, match="multiple of"):
        DistillConfig(batch_size=6, gradient_accumulation=4)
    with pytest.raises(DiffpruneError, match="every loss weight is zero"):
        DistillConfig(lambda_task=0, lambda_out=0, feature_kd="none")


@pytest.mark.slow
def test_two_processes_end_where_one_does(shapes, tmp_path):
    student = _student(shapes)
    folder = diffprune.save(student, tmp_path / "student")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    common = [str(folder), "--teacher", "shapes", "--data", "shapes:32", "--steps", "3", "--batch-size", "4",
              "--lr", "1e-3"]
    one = subprocess.run([sys.executable, "-m", "diffprune.cli", "distill", *common, "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
                          "diffprune.cli", "distill", *common, "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = diffprune.load(tmp_path / "one"), diffprune.load(tmp_path / "two")
    start = student.unet.state_dict()
    # Adam's first steps move every weight by about lr whatever the gradient's size, so float summation order
    # can flip the sign of a near-zero gradient: compare the difference with how far training moved the weights
    moved = max((x.float() - start[n].float()).abs().max().item() for n, x in a.unet.state_dict().items())
    apart = max((x.float() - y.float()).abs().max().item()
                for x, y in zip(a.unet.state_dict().values(), b.unet.state_dict().values()))
    assert moved > 1e-3 and apart < 0.02 * moved, (moved, apart)
    log_one = [json.loads(line) for line in (tmp_path / "one-work" / "log.jsonl").read_text().splitlines()]
    log_two = [json.loads(line) for line in (tmp_path / "two-work" / "log.jsonl").read_text().splitlines()]
    assert [e["loss"] for e in log_one] == pytest.approx([e["loss"] for e in log_two], rel=1e-4)


def test_a_recipe_prunes_then_retrains_in_one_call(shapes):
    from diffprune.recipe import Recipe, compress

    pipe = copy.deepcopy(shapes)
    recipe = Recipe.from_dict({"layers": {"criterion": "magnitude", "ratio": 0.3},
                               "distill": {"data": "shapes:32", "steps": 2, "batch_size": 4, "lr": 1e-3}})
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    result = compress(pipe, recipe, progress=False)
    assert [s.family for s in result.steps] == ["layers", "distill"]
    assert [s["step"] for s in pipe._diffprune["history"]] == ["prune-layers", "distill"]
    assert result.distill.steps == 2 and len(result.distill.log) == 2
    with pytest.raises(DiffpruneError, match="unknown key 'stpes'"):
        Recipe.from_dict({"distill": {"data": "shapes", "stpes": 10}})
    with pytest.raises(DiffpruneError, match="no data folder"):
        compress(copy.deepcopy(shapes), Recipe.from_dict({"distill": {"data": "/nope/folder"}}), progress=False)


def test_an_image_caption_folder_and_a_prompt_file_make_training_data(shapes, tmp_path):
    from PIL import Image

    from diffprune.distill import data_from_spec

    folder = tmp_path / "images"
    folder.mkdir()
    rows = []
    for i, color in enumerate([(255, 0, 0), (0, 0, 255), (0, 255, 0)]):
        Image.new("RGB", (80, 96), color).save(folder / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": f"picture {i}"}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    data = data_from_spec(str(folder), shapes)
    assert len(data) == 3 and sorted(data.captions) == ["picture 0", "picture 1", "picture 2"]
    assert data.means.shape[1:] == (shapes.unet.config.in_channels, 16, 16)
    cache = data.save(tmp_path / "cache.safetensors")
    again = type(data).load(cache)
    assert torch.equal(again.means, data.means) and again.captions == data.captions
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    drawn = data_from_spec(f"prompts:{prompts}", shapes)
    assert drawn.captions == ["a red circle", "a blue square"] and torch.count_nonzero(drawn.stds) == 0


def test_cli_distill_quick_run_resume_and_refusals(shapes, tmp_path, capsys):
    from diffprune.cli import main

    student = diffprune.save(_student(shapes), tmp_path / "student")
    out, work = tmp_path / "out", tmp_path / "out-work"
    args = ["distill", str(student), "--teacher", "shapes", "--data", "shapes", "--out", str(out), "--quick"]
    assert main(args) == 0
    assert diffprune.load(out)._diffprune["history"][-1]["step"] == "distill"
    assert {"log.jsonl", "log.csv", "latents.safetensors", "report"} <= {p.name for p in work.iterdir()}
    capsys.readouterr()
    assert main(args) == 2 and "--resume latest" in capsys.readouterr().err  # an earlier run is not clobbered
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    assert main([*args[:-1], "--work", str(foreign), "--overwrite"]) == 2
    assert (foreign / "notes.txt").read_text() == "keep"
    assert main([*args, "--resume", "latest", "--work", str(tmp_path / "empty")]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_cli_distill_loads_the_teacher_with_the_source_options(tmp_path, monkeypatch):
    """--dtype, --config and the integrity checks apply to the teacher as to the student (they were ignored)."""
    import diffprune.io
    from diffprune.cli import main

    calls = []

    class Stop(Exception):
        pass

    def fake_load(source, **kwargs):
        calls.append((source, kwargs))
        if len(calls) == 2:
            raise Stop
        return object()

    monkeypatch.setattr(diffprune.io, "load", fake_load)
    monkeypatch.setattr(diffprune, "load", fake_load)
    with pytest.raises(Stop):
        main(["distill", "random:tiny-sd", "--teacher", "random:tiny-sd", "--data", "shapes", "--quick",
              "--dtype", "bf16", "--no-verify", "--out", str(tmp_path / "out")])
    (_, student), (teacher_source, teacher) = calls
    assert teacher_source == "random:tiny-sd" and teacher == student
    assert teacher["dtype"] == "bf16" and teacher["verify"] is False


@pytest.mark.parametrize("extra", [["--teacher", "shapes"], ["--teacher", "random:tiny-pixart", "--mixed-precision", "fp16"]])
def test_cli_distill_refused_pair_writes_nothing(tmp_path, capsys, extra):
    """A student and teacher that cannot be trained together are refused before the run folder is made (it used
    to hold cached latents and a run marker, so that the corrected command was then refused too)."""
    from diffprune.cli import main

    out = tmp_path / "out"
    argv = ["distill", "random:tiny-pixart", *extra, "--data", "shapes", "--quick", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "out-work").exists()


def test_the_run_check_looks_again_each_time():
    """check_run judges the pipelines as they are now (a remembered verdict would miss a change, and would keep
    both pipelines alive)."""
    from diffprune.distill import check_run

    student, teacher = diffprune.load("random:tiny-pixart"), diffprune.load("random:tiny-pixart")
    config = DistillConfig(steps=1)
    assert check_run(student, teacher, config)  # the blocks pair up
    student.transformer.to(torch.bfloat16)
    with pytest.raises(DiffpruneError, match="train it in float32"):
        check_run(student, teacher, config)
