
import mmap

import numpy as np
import pytest

from diffprune import DiffpruneError
from diffprune.measure import compare_latency, disk_usage, paired_speedup, measure_latency, peak_memory, release_free_memory


class FakeClock:
    """Advances by a scripted duration for each timed call, so statistics are exact."""

    def __init__(self):
        self.now = 0.0
        self.pending = 0.0

    def __call__(self):
        self.now += self.pending
        self.pending = 0.0
        return self.now

    def work(self, seconds):
        def fn():
            self.pending += seconds
        return fn


def test_measure_latency_reports_the_median_after_warmup():
    clock = FakeClock()
    durations = iter([100.0, 100.0, 3.0, 1.0, 2.0, 50.0, 2.5])  # two warm-up calls are slow
    calls = []

    def fn():
        d = next(durations)
        calls.append(d)
        clock.pending += d

    stats = measure_latency(fn, repeats=5, warmup=2, timer=clock)
    assert len(calls) == 7
    assert stats.median_s == 2.5 and stats.min_s == 1.0 and stats.max_s == 50.0 and stats.repeats == 5


def test_compare_latency_interleaves_and_returns_the_ratio():
    clock = FakeClock()
    order = []

    def make(label, seconds):
        def fn():
            order.append(label)
            clock.pending += seconds
        return fn

    cmp = compare_latency(make("a", 4.0), make("b", 1.0), repeats=4, warmup=1, timer=clock)
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]
    assert cmp.speedup == pytest.approx(4.0)
    from diffprune.report import to_jsonable

    assert to_jsonable(cmp)["speedup"] == pytest.approx(4.0)  # the ratio survives into JSON reports
    assert cmp.baseline.median_s == 4.0 and cmp.candidate.median_s == 1.0


def test_latency_rejects_bad_counts():
    with pytest.raises(DiffpruneError):
        measure_latency(lambda: None, repeats=0)


def test_peak_memory_sees_a_large_temporary_allocation():
    size = 256 * 2**20

    def allocate():
        # fresh pages from the kernel (an anonymous map), touched so they are resident; a plain array could reuse
        # pages that earlier tests freed but the allocator kept, which RSS already counts
        with mmap.mmap(-1, size) as region:
            block = np.frombuffer(region, dtype=np.uint8)
            block[::4096] = 1
            total = int(block[::4096].sum())
            del block
        return total

    result, mem = peak_memory(allocate, interval=0.001)
    assert result == size // 4096
    assert mem.delta_bytes >= 0.75 * size


def test_disk_usage_per_component(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "w.bin").write_bytes(b"x" * 1000)
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "w.bin").write_bytes(b"x" * 10)
    (tmp_path / "model_index.json").write_text("{}")
    usage = disk_usage(tmp_path)
    assert usage.components == {"(root)": 2, "unet": 1000, "vae": 10}
    assert usage.total_bytes == 1012
    with pytest.raises(DiffpruneError):
        disk_usage(tmp_path / "nope")


def test_peak_memory_sees_the_same_peak_when_a_call_is_measured_twice():
    # Many small tensors come from the C allocator's heap, which keeps them after they are freed. Without handing
    # that memory back before each measurement, the second call would reuse it and show no growth at all (the
    # bench measured its baseline first, so every recipe looked lighter than the baseline).
    import torch

    if not release_free_memory():
        pytest.skip("the C library cannot hand freed memory back (no malloc_trim)")

    def many_small():
        blocks = [torch.ones(16 * 1024) for _ in range(3200)]  # 3 200 x 64 KiB = 200 MiB
        total = sum(float(b[0]) for b in blocks[::100])
        del blocks
        return total

    deltas = [peak_memory(many_small, interval=0.001)[1].delta_bytes for _ in range(3)]
    assert min(deltas) >= 0.75 * 200 * 2**20


def test_paired_speedup_is_the_median_of_the_per_pair_ratios():
    # the machine slows down 3x after two rounds; each pair (timed side by side) still shows 2x
    speedup, low, high = paired_speedup([2.0, 2.0, 6.0, 6.0, 6.0], [1.0, 1.0, 3.0, 3.0, 3.0])
    assert speedup == pytest.approx(2.0) and low == pytest.approx(2.0) and high == pytest.approx(2.0)
    # one slow spell inside a pair spoils that pair only
    speedup, _, _ = paired_speedup([2.0, 2.0, 2.0, 2.0, 2.0], [1.0, 1.0, 9.0, 1.0, 1.0])
    assert speedup == pytest.approx(2.0)
    speedup, low, high = paired_speedup([4.0, 4.0, 4.0, 4.0], [1.0, 2.0, 4.0, 8.0])
    assert speedup == pytest.approx(1.5) and low == pytest.approx(0.875) and high == pytest.approx(2.5)
    with pytest.raises(DiffpruneError):
        paired_speedup([1.0], [1.0, 2.0])


def test_compare_latency_reports_the_paired_ratio_and_its_quartiles():
    clock = FakeClock()
    slow = iter([1, 1, 1, 1, 3, 3, 3, 3, 3, 3, 3, 3])  # the machine's speed factor, one per call

    def make(seconds):
        def fn():
            clock.pending += seconds * next(slow)
        return fn

    cmp = compare_latency(make(2.0), make(1.0), repeats=5, warmup=1, timer=clock)
    assert cmp.speedup == pytest.approx(2.0) and cmp.speedup_low == pytest.approx(2.0)
    assert cmp.baseline.times_s and len(cmp.baseline.times_s) == 5
