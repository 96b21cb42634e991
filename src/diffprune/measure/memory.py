"""Peak memory of a call: CUDA's allocator statistics on a GPU, sampled resident set size on the CPU."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import resource
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass
class PeakMemory:
    device: str
    baseline_bytes: int
    peak_bytes: int
    method: str
    delta_bytes: int = field(init=False)  # extra memory the call needed above what was held before it

    def __post_init__(self) -> None:
        self.delta_bytes = max(0, self.peak_bytes - self.baseline_bytes)


def current_rss() -> int:
    """Resident set size of this process in bytes."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # not Linux: fall back to the lifetime peak, the best the OS offers
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def release_free_memory() -> bool:
    """Hand memory that the C allocator holds but nothing uses back to the operating system (glibc's
    ``malloc_trim``), so that the resident set size afterwards counts live memory only. Returns whether it could
    (False where the C library has no such call)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class _RssSampler(threading.Thread):
    def __init__(self, interval: float):
        super().__init__(daemon=True)
        self.interval = interval
        self.peak = current_rss()
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            self.peak = max(self.peak, current_rss())

    def stop(self) -> int:
        self._done.set()
        self.join()
        self.peak = max(self.peak, current_rss())
        return self.peak


def peak_memory(fn: Callable[[], object], *, device: str = "cpu", interval: float = 0.002):
    """Run ``fn()`` and return ``(result, PeakMemory)``.

    On CUDA the allocator's own peak is exact. On the CPU the resident set size is sampled every
    ``interval`` seconds, so a spike shorter than that can be missed. Before the baseline is read, memory that
    the C allocator kept from earlier work is handed back (:func:`release_free_memory`): otherwise a call that
    reuses it would show no growth, and of several calls measured in turn only the first would show its peak.
    """
    if device.startswith("cuda"):
        dev = torch.device(device)
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        result = fn()
        torch.cuda.synchronize(dev)
        return result, PeakMemory(device, base, torch.cuda.max_memory_allocated(dev), "cuda allocator peak")
    release_free_memory()
    sampler = _RssSampler(interval)
    base = sampler.peak
    sampler.start()
    try:
        result = fn()
    finally:
        peak = sampler.stop()
    return result, PeakMemory("cpu", base, peak, f"RSS sampled every {interval * 1000:g} ms")
