"""Wall-clock latency: warm-up, then the median of repeated runs; A/B comparisons interleaved in one process.

Machines drift (thermal state, other load), so a speed-up is only trusted when both variants are timed
alternately in the same process; :func:`compare_latency` does that and returns the ratio. On a shared host
consecutive identical runs can differ by 15 %, so the ratio is the median of the ratios of runs timed next to
each other (:func:`paired_speedup`), with its quartiles as the spread.
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
    times_s: list[float] = field(default_factory=list)  # every timed run, in the order they ran


def paired_speedup(baseline_s: list[float], candidate_s: list[float]) -> tuple[float, float, float]:
    """How many times faster the candidate is, from runs timed in pairs (``baseline_s[i]`` next to
    ``candidate_s[i]``): the median of the per-pair ratios and their lower and upper quartiles. A slow spell of
    the machine then spoils one pair, not one side of the comparison."""
    if not baseline_s or len(baseline_s) != len(candidate_s):
        raise DiffpruneError(f"need as many baseline as candidate runs, at least one "
                             f"(got {len(baseline_s)} and {len(candidate_s)})")
    ratios = sorted(b / c for b, c in zip(baseline_s, candidate_s))
    if len(ratios) == 1:
        return ratios[0], ratios[0], ratios[0]
    low, _, high = statistics.quantiles(ratios, n=4, method="inclusive")
    return statistics.median(ratios), low, high


@dataclass
class LatencyComparison:
    baseline: LatencyStats
    candidate: LatencyStats
    speedup: float = field(init=False)       # how many times faster the candidate is (median of paired ratios)
    speedup_low: float = field(init=False)   # lower quartile of the paired ratios
    speedup_high: float = field(init=False)  # upper quartile

    def __post_init__(self) -> None:
        if self.baseline.times_s and len(self.baseline.times_s) == len(self.candidate.times_s):
            self.speedup, self.speedup_low, self.speedup_high = paired_speedup(self.baseline.times_s,
                                                                               self.candidate.times_s)
        else:
            self.speedup = self.speedup_low = self.speedup_high = self.baseline.median_s / self.candidate.median_s


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
        times_s=list(times),
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


def interleaved_latency(fns: dict[str, Callable[[], object]], *, repeats: int = 10, warmup: int = 2,
                        device: str = "cpu", timer: Callable[[], float] = time.perf_counter,
                        progress: bool = False) -> dict[str, LatencyStats]:
    """Time several callables in rounds, each round visiting all of them in an order rotated by one (A B C,
    B C A, C A B, ...), so drift over the run hits every variant alike; one :class:`LatencyStats` per label."""
    from tqdm.auto import tqdm

    _check(repeats, warmup)
    if not fns:
        raise DiffpruneError("nothing to time")
    labels = list(fns)
    for _ in range(warmup):
        for label in labels:
            fns[label]()
    times: dict[str, list[float]] = {label: [] for label in labels}
    for i in tqdm(range(repeats), desc="latency", unit="round", disable=not progress):
        for k in range(len(labels)):
            label = labels[(i + k) % len(labels)]
            times[label].append(_timed(fns[label], device, timer))
    return {label: _stats(label, times[label], warmup, device) for label in labels}


def compare_latency(baseline: Callable[[], object], candidate: Callable[[], object], *, repeats: int = 10,
                    warmup: int = 2, labels: tuple[str, str] = ("baseline", "candidate"), device: str = "cpu",
                    timer: Callable[[], float] = time.perf_counter) -> LatencyComparison:
    """Time two callables alternately (A B, B A, ...) so drift hits both alike; return both and the ratio."""
    stats = interleaved_latency({labels[0]: baseline, labels[1]: candidate}, repeats=repeats, warmup=warmup,
                                device=device, timer=timer)
    return LatencyComparison(stats[labels[0]], stats[labels[1]])
