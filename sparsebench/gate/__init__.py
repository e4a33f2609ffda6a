"""The CI performance-regression gate (``sparsebench compare``): statistics on raw samples
(``stats``), row matching and verdicts (``compare``), tables and Markdown (``report``), the knobs
(``config``, importable without numpy: the names below load ``compare`` on first use)."""

from __future__ import annotations

from typing import Any

from sparsebench.gate.config import GateConfig

__all__ = ["Comparison", "GateConfig", "compare_docs", "compare_files"]


def __getattr__(name: str) -> Any:
    if name in ("Comparison", "compare_docs", "compare_files"):
        from sparsebench.gate import compare

        return getattr(compare, name)
    raise AttributeError(f"module 'sparsebench.gate' has no attribute {name!r}")
