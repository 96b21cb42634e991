"""Post-training weight pruning of text encoders and denoisers (U-Nets, diffusion transformers): magnitude, Wanda,
OWL, SparseGPT, random; N:M."""

from diffprune.formats import StateFormat, register_state_format
from diffprune.prompt_files import read_prompt_file
from diffprune.weights.calibrate import CalibrationConfig
from diffprune.weights.config import (METHODS, MagnitudeConfig, OWLConfig, PruneConfig, RandomConfig, SparseGPTConfig,
                                      WandaConfig, make_config, method_options)
from diffprune.weights.prune import ComponentResult, PruneResult, prune
from diffprune.weights.storage import FORMAT, is_sparse_folder, load_component, read_folder, save_for_pipeline
from diffprune.weights.targets import PRUNABLE_COMPONENTS

register_state_format(StateFormat(
    name=FORMAT, option="bitmask", components=PRUNABLE_COMPONENTS, detect=is_sparse_folder,
    read=read_folder, load=load_component, save=save_for_pipeline))

__all__ = ["METHODS", "CalibrationConfig", "ComponentResult", "MagnitudeConfig", "OWLConfig", "PruneConfig",
           "PruneResult", "RandomConfig", "SparseGPTConfig", "WandaConfig", "make_config", "method_options", "prune",
           "read_prompt_file"]
