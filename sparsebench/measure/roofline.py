"""This machine's roofline ceilings, and where each execution sits under them.

``probe(threads)`` measures, once per process (cached), before a ``measure`` run's workers:

* ``copy_gbps``: ``np.copyto`` of a 256 MB float32 array (read + write bytes counted), the
  single-threaded memory bandwidth the issue's roofline target is stated against;
* ``gemm_gflops``: ``torch.mm`` of two 2048 x 2048 float32 matrices at each thread count.

Every timed row (every backend) carries:

* ``traffic_bytes``, the bytes one call must move at least, and ``traffic_source``, where that
  figure comes from: ``plan`` (a native plan's ``traffic_bytes``: the sparse arrays of every
  kernel plus each kernel's input/output activations) or ``weights+io`` (every other
  execution: the row's ``weight_bytes`` plus the model's input and output tensors);
* ``achieved_gbps`` (traffic_bytes / p50) and ``achieved_gflops`` (2 x sparse MACs x batch /
  p50: the useful FLOPs, not the ones a dense execution spends on zeros);
* ``roofline_bw_frac`` (achieved_gbps / copy_gbps) and ``roofline_flop_frac``
  (achieved_gflops / gemm_gflops at the row's threads), set by the harness (``annotate``).
"""

from __future__ import annotations

from typing import Any

from sparsebench.measure.timing import fastest_seconds

_CACHE: dict[tuple[Any, ...], dict[str, Any]] = {}


def copy_bandwidth(mb: int = 256, reps: int = 5) -> float:
    """GB/s of ``np.copyto`` on an ``mb`` MB float32 array, counting read + write bytes (the
    fastest of ``reps`` calls: a ceiling, which a neighbour's load should not lower)."""
    import numpy as np

    src = np.ones(mb * 2 ** 20 // 4, np.float32)
    dst = np.empty_like(src)
    return 2 * src.nbytes / fastest_seconds(lambda: np.copyto(dst, src), reps) / 1e9


def gemm_rate(threads: int, n: int = 2048, reps: int = 5) -> float:
    """GFLOP/s of ``torch.mm`` on n x n float32 matrices with ``threads`` intra-op threads
    (the fastest of ``reps`` calls)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        out = torch.empty(n, n)
        seconds = fastest_seconds(lambda: torch.mm(a, b, out=out), reps)
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


def traffic(prepared: Any, weight_bytes: int | None, inputs: Any,
            output: Any) -> tuple[int | None, str | None]:
    """(bytes one call moves at least, ``"plan"`` or ``"weights+io"``): the native plan's own
    count where it has one, else ``weight_bytes`` plus the input and output tensors' bytes."""
    plan = getattr(prepared, "traffic_bytes", None)
    if plan:
        return int(plan), "plan"
    if weight_bytes is None:
        return None, None
    import torch

    from sparsebench.model_io import leaves

    tensors = [*inputs, *leaves(output)]
    return weight_bytes + sum(t.numel() * t.element_size() for t in tensors
                              if isinstance(t, torch.Tensor)), "weights+io"


def achieved(traffic_bytes: int | None, batch: int, sparse_macs: int | None,
             p50_ms: float | None) -> dict[str, float | None]:
    """``achieved_gbps`` and ``achieved_gflops`` of one execution (None when unknown)."""
    if not p50_ms:
        return {"achieved_gbps": None, "achieved_gflops": None}
    seconds = p50_ms / 1e3
    return {"achieved_gbps": traffic_bytes / seconds / 1e9 if traffic_bytes else None,
            "achieved_gflops": 2.0 * sparse_macs * batch / seconds / 1e9 if sparse_macs
            else None}


def fractions(row: dict[str, Any], roof: dict[str, Any] | None) -> tuple[float | None,
                                                                         float | None]:
    """(achieved GB/s / copy GB/s, achieved GFLOP/s / GEMM GFLOP/s at the row's threads)."""
    if not roof:
        return None, None
    gbps, gflops = row.get("achieved_gbps"), row.get("achieved_gflops")
    peak = (roof.get("gemm_gflops") or {}).get(str(row.get("threads")))
    return (gbps / roof["copy_gbps"] if gbps and roof.get("copy_gbps") else None,
            gflops / peak if gflops and peak else None)


def annotate(row: dict[str, Any], roof: dict[str, Any] | None) -> dict[str, Any]:
    """``row`` with ``roofline_bw_frac`` and ``roofline_flop_frac`` (``fractions``)."""
    row["roofline_bw_frac"], row["roofline_flop_frac"] = fractions(row, roof)
    return row
