"""Training-free run-time token pruning (AT-EDM: G-WPR ranking, similarity recovery, DSAP) and the baselines it
is compared with (ToMe, random), as idempotent ``apply`` / ``remove`` patches of a diffusers U-Net."""

from .config import METHODS, TokenPruningConfig, parse_spec, with_ratio
from .measure import ScheduleFlops, ratio_for_flops, schedule_flops
from .patch import applied_config, apply, at_timestep, remove

__all__ = ["METHODS", "ScheduleFlops", "TokenPruningConfig", "applied_config", "apply", "at_timestep",
           "parse_spec", "ratio_for_flops", "remove", "schedule_flops", "with_ratio"]
