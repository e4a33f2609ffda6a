"""The one clock (``perf_counter_ns``) and every timing loop: whole executions
(``time_calls``, raw samples kept), two subjects alternating (``time_interleaved``, A/B),
one of several concurrent streams (``time_stream``, throughput mode), the steps of a plan or
the modules of a model (``time_steps``, ``time_modules``: per-layer) and the roofline probes
(``fastest_seconds``; also the native plan's prepare-time choice of per-sample execution).
No backend has a clock of its own.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

clock = time.perf_counter_ns


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


def time_stream(fn: Callable[[], object], start_ns: int,
                policy: TimingPolicy = TimingPolicy()) -> tuple[list[int], int, int]:
    """One of several concurrent streams (``measure --streams``), started together at the
    shared ``start_ns`` (``clock``: CLOCK_MONOTONIC, the same in every process): warm-up calls
    while one more fits before it, a wait until it, then timed calls until both ``min_calls``
    and the window ``start_ns + min_seconds`` are reached. Returns (raw per-call durations in
    ns, start of the first timed call, end of the last)."""
    last = 0
    while clock() + last < start_ns:
        t0 = clock()
        fn()
        last = clock() - t0
    wait = start_ns - clock()
    if wait > 0:
        time.sleep(wait / 1e9)
    samples: list[int] = []
    deadline = start_ns + policy.min_seconds * 1e9
    first = end = clock()
    while len(samples) < policy.max_calls and (len(samples) < policy.min_calls
                                                or end < deadline):
        t0 = clock()
        fn()
        end = clock()
        samples.append(end - t0)
    return samples, first, end


def time_interleaved(base: Callable[[], object], new: Callable[[], object],
                     policy: TimingPolicy = TimingPolicy()) -> tuple[list[int], list[int]]:
    """Raw durations of both subjects, called in ABBA order after a joint warm-up, until each
    has ``min_calls`` and ``min_seconds`` of timed calls."""
    start, calls = clock(), 0
    while calls < policy.warmup_calls or clock() - start < policy.warmup_seconds * 1e9:
        base()
        new()
        calls += 1
    out: dict[str, list[int]] = {"base": [], "new": []}
    totals = {"base": 0, "new": 0}
    subjects = (("base", base), ("new", new))
    budget = policy.min_seconds * 1e9
    while len(out["base"]) < policy.max_calls and (len(out["base"]) < policy.min_calls
                                                   or min(totals.values()) < budget):
        for name, fn in subjects if len(out["base"]) % 2 == 0 else subjects[::-1]:
            t0 = clock()
            fn()
            dt = clock() - t0
            out[name].append(dt)
            totals[name] += dt
    return out["base"], out["new"]


def _unique(names: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        key, n = name, 2
        while key in seen:
            key, n = f"{name}#{n}", n + 1
        seen[key] = 1
        out.append(key)
    return out


def time_steps(names: Sequence[str], steps: Sequence[Callable[[], object]],
               before: Callable[[], object], calls: int = 20) -> dict[str, float]:
    """Median milliseconds of each step of a plan over ``calls`` runs (``before`` resets the
    input each run). Each step is timed on its own, so the sum exceeds one whole run."""
    times: list[list[int]] = [[] for _ in steps]
    for _ in range(calls):
        before()
        for i, step in enumerate(steps):
            t0 = clock()
            step()
            times[i].append(clock() - t0)
    return {k: statistics.median(t) / 1e6 for k, t in zip(_unique(names), times)}


def time_modules(module: Any, run: Callable[[], object], calls: int = 20) -> dict[str, float]:
    """Median milliseconds per leaf module over ``calls`` runs, from forward pre/post hooks."""
    starts: dict[str, int] = {}
    times: dict[str, list[int]] = {}
    handles = []
    for name, mod in module.named_modules():
        if name and not list(mod.children()):
            def pre(m: Any, i: Any, name: str = name) -> None:
                starts[name] = clock()

            def post(m: Any, i: Any, o: Any, name: str = name) -> None:
                times.setdefault(name, []).append(clock() - starts[name])

            handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    try:
        for _ in range(calls):
            run()
    finally:
        for h in handles:
            h.remove()
    return {name: statistics.median(v) / 1e6 for name, v in times.items()}


def fastest_seconds(fn: Callable[[], object], reps: int = 5) -> float:
    """Shortest wall time of ``reps`` calls of ``fn`` (after one untimed call), in seconds."""
    fn()
    best = None
    for _ in range(reps):
        t0 = clock()
        fn()
        t = clock() - t0
        best = t if best is None or t < best else best
    return (best or 0) / 1e9


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
