"""The CI performance-regression gate (``sparsebench compare``): statistics on raw samples
(``stats``), row matching and verdicts (``compare``), tables and Markdown (``report``)."""

from sparsebench.gate.compare import Comparison, GateConfig, compare_docs, compare_files

__all__ = ["Comparison", "GateConfig", "compare_docs", "compare_files"]
