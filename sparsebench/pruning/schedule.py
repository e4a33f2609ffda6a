"""Per-layer pruning schedules (paper B): fraction, start, end, retrain period, kept counts.

Each pruned layer has its own final fraction ``frac``, a start epoch, an end epoch and a retrain
period ``r``; events happen at the end of epochs ``start, start+r, ..., <= end``. With N units
and n events, F = ceil((1 - frac) * N) units are kept at the end, and after event i (1..n) the
layer keeps ``ceil(F + (N - F) * (n - i) / n)``: equal chunks per event.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

from sparsebench.errors import SparsebenchError


@dataclass(frozen=True)
class LayerSchedule:
    """When and how much one layer is pruned."""

    layer: str
    fraction: float
    start: int
    end: int
    period: int

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction < 1.0:
            raise SparsebenchError(f"pruning fraction for {self.layer} must be in [0, 1), "
                                   f"got {self.fraction}")
        if self.start < 0:
            raise SparsebenchError(f"start epoch for {self.layer} must be >= 0, got {self.start}")
        if self.end < self.start:
            raise SparsebenchError(f"end epoch {self.end} is before start epoch {self.start} "
                                   f"for {self.layer}")
        if self.period < 1:
            raise SparsebenchError(f"retrain period for {self.layer} must be >= 1, "
                                   f"got {self.period}")

    def event_epochs(self) -> list[int]:
        return list(range(self.start, self.end + 1, self.period))

    def final_kept(self, units: int) -> int:
        """F = ceil((1 - frac) * N), computed exactly (no float round-off)."""
        return math.ceil((1 - Fraction(self.fraction).limit_denominator(10**9)) * units)

    def kept_counts(self, units: int) -> list[int]:
        """Units kept after each event: ``ceil(F + (N - F) * (n - i) / n)`` for i = 1..n."""
        n = len(self.event_epochs())
        final = self.final_kept(units)
        return [-(-(final * n + (units - final) * (n - i)) // n) for i in range(1, n + 1)]

    def kept_at(self, epoch: int, units: int) -> int | None:
        """Units to keep after the event at ``epoch``, or None if no event then."""
        epochs = self.event_epochs()
        return self.kept_counts(units)[epochs.index(epoch)] if epoch in epochs else None

    def scaled(self, factor: float) -> "LayerSchedule":
        """The same schedule with every epoch number multiplied by ``factor`` (short runs)."""
        start = max(1, round(self.start * factor)) if self.start > 0 else 0
        return LayerSchedule(self.layer, self.fraction, start,
                             max(start, round(self.end * factor)),
                             max(1, round(self.period * factor)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def scale_schedules(schedules: list[LayerSchedule], factor: float) -> list[LayerSchedule]:
    """Every layer's schedule with its epoch numbers multiplied by ``factor``, keeping the
    staggered starts: the first layer's start is scaled and every other start keeps its offset
    from it (paper B's starts 3,4,5,6 put one layer in each event; scaling them separately would
    round them together)."""
    if not schedules:
        return []
    first = schedules[0].scaled(factor).start
    out = []
    for s in schedules:
        scaled = s.scaled(factor)
        start = max(0, first + (s.start - schedules[0].start))
        out.append(LayerSchedule(s.layer, s.fraction, start, max(start, scaled.end),
                                 scaled.period))
    return out


def broadcast(values: list[Any], n: int, what: str) -> list[Any]:
    """A per-layer option given once (applies to all) or once per layer."""
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise SparsebenchError(f"{what}: got {len(values)} values for {n} layers "
                               f"(give one value, or one per layer)")
    return values


def build_schedules(layers: list[str], fractions: list[float], starts: list[int],
                    ends: list[int], periods: list[int]) -> list[LayerSchedule]:
    n = len(layers)
    return [LayerSchedule(*args) for args in zip(layers, broadcast(fractions, n, "--fractions"),
                                                 broadcast(starts, n, "--start"),
                                                 broadcast(ends, n, "--end"),
                                                 broadcast(periods, n, "--retrain-period"))]


def default_schedule_epochs(epochs: int) -> tuple[int, int, int]:
    """(start, end, period) used when no preset or flags are given: events from epoch 1 to the
    second-to-last epoch (so at least one epoch trains after the last event), ~4 events."""
    start = 1
    end = max(start, epochs - 1)
    return start, end, max(1, (end - start) // 3)
