"""Training-free run-time token pruning (AT-EDM: G-WPR ranking, similarity recovery, DSAP) and the baselines it
is compared with (ToMe, random), as idempotent ``apply`` / ``remove`` patches of a diffusers U-Net."""

from diffprune.measure.runtime import RuntimePatchKind, register_runtime_patch

from .config import METHODS, SOURCES, TokenPruningConfig, parse_spec, with_ratio
from .dit_scoring import rank_tokens
from .measure import ScheduleFlops, ratio_for_flops, schedule_flops
from .patch import KeptTokens, active_patch, applied_config, apply, at_timestep, observe_kept, remove
from .prune import TokenPruneResult, prune


def _describe(unet) -> str | None:
    config = applied_config(unet)
    return None if config is None else config.spec()


def _apply_spec(target, spec: str):
    return apply(target, parse_spec(spec))


register_runtime_patch(RuntimePatchKind("tokens", _describe, schedule_flops, _apply_spec))

__all__ = ["KeptTokens", "METHODS", "observe_kept", "ScheduleFlops", "TokenPruneResult", "TokenPruningConfig",
           "active_patch", "applied_config", "apply", "at_timestep", "parse_spec", "prune", "rank_tokens",
           "ratio_for_flops", "remove", "schedule_flops", "SOURCES", "with_ratio"]
