"""Honest measurement: parameters, FLOPs (attention included), latency, peak memory and file size.

Every function returns a plain dataclass (``dataclasses.asdict`` makes it JSON).
"""

from .disk import DiskUsage, disk_usage
from .flops import FlopCount, count_flops, flop_counter
from .hardware import describe_hardware
from .groups import RoleShare, parameter_groups, parameter_roles
from .inputs import denoiser_inputs, text_encoder_inputs, transformer_inputs, unet_inputs, vae_decode_inputs
from .latency import (LatencyComparison, LatencyStats, compare_latency, interleaved_latency, measure_latency,
                      paired_speedup)
from .memory import PeakMemory, current_rss, peak_memory, release_free_memory
from .params import ComponentParams, ParamCounts, count_params
from .pipeline import PipelineMeasurement, default_resolution, denoiser_call, denoiser_call_flops, measure_pipeline

__all__ = [
    "ComponentParams", "DiskUsage", "FlopCount", "LatencyComparison", "LatencyStats", "ParamCounts",
    "PeakMemory", "PipelineMeasurement", "RoleShare", "compare_latency", "count_flops", "count_params", "current_rss",
    "default_resolution", "denoiser_call", "denoiser_call_flops", "denoiser_inputs", "describe_hardware",
    "disk_usage", "flop_counter", "interleaved_latency", "measure_latency", "measure_pipeline", "paired_speedup", "parameter_groups", "parameter_roles",
    "peak_memory", "release_free_memory", "text_encoder_inputs", "transformer_inputs", "unet_inputs", "vae_decode_inputs",
]
