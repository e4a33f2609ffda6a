"""The issue's kernel targets: CSR 4096x4096 at 90% sparsity, batch 1 (native vs scipy,
torch.sparse and dense torch), and a 3x3 64->64 56x56 convolution at 90% (native vs dense
torch). Compare the medians within one run (same group):

    python -m pytest benchmarks/test_bench_native.py --benchmark-group-by=group

``extra_info`` holds the bytes each call must move and, after timing, the achieved GB/s.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

M = K = 4096
SPARSITY = 0.9
CSR_GROUP = "csr 4096x4096 90% b1"
CONV_GROUP = "conv3x3 64->64 56x56 90% b1"


def _weight(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32)
    w[rng.random(shape) < SPARSITY] = 0
    return w


@pytest.fixture(scope="module")
def csr() -> dict[str, Any]:
    import scipy.sparse as sp

    w = _weight((M, K))
    x = np.random.default_rng(1).standard_normal((1, K)).astype(np.float32)
    return {"w": w, "x": x, "scipy": sp.csr_matrix(w)}


def _record(benchmark: Any, nbytes: int) -> None:
    benchmark.extra_info["bytes_per_call"] = nbytes
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is not None and stats.median:
        benchmark.extra_info["gbps"] = nbytes / stats.median / 1e9


def _native() -> Any:
    from sparsebench import native

    if native.available():
        pytest.skip(native.available())
    return native


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("index", ["int16", "int32"])
def test_native_csr(benchmark, csr, index, threads):
    native = _native()
    op = native.CSRLinear.from_dense(csr["w"], index_dtype=np.dtype(index), threads=threads)
    out = np.empty((1, M), np.float32)
    benchmark.group = CSR_GROUP
    benchmark.extra_info["impl"] = op.impl
    benchmark(op.run, csr["x"], out)
    np.testing.assert_allclose(out, csr["x"] @ csr["w"].T, rtol=1e-3, atol=1e-3)
    _record(benchmark, op.values.nbytes + op.col_idx.nbytes + op.row_ptr.nbytes
            + csr["x"].nbytes + out.nbytes)


def test_scipy_csr(benchmark, csr):
    m, xt = csr["scipy"], np.ascontiguousarray(csr["x"].T)
    benchmark.group = CSR_GROUP
    benchmark(m.dot, xt)
    _record(benchmark, m.data.nbytes + m.indices.nbytes + m.indptr.nbytes + 2 * xt.nbytes)


def test_torch_sparse_csr(benchmark, csr):
    import torch

    w = torch.from_numpy(csr["w"]).to_sparse_csr()
    xt = torch.from_numpy(csr["x"]).T.contiguous()
    benchmark.group = CSR_GROUP
    with torch.inference_mode():
        benchmark(torch.mm, w, xt)
    _record(benchmark, w.values().nbytes + w.col_indices().nbytes + w.crow_indices().nbytes
            + 2 * xt.nbytes)


def test_torch_dense_linear(benchmark, csr):
    import torch

    w, x = torch.from_numpy(csr["w"]), torch.from_numpy(csr["x"])
    benchmark.group = CSR_GROUP
    with torch.inference_mode():
        benchmark(torch.nn.functional.linear, x, w)
    _record(benchmark, w.nbytes + 2 * x.nbytes)


@pytest.fixture(scope="module")
def conv() -> dict[str, Any]:
    w = _weight((64, 64, 3, 3), seed=2)
    x = np.random.default_rng(3).standard_normal((1, 64, 56, 56)).astype(np.float32)
    return {"w": w, "x": x}


def test_native_conv3x3(benchmark, conv):
    native = _native()
    op = native.CSRConv2d.from_dense(conv["w"], stride=1, padding=1, index_dtype=np.int16)
    out = op.run(conv["x"])
    benchmark.group = CONV_GROUP
    benchmark.extra_info["impl"] = op.impl
    benchmark.extra_info["plan"] = op.plan(conv["x"].shape)
    benchmark(op.run, conv["x"], out)


def test_torch_dense_conv3x3(benchmark, conv):
    import torch

    w, x = torch.from_numpy(conv["w"]), torch.from_numpy(conv["x"])
    benchmark.group = CONV_GROUP
    with torch.inference_mode():
        benchmark(torch.nn.functional.conv2d, x, w, None, 1, 1)
