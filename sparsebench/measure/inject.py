"""A controlled slowdown, the testing aid behind ``measure --inject-slowdown FRACTION``.

Every timed call is followed by a busy-wait of FRACTION times that call's own duration, so each
call takes (1 + FRACTION) times as long and the ratio of medians is exactly 1 + FRACTION (up to
the ~0.1 us of the extra clock reads), whatever the machine is doing. A fixed amount of extra
work calibrated against a median was tried first: on this shared 2-core machine the calibration
median moved with the neighbours' load and a nominal 10% became anything from 8% to 29%, which
measured the calibration rather than the gate. Used to measure how often ``sparsebench compare``
detects a known slowdown (docs/ci-gate.md).
"""

from __future__ import annotations

from typing import Any, Callable

from sparsebench.measure.timing import clock


def slowed(fn: Callable[[], object], fraction: float) -> tuple[Callable[[], object],
                                                                dict[str, Any]]:
    """``fn`` followed by busy-waiting ``fraction`` of its own duration, and a description."""
    def run() -> object:
        t0 = clock()
        out = fn()
        t1 = clock()
        end = t1 + fraction * (t1 - t0)
        while clock() < end:
            pass
        return out

    return run, {"fraction": fraction, "kind": "busy-wait of FRACTION x each call's duration"}
