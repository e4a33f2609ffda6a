"""Sparse matrix products on their own: native kernels, torch.sparse, scipy.sparse, dense."""

from __future__ import annotations

import numpy as np
import pytest

SHAPES = [(1024, 1024)]
SPARSITY = [0.9]
BATCHES = [1, 32]


def weight(shape: tuple[int, int], sparsity: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    w = rng.standard_normal(shape).astype(np.float32)
    w[rng.random(shape) < sparsity] = 0
    return w


def inputs(shape: tuple[int, int], batch: int) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((batch, shape[1])).astype(np.float32)


params = pytest.mark.parametrize("shape,sparsity,batch", [
    (s, p, b) for s in SHAPES for p in SPARSITY for b in BATCHES])


@params
def test_native_csr_linear(benchmark, shape, sparsity, batch):
    from sparsebench import native

    if native.available():
        pytest.skip(native.available())
    layer = native.CSRLinear.from_dense(weight(shape, sparsity))
    x = inputs(shape, batch)
    out = np.empty((batch, shape[0]), dtype=np.float32)
    benchmark.extra_info["impl"] = layer.impl
    benchmark(layer.run, x, out=out)


@params
def test_native_bsr_linear(benchmark, shape, sparsity, batch):
    from sparsebench import native

    if native.available():
        pytest.skip(native.available())
    layer = native.BSRLinear.from_dense(weight(shape, sparsity), blocksize=(4, 4))
    x = inputs(shape, batch)
    out = np.empty((batch, shape[0]), dtype=np.float32)
    benchmark.extra_info["impl"] = layer.impl
    benchmark(layer.run, x, out=out)


@params
def test_scipy_csr(benchmark, shape, sparsity, batch):
    import scipy.sparse as sp

    w = sp.csr_matrix(weight(shape, sparsity))
    xt = np.ascontiguousarray(inputs(shape, batch).T)
    benchmark(w.dot, xt)


@params
def test_torch_sparse_csr(benchmark, shape, sparsity, batch):
    import torch

    w = torch.from_numpy(weight(shape, sparsity)).to_sparse_csr()
    xt = torch.from_numpy(inputs(shape, batch)).T.contiguous()
    with torch.inference_mode():
        benchmark(torch.matmul, w, xt)


@params
def test_torch_dense(benchmark, shape, sparsity, batch):
    import torch

    w = torch.from_numpy(weight(shape, sparsity))
    x = torch.from_numpy(inputs(shape, batch))
    with torch.inference_mode():
        benchmark(torch.nn.functional.linear, x, w)
