"""The one timing loop every execution goes through (perf_counter_ns, raw samples kept)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class TimingPolicy:
    """Warm up, then call until both ``min_calls`` and ``min_seconds`` are reached."""

    warmup_calls: int = 3
    warmup_seconds: float = 0.1
    min_calls: int = 20
    min_seconds: float = 0.5
    max_calls: int = 100_000


def time_calls(fn: Callable[[], object], policy: TimingPolicy = TimingPolicy()) -> list[int]:
    """Raw per-call durations in nanoseconds, after warm-up."""
    clock = time.perf_counter_ns
    start = clock()
    calls = 0
    while calls < policy.warmup_calls or clock() - start < policy.warmup_seconds * 1e9:
        fn()
        calls += 1
    samples: list[int] = []
    budget = policy.min_seconds * 1e9
    total = 0
    while len(samples) < policy.max_calls and (len(samples) < policy.min_calls
                                                or total < budget):
        t0 = clock()
        fn()
        dt = clock() - t0
        samples.append(dt)
        total += dt
    return samples


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of already sorted values."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def latency_stats_ms(samples_ns: list[int]) -> dict[str, float]:
    """p10, p50, p90, p99, mean, std and min of raw samples, in milliseconds."""
    ms = sorted(s / 1e6 for s in samples_ns)
    return {"p10": percentile(ms, 10), "p50": percentile(ms, 50), "p90": percentile(ms, 90),
            "p99": percentile(ms, 99), "mean": statistics.fmean(ms),
            "std": statistics.pstdev(ms), "min": ms[0]}


NOISE_SPREAD = 3.0  # p50 above this many times p10: the calls were not measuring one thing


def noise_flag(samples_ns: list[int], load: float | None = None,
               cores: int | None = None) -> str | None:
    """Why a row's timings are suspect, or None: p50 > 3x p10 (another process took the CPU
    for part of the calls), or a 1-minute load average above the core count while it ran."""
    import os

    reasons = []
    ms = sorted(s / 1e6 for s in samples_ns)
    if len(ms) >= 2:
        p10, p50 = percentile(ms, 10), percentile(ms, 50)
        if p50 > NOISE_SPREAD * p10:
            reasons.append(f"p50 {p50:.3g} ms > {NOISE_SPREAD:g}x p10 {p10:.3g} ms")
    try:
        load = os.getloadavg()[0] if load is None else load
    except OSError:
        load = None
    cores = cores or os.cpu_count() or 1
    if load is not None and load > cores:
        reasons.append(f"load average {load:.1f} > {cores} cores")
    return "; ".join(reasons) or None
