"""Where the testbed weights live: inside the installed package, or in a folder written by the training script.

Set ``DIFFPRUNE_TESTBED`` to the output folder of ``python -m diffprune.testbed.train`` to use a retrained
testbed (its ``pipeline/`` and ``evaluator.safetensors``) everywhere ``shapes`` is used.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from ..errors import DiffpruneError

WEIGHTS_DIR = Path(__file__).with_name("weights")
RETRAIN_HINT = "retrain them with: python -m diffprune.testbed.train --out DIR"


ENV_VAR = "DIFFPRUNE_TESTBED"
DIT_ENV_VAR = "DIFFPRUNE_TESTBED_DIT"


def weights_dir() -> Path:
    """``$DIFFPRUNE_TESTBED`` if set, else the weights committed with the package."""
    override = os.environ.get(ENV_VAR)
    return Path(override).expanduser() if override else WEIGHTS_DIR


def testbed_folder() -> Path:
    """The shapes pipeline folder (``StableDiffusionPipeline`` layout, fp16 weights)."""
    folder = weights_dir() / "pipeline"
    if not (folder / "model_index.json").is_file():
        raise DiffpruneError(f"the shapes testbed weights are missing from {folder}; {RETRAIN_HINT}")
    return folder


def dit_testbed_folder() -> Path:
    """The DiT shapes pipeline folder (``PixArtSigmaPipeline`` layout, fp16 weights): ``dit/pipeline`` of the
    weights folder, or ``pipeline/`` of ``$DIFFPRUNE_TESTBED_DIT`` (an output folder of ``train_dit``)."""
    override = os.environ.get(DIT_ENV_VAR)
    folder = (Path(override).expanduser() if override else WEIGHTS_DIR / "dit") / "pipeline"
    if not (folder / "model_index.json").is_file():
        raise DiffpruneError(f"the shapes-dit testbed weights are missing from {folder}; train them with: "
                             "python -m diffprune.testbed.train_dit --out DIR")
    return folder


def evaluator_weights() -> Path:
    """The shapes evaluator's weights (safetensors)."""
    path = weights_dir() / "evaluator.safetensors"
    if not path.is_file():
        raise DiffpruneError(f"the shapes evaluator weights are missing ({path}); {RETRAIN_HINT}")
    return path


@contextlib.contextmanager
def quiet_text_encoder_type():
    """While a bundled testbed loads, drop diffusers' warning that the text encoder is not the pipeline's usual
    type: ``shapes-dit`` pairs a PixArt pipeline with the shapes testbed's CLIP text encoder on purpose."""
    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Expected types for text_encoder")

    log = logging.getLogger("diffusers.pipelines.pipeline_utils")
    log.addFilter(keep)
    try:
        yield
    finally:
        log.removeFilter(keep)
