"""Retraining of pruned U-Nets by distillation (LAPTOP-Diff's normalized feature KD, BK-SDM's plain feature KD):
the task loss, output KD and feature KD against the frozen original, trained through 🤗 accelerate on one
process or many, resumable."""

from .config import DistillConfig
from .data import DistillData, check_data_spec, data_from_spec, folder_data, prompt_data, shapes_data
from .features import FeatureTaps, matched_sites, stage_names, unit_names
from .losses import normalized_feature_terms, plain_feature_terms, total_loss
from .report import feature_spread, plot_terms
from .train import DistillInterrupted, DistillResult, check_pipelines, check_run, distill

__all__ = ["DistillConfig", "DistillData", "DistillInterrupted", "DistillResult", "FeatureTaps", "check_data_spec", "check_pipelines", "check_run", "data_from_spec", "distill",
           "feature_spread", "folder_data", "matched_sites", "normalized_feature_terms", "plain_feature_terms",
           "plot_terms", "prompt_data", "stage_names", "shapes_data", "total_loss", "unit_names"]
