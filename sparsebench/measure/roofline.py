"""This machine's roofline ceilings, and where a native execution sits under them.

``probe(threads)`` measures, once per process (cached):

* ``copy_gbps``: ``np.copyto`` of a 256 MB float32 array (read + write bytes counted), the
  single-threaded memory bandwidth the issue's roofline target is stated against;
* ``gemm_gflops``: ``torch.mm`` of two 2048 x 2048 float32 matrices at each thread count.

``achieved(prepared, batch, sparse_macs, p50_ms)`` gives a row's ``achieved_gbps`` (bytes a call
must move at least, from ``prepared.traffic_bytes``: the sparse arrays of every kernel plus its
input/output activations) and ``achieved_gflops`` (2 * sparse MACs * batch / p50); both None
for executions that do not report traffic (every backend but ``native``).
"""

from __future__ import annotations

from typing import Any

from sparsebench.measure.timing import median_seconds

_CACHE: dict[tuple[Any, ...], dict[str, Any]] = {}


def copy_bandwidth(mb: int = 256, reps: int = 5) -> float:
    """GB/s of ``np.copyto`` on an ``mb`` MB float32 array, counting read + write bytes."""
    import numpy as np

    src = np.ones(mb * 2 ** 20 // 4, np.float32)
    dst = np.empty_like(src)
    return 2 * src.nbytes / median_seconds(lambda: np.copyto(dst, src), reps) / 1e9


def gemm_rate(threads: int, n: int = 2048, reps: int = 5) -> float:
    """GFLOP/s of ``torch.mm`` on n x n float32 matrices with ``threads`` intra-op threads."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        out = torch.empty(n, n)
        seconds = median_seconds(lambda: torch.mm(a, b, out=out), reps)
    finally:
        torch.set_num_threads(old)
    return 2 * n ** 3 / seconds / 1e9


def probe(threads: list[int] | tuple[int, ...] = (1,), copy_mb: int = 256,
          gemm_n: int = 2048) -> dict[str, Any]:
    """The ceilings (cached per process and arguments)."""
    key = (tuple(sorted(set(threads))), copy_mb, gemm_n)
    if key not in _CACHE:
        _CACHE[key] = {
            "copy_gbps": copy_bandwidth(copy_mb),
            "gemm_gflops": {str(t): gemm_rate(t, gemm_n) for t in key[0]},
            "copy_mb": copy_mb, "gemm_n": gemm_n,
        }
    return _CACHE[key]


def probe_for_native(threads: list[int]) -> dict[str, Any] | None:
    """``probe(threads)`` when the native kernels can run here (else None: nothing to compare)."""
    from sparsebench import native

    return probe(threads) if native.available() is None else None


def achieved(prepared: Any, batch: int, sparse_macs: int | None,
             p50_ms: float | None) -> dict[str, float | None]:
    """``achieved_gbps`` and ``achieved_gflops`` of one execution (None when not reported)."""
    traffic = getattr(prepared, "traffic_bytes", None)
    if not traffic or not p50_ms:
        return {"achieved_gbps": None, "achieved_gflops": None}
    seconds = p50_ms / 1e3
    gflops = 2.0 * sparse_macs * batch / seconds / 1e9 if sparse_macs else None
    return {"achieved_gbps": traffic / seconds / 1e9, "achieved_gflops": gflops}


def fractions(row: dict[str, Any], roof: dict[str, Any] | None) -> tuple[float | None,
                                                                         float | None]:
    """(achieved GB/s / copy GB/s, achieved GFLOP/s / GEMM GFLOP/s at the row's threads)."""
    if not roof:
        return None, None
    gbps, gflops = row.get("achieved_gbps"), row.get("achieved_gflops")
    peak = (roof.get("gemm_gflops") or {}).get(str(row.get("threads")))
    return (gbps / roof["copy_gbps"] if gbps and roof.get("copy_gbps") else None,
            gflops / peak if gflops and peak else None)
