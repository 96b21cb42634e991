"""The one-command training script: runs end to end and reproduces bit for bit from its seed."""

import hashlib
import json
import warnings

import pytest

from diffprune.testbed.train import TrainConfig, main, train


def _digest(folder):
    files = sorted(p for p in folder.rglob("*.safetensors"))
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.mark.slow
def test_quick_training_reproduces_and_loads(tmp_path, monkeypatch, capsys):
    import diffprune
    from diffprune.testbed.evaluator import load_evaluator

    main(["--out", str(tmp_path / "a"), "--quick"])
    assert "diffusion" in capsys.readouterr().out
    train(tmp_path / "b", TrainConfig.quick())
    a, b = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    assert len(a) == 4 and a == b  # evaluator, VAE, text encoder, U-Net
    log = json.loads((tmp_path / "a" / "training.json").read_text())
    assert log["config"]["seed"] == 0 and 0 <= log["evaluator_accuracy_heldout_renders"] <= 1
    monkeypatch.setenv("DIFFPRUNE_TESTBED", str(tmp_path / "a"))
    pipe = diffprune.load("shapes")
    assert pipe.unet.config.sample_size == 16 and pipe.vae.config.scaling_factor == log["vae_scaling_factor"]
    load_evaluator()
    c = TrainConfig.quick()
    c.seed = 1
    train(tmp_path / "c", c)
    assert _digest(tmp_path / "c") != a


@pytest.mark.slow
def test_zero_terminal_snr_option_trains_v_prediction(tmp_path):
    cfg = TrainConfig.quick()
    cfg.zero_terminal_snr = True
    train(tmp_path, cfg)
    sched = json.loads((tmp_path / "pipeline" / "scheduler" / "scheduler_config.json").read_text())
    assert sched["prediction_type"] == "v_prediction" and sched["rescale_betas_zero_snr"] is True
    assert sched["timestep_spacing"] == "trailing"


@pytest.mark.slow
def test_an_interrupted_run_resumes_bit_identically(tmp_path):
    from diffprune.testbed.checkpoint import TrainingInterrupted

    cfg = TrainConfig.quick()
    train(tmp_path / "whole", cfg)
    run = tmp_path / "resumed"
    with pytest.raises(TrainingInterrupted):  # killed in the middle of the VAE stage ...
        train(run, cfg, stop_after=("vae", 4))
    assert (run / "checkpoint.pt").exists() and not (run / "pipeline").exists()
    with pytest.raises(TrainingInterrupted):  # ... and again in the middle of the diffusion stage
        train(run, cfg, resume=True, stop_after=("diffusion", 5))
    train(run, cfg, resume=True)
    assert _digest(run) == _digest(tmp_path / "whole")
    assert not (run / "checkpoint.pt").exists()
    seconds = json.loads((run / "training.json").read_text())["seconds"]
    assert seconds["vae"] > 0 and seconds["diffusion"] > 0
    other = TrainConfig.quick()
    other.unet_lr = 5e-4
    with pytest.raises(TrainingInterrupted):
        train(tmp_path / "c", cfg, stop_after=("diffusion", 2))
    with pytest.raises(ValueError, match="another configuration"):
        train(tmp_path / "c", other, resume=True)


@pytest.mark.slow
def test_dit_testbed_trains_resumes_bit_identically_and_loads(tmp_path, monkeypatch):
    import diffprune
    from diffprune.testbed.checkpoint import TrainingInterrupted
    from diffprune.testbed.train_dit import DitTrainConfig, train_dit

    cfg = DitTrainConfig.quick()
    train_dit(tmp_path / "whole", cfg)
    with pytest.raises(TrainingInterrupted):
        train_dit(tmp_path / "resumed", cfg, stop_after=("diffusion", 4))
    train_dit(tmp_path / "resumed", cfg, resume=True)
    digest = lambda folder: {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
                             for p in sorted((folder / "pipeline").rglob("*.safetensors"))}
    assert digest(tmp_path / "resumed") == digest(tmp_path / "whole") and len(digest(tmp_path / "whole")) == 3
    monkeypatch.setenv("DIFFPRUNE_TESTBED_DIT", str(tmp_path / "whole"))
    pipe = diffprune.load("shapes-dit")
    assert type(pipe).__name__ == "PixArtSigmaPipeline" and pipe.vae_scale_factor == 4
    from diffusers import PixArtSigmaPipeline

    PixArtSigmaPipeline.from_pretrained(tmp_path / "whole" / "pipeline")  # stock diffusers loads the folder


def test_resuming_with_another_thread_count_warns_and_is_recorded(tmp_path):
    """A resumed run with another CPU thread count is another run (the sums' order changes): it says so and
    ``training.json`` keeps the thread counts it was resumed with."""
    from dataclasses import asdict

    import torch

    from diffprune.testbed.train import start_run

    cfg = TrainConfig.quick()
    started = torch.get_num_threads() + 1
    log = {"config": asdict(cfg), "torch": str(torch.__version__), "threads": started, "device": "cpu", "seconds": {}}
    torch.save({"done": {}, "running": None, "log": log, "elapsed": {}}, tmp_path / "checkpoint.pt")
    kwargs = dict(checkpoint_minutes=5.0, device="cpu", stop_after=None)
    with pytest.warns(UserWarning, match=f"started with {started} CPU threads"):
        _, _, _, resumed = start_run(tmp_path, cfg, resume=True, **kwargs)
    assert resumed["threads"] == started and resumed["resumed_with_threads"] == [torch.get_num_threads()]
    log["threads"] = torch.get_num_threads()  # the same count: nothing to say
    torch.save({"done": {}, "running": None, "log": log, "elapsed": {}}, tmp_path / "checkpoint.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, _, _, resumed = start_run(tmp_path, cfg, resume=True, **kwargs)
    assert "resumed_with_threads" not in resumed
