"""The gate's knobs, importable without numpy (the ``compare`` flags take their defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from sparsebench.errors import SparsebenchError


@dataclass(frozen=True)
class GateConfig:
    """The gate's knobs (the ``compare`` flags)."""

    alpha: float = 0.01
    threshold: float = 0.10
    blocks: int = 20
    resamples: int = 2000
    seed: int = 0
    rss_tolerance: float = 0.25
    rss_min_bytes: int = 4 * 1024 ** 2
    rule: str = "bound"
    allow_missing: bool = False

    def validate(self) -> None:
        if not 0 < self.alpha < 1:
            raise SparsebenchError(f"--alpha must be in (0, 1), got {self.alpha}")
        if self.threshold < 0:
            raise SparsebenchError(f"--threshold must be at least 0, got {self.threshold}")
        if self.blocks < 0:
            raise SparsebenchError(f"--blocks must be at least 0, got {self.blocks}")
        if self.resamples < 100:
            raise SparsebenchError(f"--resamples must be at least 100, got {self.resamples}")
        if self.rss_tolerance < 0 or self.rss_min_bytes < 0:
            raise SparsebenchError("--rss-tolerance and --rss-min-mib must be at least 0")
