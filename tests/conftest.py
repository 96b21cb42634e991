import os

import pytest

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def tiny_sd():
    import diffprune

    return diffprune.load("random:tiny-sd", seed=0)


@pytest.fixture(scope="session")
def tiny_sd_folder(tiny_sd, tmp_path_factory):
    import diffprune

    return diffprune.save(tiny_sd, tmp_path_factory.mktemp("saved") / "tiny-sd")


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """An empty Hugging Face cache with the Hub switched off."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))


@pytest.fixture(scope="module")
def shapes():
    """The bundled shapes testbed, loaded once per test module (tests that change it work on a deep copy)."""
    import diffprune

    pipe = diffprune.load("shapes")
    pipe.set_progress_bar_config(disable=True)
    return pipe
