"""Wall-clock latency: warm-up, then the median of repeated runs; A/B comparisons interleaved in one process.

Machines drift (thermal state, other load), so a speed-up is only trusted when both variants are timed
alternately in the same process; :func:`compare_latency` does that and returns the ratio.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from diffprune.errors import DiffpruneError


@dataclass
class LatencyStats:
    label: str
    median_s: float
    mean_s: float
    min_s: float
    max_s: float
    stdev_s: float
    repeats: int
    warmup: int
    device: str


@dataclass
class LatencyComparison:
    baseline: LatencyStats
    candidate: LatencyStats
    speedup: float = field(init=False)  # how many times faster the candidate is (ratio of medians)

    def __post_init__(self) -> None:
        self.speedup = self.baseline.median_s / self.candidate.median_s


def _sync(device: str) -> None:
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()


def _stats(label: str, times: list[float], warmup: int, device: str) -> LatencyStats:
    return LatencyStats(
        label=label,
        median_s=statistics.median(times),
        mean_s=statistics.fmean(times),
        min_s=min(times),
        max_s=max(times),
        stdev_s=statistics.stdev(times) if len(times) > 1 else 0.0,
        repeats=len(times),
        warmup=warmup,
        device=device,
    )


def _check(repeats: int, warmup: int) -> None:
    if repeats < 1 or warmup < 0:
        raise DiffpruneError(f"need repeats >= 1 and warmup >= 0 (got repeats={repeats}, warmup={warmup})")


def _timed(fn: Callable[[], object], device: str, timer: Callable[[], float]) -> float:
    _sync(device)
    start = timer()
    fn()
    _sync(device)
    return timer() - start


def measure_latency(fn: Callable[[], object], *, repeats: int = 10, warmup: int = 2, label: str = "",
                    device: str = "cpu", timer: Callable[[], float] = time.perf_counter) -> LatencyStats:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed ones (CUDA synchronised)."""
    _check(repeats, warmup)
    for _ in range(warmup):
        fn()
    times = [_timed(fn, device, timer) for _ in range(repeats)]
    return _stats(label, times, warmup, device)


def compare_latency(baseline: Callable[[], object], candidate: Callable[[], object], *, repeats: int = 10,
                    warmup: int = 2, labels: tuple[str, str] = ("baseline", "candidate"), device: str = "cpu",
                    timer: Callable[[], float] = time.perf_counter) -> LatencyComparison:
    """Time two callables alternately (A B B A A B ...) so drift hits both alike; return both and the ratio."""
    _check(repeats, warmup)
    for _ in range(warmup):
        baseline()
        candidate()
    times: dict[int, list[float]] = {0: [], 1: []}
    fns = (baseline, candidate)
    for i in range(repeats):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for which in order:
            times[which].append(_timed(fns[which], device, timer))
    return LatencyComparison(_stats(labels[0], times[0], warmup, device),
                             _stats(labels[1], times[1], warmup, device))
