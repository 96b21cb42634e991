"""Post-training weight pruning of text encoders and U-Nets: magnitude, Wanda, OWL, SparseGPT, random; N:M."""

from diffprune.prompt_files import read_prompt_file
from diffprune.weights.calibrate import CalibrationConfig
from diffprune.weights.config import (METHODS, MagnitudeConfig, OWLConfig, PruneConfig, RandomConfig, SparseGPTConfig,
                                      WandaConfig, make_config)
from diffprune.weights.prune import ComponentResult, PruneResult, prune

__all__ = ["METHODS", "CalibrationConfig", "ComponentResult", "MagnitudeConfig", "OWLConfig", "PruneConfig",
           "PruneResult", "RandomConfig", "SparseGPTConfig", "WandaConfig", "make_config", "prune",
           "read_prompt_file"]
