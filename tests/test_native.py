"""Compiled kernels (sparsebench.native) against dense numpy / torch references."""

from __future__ import annotations

import importlib
import os
import re
import time

import numpy as np
import pytest

from sparsebench import native
from sparsebench.errors import SparsebenchError

_REASON = native.available()
if _REASON is not None:
    pytest.skip(f"native kernels unavailable: {_REASON}", allow_module_level=True)

import torch  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

@pytest.fixture(autouse=True, scope="module")
def _pool_even_for_small_work():
    """The kernels run tiny products on one thread; the tests' small matrices should still
    exercise the thread pool."""
    old = native.tuning("linear_min_parallel", 0)
    yield
    native.tuning("linear_min_parallel", old)


PROPERTY = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def sparse_weight(rng: np.random.Generator, shape: tuple[int, ...], sparsity: float,
                  empty_every: int = 0) -> np.ndarray:
    """Random float32 weight with the given fraction of zeros; every n-th row all zero."""
    w = rng.standard_normal(shape).astype(np.float32)
    w[rng.random(shape) < sparsity] = 0.0
    if empty_every:
        w[::empty_every] = 0.0
    return w


def linear_ref(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, relu: bool) -> np.ndarray:
    y = x.astype(np.float64) @ w.astype(np.float64).T
    if bias is not None:
        y += bias
    return np.maximum(y, 0) if relu else y


def conv_ref(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, stride: tuple[int, int],
             padding: tuple[int, int], relu: bool) -> np.ndarray:
    y = torch.nn.functional.conv2d(
        torch.from_numpy(x).double(), torch.from_numpy(w).double(),
        None if bias is None else torch.from_numpy(bias).double(), stride, padding,
    ).numpy()
    return np.maximum(y, 0) if relu else y


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape and got.dtype == np.float32
    scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)


# ----------------------------------------------------------------------------- CSR linear


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.99, 1.0])
@pytest.mark.parametrize("m,k", [(1, 1), (3, 5), (17, 33), (129, 1000), (64, 300)])
def test_csr_linear_grid(m: int, k: int, sparsity: float) -> None:
    rng = np.random.default_rng(m * 1000 + k)
    w = sparse_weight(rng, (m, k), sparsity, empty_every=3 if m > 3 else 0)
    bias = rng.standard_normal(m).astype(np.float32)
    for batch in (1, 2, 7, 16, 64):
        x = rng.standard_normal((batch, k)).astype(np.float32)
        for i, (idx, threads) in enumerate([(np.int16, 1), (np.int32, 2), (np.int32, 1)]):
            b = bias if i != 1 else None
            relu = i == 1
            op = native.CSRLinear.from_dense(w, bias=b, relu=relu, threads=threads,
                                             index_dtype=idx)
            assert_close(op.run(x), linear_ref(x, w, b, relu))


@PROPERTY
@given(
    m=st.integers(1, 80), k=st.integers(1, 300), batch=st.integers(1, 70),
    density=st.sampled_from([0.0, 0.01, 0.1, 0.5, 1.0]), empty_every=st.integers(0, 4),
    idx=st.sampled_from([np.int16, np.int32]), threads=st.integers(1, 2),
    use_bias=st.booleans(), relu=st.booleans(), seed=st.integers(0, 2**16),
)
def test_csr_linear_property(m, k, batch, density, empty_every, idx, threads, use_bias, relu,
                             seed) -> None:
    rng = np.random.default_rng(seed)
    w = sparse_weight(rng, (m, k), 1.0 - density, empty_every)
    bias = rng.standard_normal(m).astype(np.float32) if use_bias else None
    x = rng.standard_normal((batch, k)).astype(np.float32)
    op = native.CSRLinear.from_dense(w, bias=bias, relu=relu, threads=threads, index_dtype=idx)
    assert_close(op.run(x), linear_ref(x, w, bias, relu))


def test_csr_linear_from_scipy_1d_input_and_large_k() -> None:
    sp = pytest.importorskip("scipy.sparse")
    rng = np.random.default_rng(1)
    w = sparse_weight(rng, (9, 40000), 0.999)
    op = native.CSRLinear.from_scipy(sp.csr_matrix(w), threads=2)
    assert op.nnz == np.count_nonzero(w) and op.impl.endswith("-i32-t2")
    x = rng.standard_normal(40000).astype(np.float32)
    y = op.run(x)
    assert y.shape == (9,)
    assert_close(y, linear_ref(x[None], w, None, False)[0])


@pytest.mark.parametrize("affinity", [1, 0])
@pytest.mark.parametrize("delay_us", [0, 2000])
def test_csr_threads_are_bitwise_identical(affinity: int, delay_us: int) -> None:
    """Whichever thread claims which chunk (workers from the back with pool_affinity=1, the
    default, or all from the front; a worker delayed in every chunk, whose chunks the caller
    then takes), every chunk runs once: the results equal one thread's bit for bit."""
    rng = np.random.default_rng(2)
    w = sparse_weight(rng, (300, 500), 0.9)
    old = native.tuning("pool_affinity", affinity)
    old_delay = native.tuning("pool_test_delay_us", delay_us)
    old_backoff = native.tuning("pool_backoff_us", 0)  # no straggler guard: keep the threads
    try:
        for batch in (1, 3, 40):
            x = rng.standard_normal((batch, 500)).astype(np.float32)
            y1 = native.CSRLinear.from_dense(w, threads=1).run(x)
            for threads in (2, 3):
                y2 = native.CSRLinear.from_dense(w, threads=threads).run(x)
                np.testing.assert_array_equal(y1, y2)
    finally:
        native.tuning("pool_backoff_us", old_backoff)
        native.tuning("pool_test_delay_us", old_delay)
        assert native.tuning("pool_affinity", old) == affinity


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("act", [None, "relu", "gelu"])
def test_k_panel_copy_is_built_at_batch_64_and_matches(threads: int, act: str | None) -> None:
    """The batched kernel's K-panel copy: built on the first call with >= 64 rows (AVX-512,
    K > PANEL_COLS), the same results as the row-major path and the dense reference."""
    from sparsebench.native import ops

    rng = np.random.default_rng(9)
    k = ops.PANEL_COLS * 2 + 37  # three panels, the last ragged
    w = sparse_weight(rng, (70, k), 0.9, empty_every=6)
    bias = rng.standard_normal(70).astype(np.float32)
    op = native.CSRLinear.from_dense(w, bias=bias, act=act, threads=threads)
    op.run(rng.standard_normal((63, k)).astype(np.float32))
    assert op.panels is None  # below PANEL_BATCH rows: the row path only
    x = rng.standard_normal((130, k)).astype(np.float32)
    got = op.run(x)
    want = torch.from_numpy(linear_ref(x, w, bias, act == "relu"))
    if act == "gelu":
        want = torch.nn.functional.gelu(want)
    assert_close(got, want.numpy())
    if native.isa() != "avx512":
        assert op.panels is None
        return
    ptr, off, val = op.panels
    assert ptr.shape == (3 * 71,) and off.shape == val.shape == (op.nnz,)
    assert sorted(val.tolist()) == sorted(op.values.tolist())
    old = native.tuning("linear_panels", 0)
    try:
        rows = op.run(x)
    finally:
        native.tuning("linear_panels", old)
    np.testing.assert_allclose(got, rows, rtol=1e-5, atol=1e-5)


def test_gather_and_scalar_spmv_agree() -> None:
    rng = np.random.default_rng(3)
    w = sparse_weight(rng, (100, 777), 0.8, empty_every=5)
    x = rng.standard_normal((3, 777)).astype(np.float32)
    op = native.CSRLinear.from_dense(w, relu=True)
    old = native.tuning("spmv_gather", 0)
    try:
        scalar = op.run(x)
        native.tuning("spmv_gather", 1)
        gather = op.run(x)
    finally:
        native.tuning("spmv_gather", old)
    assert_close(scalar, linear_ref(x, w, None, True))
    assert_close(gather, linear_ref(x, w, None, True))
    with pytest.raises(SparsebenchError, match="unknown kernel tuning key"):
        native.tuning("nope")


def test_fast_path_sees_new_contents_and_arrays() -> None:
    rng = np.random.default_rng(4)
    w = sparse_weight(rng, (20, 30), 0.5)
    op = native.CSRLinear.from_dense(w)
    x = rng.standard_normal((4, 30)).astype(np.float32)
    out = np.empty((4, 20), np.float32)
    assert op.run(x, out=out) is out
    x[:] = rng.standard_normal((4, 30))  # same array, new contents
    assert op.run(x, out=out) is out
    assert_close(out, linear_ref(x, w, None, False))
    x2 = rng.standard_normal((4, 30)).astype(np.float32)  # same shape, new array
    assert_close(op.run(x2, out=out), linear_ref(x2, w, None, False))
    x3 = rng.standard_normal((2, 30)).astype(np.float32)  # new batch size
    assert_close(op.run(x3), linear_ref(x3, w, None, False))
    frozen = x3.copy()
    frozen.flags.writeable = False  # read-only input takes the slow pointer path
    assert_close(op(frozen), linear_ref(x3, w, None, False))
    assert op.run(np.zeros((0, 30), np.float32)).shape == (0, 20)


def test_concurrent_python_threads_share_ops_safely() -> None:
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(7)
    w = sparse_weight(rng, (200, 150), 0.7)
    op = native.CSRLinear.from_dense(w, threads=2)
    inputs = [rng.standard_normal((b, 150)).astype(np.float32) for b in (1, 5, 33, 64)]

    def work(i: int) -> bool:
        x = inputs[i % len(inputs)]
        return all(np.allclose(op.run(x), x @ w.T, rtol=1e-4, atol=1e-4) for _ in range(30))

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(work, range(8)))


def _child_run(args: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    w, x = args
    return native.CSRLinear.from_dense(w, threads=2).run(x)


def test_pool_works_in_forked_child() -> None:
    import multiprocessing

    rng = np.random.default_rng(8)
    w = sparse_weight(rng, (300, 100), 0.5)
    x = rng.standard_normal((3, 100)).astype(np.float32)
    native.CSRLinear.from_dense(w, threads=2).run(x)  # start the worker threads in the parent
    with multiprocessing.get_context("fork").Pool(1) as pool:
        y = pool.apply_async(_child_run, ((w, x),)).get(timeout=60)
    assert_close(y, linear_ref(x, w, None, False))


@pytest.mark.parametrize("m,k", [(0, 5), (5, 0), (0, 0)])
def test_degenerate_shapes(m: int, k: int) -> None:
    bias = np.arange(m, dtype=np.float32)
    for batch in (0, 1, 4, 10):
        op = native.CSRLinear.from_dense(np.zeros((m, k), np.float32), bias=bias, threads=2)
        y = op.run(np.ones((batch, k), np.float32))
        np.testing.assert_array_equal(y, np.broadcast_to(bias, (batch, m)))
    bsr = native.BSRLinear(np.zeros((0, 1, 1), np.float32), [], [0] * (m + 1), shape=(m, k))
    assert bsr.run(np.ones((3, k), np.float32)).shape == (3, m)
    conv = native.CSRConv2d(np.zeros(0, np.float32), [], [0, 0], 2, 1, 3, bias=[1.5])
    assert conv.run(np.ones((0, 2, 5, 5), np.float32)).shape == (0, 1, 3, 3)
    np.testing.assert_array_equal(conv.run(np.ones((1, 2, 3, 3), np.float32)), [[[[1.5]]]])


# ----------------------------------------------------------------------------- BSR linear


@pytest.mark.parametrize("block", [(1, 4), (4, 4), (8, 1), (16, 1), (2, 2), (8, 8), (3, 5)])
@pytest.mark.parametrize("sparsity", [0.0, 0.6, 1.0])
def test_bsr_linear(block: tuple[int, int], sparsity: float) -> None:
    r, c = block
    rng = np.random.default_rng(r * 100 + c)
    mb, kb = 7, 9
    mask = rng.random((mb, kb)) >= sparsity
    mask[::3] = False  # empty block rows
    w = rng.standard_normal((mb * r, kb * c)).astype(np.float32) * np.kron(mask, np.ones(block))
    w = w.astype(np.float32)
    bias = rng.standard_normal(mb * r).astype(np.float32)
    for batch in (1, 5, 20):
        x = rng.standard_normal((batch, kb * c)).astype(np.float32)
        for idx, threads, b, relu in [(np.int32, 1, bias, True), (np.int16, 2, None, False)]:
            op = native.BSRLinear.from_dense(w, block, bias=b, relu=relu, threads=threads,
                                             index_dtype=idx)
            assert op.impl.startswith(f"native-bsr{r}x{c}-")
            assert_close(op.run(x), linear_ref(x, w, b, relu))


def test_bsr_from_scipy() -> None:
    sp = pytest.importorskip("scipy.sparse")
    rng = np.random.default_rng(5)
    w = np.kron(rng.random((6, 8)) < 0.4, np.ones((4, 4))) * rng.standard_normal((24, 32))
    m = sp.bsr_matrix(w.astype(np.float32), blocksize=(4, 4))
    op = native.BSRLinear.from_scipy(m, threads=2)
    x = rng.standard_normal((3, 32)).astype(np.float32)
    assert_close(op.run(x), linear_ref(x, w, None, False))


# ----------------------------------------------------------------------------- convolution


@pytest.mark.parametrize("kernel", [1, 3])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding", [0, 1])
@pytest.mark.parametrize("batch", [1, 3])
def test_conv_grid(kernel: int, stride: int, padding: int, batch: int) -> None:
    rng = np.random.default_rng(kernel * 100 + stride * 10 + padding)
    cin, cout, h, w_ = 3, 5, 9, 7
    for sparsity, threads, idx, use_bias, relu in [
        (0.5, 1, np.int32, True, False),
        (0.0, 2, np.int16, False, True),
        (1.0, 2, np.int32, True, True),
    ]:
        w = sparse_weight(rng, (cout, cin, kernel, kernel), sparsity, empty_every=4)
        bias = rng.standard_normal(cout).astype(np.float32) if use_bias else None
        x = rng.standard_normal((batch, cin, h, w_)).astype(np.float32)
        op = native.CSRConv2d.from_dense(w, stride, padding, bias=bias, relu=relu,
                                         threads=threads, index_dtype=idx)
        assert_close(op.run(x), conv_ref(x, w, bias, (stride,) * 2, (padding,) * 2, relu))


@PROPERTY
@given(
    cin=st.integers(1, 5), cout=st.integers(1, 6), kh=st.integers(1, 4), kw=st.integers(1, 4),
    sh=st.integers(1, 3), sw=st.integers(1, 3), ph=st.integers(0, 2), pw=st.integers(0, 2),
    h=st.integers(1, 13), w_=st.integers(1, 40), n=st.integers(1, 3),
    density=st.sampled_from([0.0, 0.2, 0.7, 1.0]), idx=st.sampled_from([np.int16, np.int32]),
    threads=st.integers(1, 2), use_bias=st.booleans(), relu=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_conv_property(cin, cout, kh, kw, sh, sw, ph, pw, h, w_, n, density, idx, threads,
                       use_bias, relu, seed) -> None:
    h, w_ = max(h, kh - 2 * ph), max(w_, kw - 2 * pw)  # at least one output pixel
    rng = np.random.default_rng(seed)
    w = sparse_weight(rng, (cout, cin, kh, kw), 1.0 - density)
    bias = rng.standard_normal(cout).astype(np.float32) if use_bias else None
    x = rng.standard_normal((n, cin, h, w_)).astype(np.float32)
    op = native.CSRConv2d.from_dense(w, (sh, sw), (ph, pw), bias=bias, relu=relu,
                                     threads=threads, index_dtype=idx)
    assert_close(op.run(x), conv_ref(x, w, bias, (sh, sw), (ph, pw), relu))


@pytest.mark.parametrize("cout", [8, 7, 12])
def test_dense_conv_rows_in_fours_and_pairs_match(cout: int) -> None:
    """A dense weight (every row the same taps) runs four output channels per pass over the
    input (then a pair, then one row: odd Cout), in tiles of at most 96 positions; the result
    matches torch, the pairs-only plan (knob conv_pairs=1) and the one-row plan (0)."""
    rng = np.random.default_rng(12)
    w = rng.standard_normal((cout, 3, 7, 7)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    x = rng.standard_normal((1, 3, 80, 72)).astype(np.float32)
    got = {}
    for pairs in (2, 1, 0):
        old = native.tuning("conv_pairs", pairs)
        try:
            op = native.CSRConv2d.from_dense(w, bias=bias, stride=2, padding=3, relu=True)
            got[pairs] = (op.run(x), op.plan(x.shape))
        finally:
            native.tuning("conv_pairs", old)
    assert got[2][1]["rows_paired"] == got[1][1]["rows_paired"] == 1
    assert got[0][1]["rows_paired"] == 0
    assert got[2][1]["tile"] == 96 and got[1][1]["tile"] > 96  # 40 x 36 outputs: wide tiles
    assert_close(got[2][0], conv_ref(x, w, bias, (2, 2), (3, 3), True))
    for pairs in (1, 0):
        np.testing.assert_allclose(got[2][0], got[pairs][0], rtol=1e-5, atol=1e-4)


def _stem_ref(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, stride: int, pad: int,
              relu: bool, pool: dict | None) -> np.ndarray:
    import torch

    y = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                                   None if bias is None else torch.from_numpy(bias),
                                   stride=stride, padding=pad)
    if relu:
        y = torch.relu(y)
    if pool is not None:
        y = torch.nn.functional.max_pool2d(y, pool["kernel"], pool["stride"],
                                           pool.get("padding", 0),
                                           ceil_mode=pool.get("ceil_mode", False))
    return y.numpy()


@pytest.mark.parametrize("cin,cout,k,stride,pad,size,pool,threads", [
    (3, 64, 7, 2, 3, 64, {"kernel": 3, "stride": 2, "padding": 1}, 1),  # ResNet's stem + pool
    (3, 64, 7, 2, 3, 61, {"kernel": 3, "stride": 2, "padding": 1}, 2),
    (3, 48, 3, 2, 1, 33, None, 2),  # no pool, a group of 3 vectors
    (1, 80, 5, 1, 2, 19, {"kernel": 2, "stride": 2, "ceil_mode": True}, 2),  # 64 + 16 channels
    (4, 16, 3, 1, 1, 7, {"kernel": 3, "stride": 1, "padding": 1}, 1),
])
def test_dense_stem_conv_matches_torch(cin, cout, k, stride, pad, size, pool, threads) -> None:
    """DenseConv2d (channels in lanes, the max-pool fused) against torch's conv, ReLU and
    max_pool2d, at batch 1 and 2, with and without a bias; 10% of the weights zero."""
    rng = np.random.default_rng(cin * 100 + cout)
    w = sparse_weight(rng, (cout, cin, k, k), 0.1)
    for n, bias in ((1, rng.standard_normal(cout).astype(np.float32)), (2, None)):
        x = rng.standard_normal((n, cin, size, size + 3)).astype(np.float32)
        op = native.DenseConv2d(w, stride, pad, bias=bias, relu=True, pool=pool, threads=threads)
        want = _stem_ref(x, w, bias, stride, pad, True, pool)
        got = op.run(x)
        assert got.shape == want.shape
        assert_close(got, want)
        out = np.full_like(got, np.nan)
        assert op.run(x, out) is out
        assert_close(out, want)


def test_dense_stem_conv_errors() -> None:
    from sparsebench.errors import SparsebenchError

    w = np.ones((64, 3, 7, 7), np.float32)
    with pytest.raises(SparsebenchError, match="Cout a multiple of 16"):
        native.DenseConv2d(w[:24])
    with pytest.raises(SparsebenchError, match="act must be 'relu' or none"):
        native.DenseConv2d(w, act="gelu")
    with pytest.raises(SparsebenchError, match="exceeds half the window"):
        native.DenseConv2d(w, pool={"kernel": 3, "stride": 2, "padding": 2})
    op = native.DenseConv2d(w, 2, 3, pool={"kernel": 3, "stride": 2, "padding": 1})
    with pytest.raises(SparsebenchError, match=r"does not match \(N >= 1, 3, H, W\)"):
        op.run(np.zeros((1, 4, 32, 32), np.float32))
    with pytest.raises(SparsebenchError, match="smaller than the kernel"):
        native.DenseConv2d(w).run(np.zeros((1, 3, 5, 5), np.float32))  # 7x7, no padding
    x = np.zeros((1, 3, 32, 32), np.float32)
    with pytest.raises(SparsebenchError, match=r"out must be a float32 array of shape \(1, 64, 8, 8\)"):
        op.run(x, np.zeros((1, 64, 16, 16), np.float32))


@pytest.mark.parametrize("shape,k,stride,pad", [
    ((1, 8, 32, 32), 3, 1, 1),   # kx-copy layout, the output is y itself
    ((1, 6, 30, 30), 3, 1, 1),   # shift layout: bands end inside a row (compaction)
    ((2, 4, 41, 40), 3, 2, 1),   # strided, two images stacked: a band crosses images
    ((1, 8, 40, 40), 1, 1, 0),   # 1x1 on x in place
])
def test_conv_position_bands_match(shape, k: int, stride: int, pad: int) -> None:
    """A 2-thread plan cuts the map into two position bands (each thread packs and computes its
    own); outputs with a residual match torch and the 1-band plan (to rounding: a band's last
    partial tile may sum in another order), whether 1, 2 or 4 threads run the bands."""
    rng = np.random.default_rng(13)
    cin = shape[1]
    w = sparse_weight(rng, (7, cin, k, k), 0.5)
    bias = rng.standard_normal(7).astype(np.float32)
    x = rng.standard_normal(shape).astype(np.float32)
    banded = native.CSRConv2d.from_dense(w, bias=bias, stride=stride, padding=pad, relu=True,
                                         threads=2)
    single = native.CSRConv2d.from_dense(w, bias=bias, stride=stride, padding=pad, relu=True)
    assert banded.plan(x.shape)["bands"] == 2 and single.plan(x.shape)["bands"] == 1
    want = conv_ref(x, w, bias, (stride, stride), (pad, pad), False)
    res = rng.standard_normal(want.shape).astype(np.float32)
    got = banded.run(x, residual=res)
    assert_close(got, np.maximum(want + res, 0))
    np.testing.assert_allclose(got, single.run(x, residual=res), rtol=1e-5, atol=1e-5)
    # a 2-band plan run by 1 thread (the bands in turn) and by 4 (channel chunks over bands)
    old = native.tuning("conv_bands", 2)
    try:
        for threads in (1, 4):
            op = native.CSRConv2d.from_dense(w, bias=bias, stride=stride, padding=pad,
                                             relu=True, threads=threads)
            assert op.plan(x.shape)["bands"] == 2
            np.testing.assert_allclose(op.run(x, residual=res), got, rtol=1e-5, atol=1e-5)
    finally:
        native.tuning("conv_bands", old)


@pytest.mark.parametrize("shape,k,stride,pad,pool,row_out", [
    ((1, 5, 20, 20), 3, 1, 1, 1, 1),   # shift layout, pitch 22: runs of 20 per row
    ((1, 5, 40, 40), 3, 2, 1, 1, 1),   # stride 2, shift layout: pitch 21 for 20 outputs
    ((3, 4, 7, 7), 3, 1, 1, 1, 1),     # stacked images: runs end at each image
    ((1, 5, 20, 20), 3, 1, 1, 2, 0),   # a fused max-pool keeps the extended rows
    ((1, 4, 16, 16), 1, 1, 0, 1, 0)])  # direct output: y is the extended layout
def test_conv_row_scatter_output_matches(shape, k: int, stride: int, pad: int, pool: int,
                                         row_out: int) -> None:
    """Plans whose extended layout is not y write each tile's runs of outputs straight to y
    (``row_out``) instead of extended rows and a compaction pass: same outputs, with a
    residual, a channel scale and at 1 and 2 threads, as with the knob off."""
    rng = np.random.default_rng(17)
    w = sparse_weight(rng, (6, shape[1], k, k), 0.5)
    bias = rng.standard_normal(6).astype(np.float32)
    scale = rng.uniform(0.5, 2.0, 6).astype(np.float32)
    x = rng.standard_normal(shape).astype(np.float32)
    want = conv_ref(x, w, bias, (stride, stride), (pad, pad), False)
    res = rng.standard_normal(want.shape).astype(np.float32)
    full = np.maximum(want + res, 0) * scale[None, :, None, None]
    if pool > 1:
        n, c, h, wd = full.shape
        full = full[:, :, :h // 2 * 2, :wd // 2 * 2].reshape(n, c, h // 2, 2, wd // 2, 2)
        full = full.max(axis=(3, 5))
    for threads in (1, 2):
        outs = []
        for knob in (1, 0):
            old = native.tuning("conv_row_out", knob)
            try:
                op = native.CSRConv2d.from_dense(w, bias=bias, stride=stride, padding=pad,
                                                 relu=True, threads=threads, scale=scale,
                                                 pool=pool)
                assert op.plan(x.shape)["row_out"] == (row_out if knob else 0)
                outs.append(op.run(x, residual=None if pool > 1 else res))
            finally:
                native.tuning("conv_row_out", old)
        if pool == 1:
            assert_close(outs[0], full)
        np.testing.assert_allclose(outs[0], outs[1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape,k,pad,writes", [
    ((1, 8, 28, 28), 1, 0, True),    # 1x1 on x in place, bands at 2 threads
    ((1, 8, 14, 14), 1, 0, True),    # aligned planes: rows straddle vectors
    ((1, 6, 7, 9), 3, 1, True),      # kx-copy, odd map
    ((1, 6, 20, 20), 3, 1, False),   # shift layout (padded rows): no direct output
    ((2, 8, 14, 14), 1, 0, False)])  # batch 2
def test_conv_subsample_written_beside_the_output(shape, k: int, pad: int, writes: bool) -> None:
    """``run(..., subsample=s)`` also writes ``out[:, :, ::2, ::2]`` into s (with a residual,
    at 1 and 2 threads) where ``writes_subsample``; elsewhere it refuses with one message, as
    it does a wrong shape or an array overlapping the output."""
    rng = np.random.default_rng(19)
    w = sparse_weight(rng, (6, shape[1], k, k), 0.5)
    x = rng.standard_normal(shape).astype(np.float32)
    want = conv_ref(x, w, None, (1, 1), (pad, pad), False)
    res = rng.standard_normal(want.shape).astype(np.float32)
    full = np.maximum(want + res, 0).astype(np.float32)
    ho, wo = full.shape[2:]
    for threads in (1, 2):
        op = native.CSRConv2d.from_dense(w, padding=pad, relu=True, threads=threads)
        assert op.writes_subsample(x.shape) is writes
        out = np.empty_like(full)
        sub = np.full((1, 6, (ho + 1) // 2, (wo + 1) // 2), np.nan, np.float32)
        if not writes:
            with pytest.raises(SparsebenchError, match="subsample needs a plan that writes"):
                op.run(x, out, res, subsample=sub)
            continue
        op.run(x, out, res, subsample=sub)
        assert_close(out, full)
        np.testing.assert_array_equal(sub, out[:, :, ::2, ::2])
        with pytest.raises(SparsebenchError, match=r"subsample must be .* of shape \(1, 6, "):
            op.run(x, out, res, subsample=sub[:, :3])
        with pytest.raises(SparsebenchError, match="must not overlap"):
            op.run(x, out, res, subsample=out.reshape(-1)[: sub.size].reshape(sub.shape))


def test_conv_explicit_csr_and_impl_name() -> None:
    rng = np.random.default_rng(6)
    w = sparse_weight(rng, (4, 2, 3, 3), 0.5)
    values, cols, rows = native.csr_from_dense(w.reshape(4, -1), np.int16)
    op = native.CSRConv2d(values, cols, rows, 2, 4, 3, stride=1, padding=1, threads=2,
                          index_dtype=np.int16)
    assert re.fullmatch(r"native-csrconv-(avx512|avx2|scalar)-i16-t2", op.impl)
    x = rng.standard_normal((1, 2, 6, 6)).astype(np.float32)
    assert_close(op.run(x), conv_ref(x, w, None, (1, 1), (1, 1), False))


# ----------------------------------------------------------------------------- validation


def _good_csr():
    return (np.ones(3, np.float32), np.array([0, 2, 1], np.int32), np.array([0, 2, 2, 3], np.int32))


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda v, c, r: (v, np.array([0, 4, 1]), r), "column index 4 outside"),
        (lambda v, c, r: (v, np.array([0, -1, 1]), r), "column index -1 outside"),
        (lambda v, c, r: (v, c, np.array([0, 2, 1, 3])), "non-decreasing"),
        (lambda v, c, r: (v, c, np.array([0, 2, 3])), "row_ptr has 3 entries"),
        (lambda v, c, r: (v, c, np.array([1, 2, 2, 3])), "from 0 to nnz"),
        (lambda v, c, r: (v, c, np.array([0, 1, 1, 2])), "from 0 to nnz"),
        (lambda v, c, r: (v[:2], c, r), "2 values for 3"),
        (lambda v, c, r: (v.astype(np.int32), c, r), "floating point"),
        (lambda v, c, r: (v, c.astype(np.float32), r), "integer array"),
        (lambda v, c, r: (v, c.reshape(3, 1), r), "1-D"),
    ],
)
def test_malformed_csr_is_rejected(mutate, message) -> None:
    v, c, r = mutate(*_good_csr())
    with pytest.raises(SparsebenchError, match=message):
        native.CSRLinear(v, c, r, shape=(3, 4))


def test_bad_options_are_rejected() -> None:
    v, c, r = _good_csr()
    with pytest.raises(SparsebenchError, match="int16 indices"):
        native.CSRLinear(v, c, r, shape=(3, 40000), index_dtype=np.int16)
    with pytest.raises(SparsebenchError, match="index_dtype"):
        native.CSRLinear(v, c, r, shape=(3, 4), index_dtype=np.int64)
    for threads in (0, -1, True, 1.5):
        with pytest.raises(SparsebenchError, match="threads"):
            native.CSRLinear(v, c, r, shape=(3, 4), threads=threads)
    with pytest.raises(SparsebenchError, match="bias"):
        native.CSRLinear(v, c, r, shape=(3, 4), bias=np.ones(4))
    with pytest.raises(SparsebenchError, match="shape"):
        native.CSRLinear(v, c, r, shape=(3,))
    with pytest.raises(SparsebenchError, match="multiple of blocksize"):
        native.BSRLinear(np.ones((1, 4, 4), np.float32), [0], [0, 1], shape=(6, 8))
    with pytest.raises(SparsebenchError, match="cannot split"):
        native.bsr_from_dense(np.ones((6, 8), np.float32), (4, 4))
    with pytest.raises(SparsebenchError, match="column index 3 outside"):
        native.BSRLinear(np.ones((1, 2, 2), np.float32), [3], [0, 1, 1], shape=(4, 6))
    with pytest.raises(SparsebenchError, match="column index 18 outside"):
        native.CSRConv2d(np.ones(1, np.float32), [18], [0, 1], 2, 1, 3)
    with pytest.raises(SparsebenchError, match="stride"):
        native.CSRConv2d(np.ones(1, np.float32), [0], [0, 1], 2, 1, 3, stride=0)


def test_wrong_input_at_run_is_rejected() -> None:
    op = native.CSRLinear(*_good_csr(), shape=(3, 4))
    bad_shapes = [(2, 5), (2, 2, 4), (3,)]
    for bad in (np.ones(shape, np.float32) for shape in bad_shapes):
        with pytest.raises(SparsebenchError, match="does not match"):
            op.run(bad)
    with pytest.raises(SparsebenchError, match="float32"):
        op.run(np.ones((2, 4)))
    with pytest.raises(SparsebenchError, match="C-contiguous"):
        op.run(np.ones((4, 2), np.float32).T)
    with pytest.raises(SparsebenchError, match="numpy array"):
        op.run([[1.0, 2.0, 3.0, 4.0]])
    x = np.ones((2, 4), np.float32)
    with pytest.raises(SparsebenchError, match="out must be a float32 array of shape"):
        op.run(x, out=np.empty((2, 4), np.float32))
    buf = np.ones(8, np.float32)
    square = native.CSRLinear(np.ones(1, np.float32), [0], [0, 1, 1, 1], shape=(3, 3))
    with pytest.raises(SparsebenchError, match="overlap"):
        square.run(buf[:6].reshape(2, 3), out=buf[2:].reshape(2, 3))
    conv = native.CSRConv2d(np.ones(1, np.float32), [0], [0, 1], 2, 1, 3)
    with pytest.raises(SparsebenchError, match="does not match"):
        conv.run(np.ones((1, 3, 5, 5), np.float32))
    with pytest.raises(SparsebenchError, match="smaller than kernel"):
        conv.run(np.ones((1, 2, 2, 5), np.float32))


# ----------------------------------------------------------------------------- build / load

BUILD = importlib.import_module("sparsebench.native.build")  # the module; native.build: function


def test_abi_mismatch_is_detected(monkeypatch) -> None:
    monkeypatch.setattr(BUILD, "ABI_VERSION", native.ABI_VERSION + 100)
    with pytest.raises(SparsebenchError, match="ABI version"):
        native.load()
    assert "ABI version" in (native.available() or "")
    monkeypatch.undo()
    assert native.available() is None


def test_disabled_by_env(monkeypatch) -> None:
    monkeypatch.setenv("SPARSEBENCH_NO_NATIVE", "1")
    assert "SPARSEBENCH_NO_NATIVE" in (native.available() or "")
    with pytest.raises(SparsebenchError, match="disabled"):
        native.build()


def test_missing_compiler(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("SPARSEBENCH_KERNEL_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-c++"))
    with pytest.raises(SparsebenchError, match="not found"):
        native.build(force=True)


def test_build_failure_reports_first_error_line(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("SPARSEBENCH_KERNEL_DIR", str(tmp_path))
    monkeypatch.setattr(BUILD, "CXXFLAGS", (*native.CXXFLAGS, "-fno-such-option-xyz"))
    with pytest.raises(SparsebenchError, match="kernel build failed: .*no-such-option") as info:
        native.build(force=True)
    assert "\n" not in str(info.value)
    assert not list(tmp_path.rglob("*.so"))  # no partial library left behind


def test_missing_sources(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(BUILD, "KERNEL_SRC", tmp_path / "kernels")
    with pytest.raises(SparsebenchError, match="kernel sources not found"):
        native.build()


def test_build_dir_honours_env_and_build_is_cached(monkeypatch, tmp_path) -> None:
    default = native.build_dir()
    assert native.build() == native.build() == default / native.LIB_NAME
    monkeypatch.setenv("SPARSEBENCH_KERNEL_DIR", str(tmp_path))
    assert native.build_dir().parent == tmp_path
    assert native.build_dir().name == default.name  # same sources, flags and compiler
    assert native.isa() in ("avx512", "avx2", "scalar")


def test_straggler_guard_runs_delayed_jobs_on_the_caller() -> None:
    """A worker delayed inside its chunk (test knob) engages the pool's straggler guard (here on
    the first straggle: pool_confirm_us=0; by default it takes a second one soon after, which
    the C driver checks): the following 2-thread calls run on the caller alone, with the same
    results; resetting the back-off (or setting it to 0) brings the pool back."""
    rng = np.random.default_rng(13)
    w = sparse_weight(rng, (300, 400), 0.7)
    x = rng.standard_normal(400).astype(np.float32)
    op = native.CSRLinear.from_dense(w, threads=2)
    want = native.CSRLinear.from_dense(w, threads=1).run(x)
    assert_close(want, linear_ref(x[None], w, None, False)[0])
    old_backoff = native.tuning("pool_backoff_us", 60_000_000)  # far longer than the test
    old_confirm = native.tuning("pool_confirm_us", 0)
    old_delay = native.tuning("pool_test_delay_us", 20_000)
    try:
        straggles = native.tuning("pool_straggles")
        for _ in range(500):  # until a worker has claimed (and been delayed in) a chunk
            np.testing.assert_array_equal(op.run(x), want)
            if native.tuning("pool_straggles") > straggles:
                break
        assert native.tuning("pool_straggles") == straggles + 1
        degraded, jobs = native.tuning("pool_degraded_jobs"), native.tuning("pool_jobs")
        for _ in range(3):
            np.testing.assert_array_equal(op.run(x), want)
        assert native.tuning("pool_degraded_jobs") == degraded + 3
        assert native.tuning("pool_jobs") == jobs
        native.tuning("pool_test_delay_us", 0)
        native.tuning("pool_backoff_us", old_backoff)
        np.testing.assert_array_equal(op.run(x), want)
        assert native.tuning("pool_jobs") == jobs + 1
    finally:
        native.tuning("pool_test_delay_us", old_delay)
        native.tuning("pool_confirm_us", old_confirm)
        native.tuning("pool_backoff_us", old_backoff)


def test_pool_hold_keeps_workers_spinning_between_calls() -> None:
    """While a run holds the pool, its workers spin between kernel calls that come a few ms
    apart (pool_hold_us) instead of sleeping; releasing the hold ends those spins at once; holds
    are counted and never go below zero."""
    lib = native.load()
    rng = np.random.default_rng(17)
    w = sparse_weight(rng, (600, 800), 0.7)
    x = rng.standard_normal((8, 800)).astype(np.float32)
    op = native.CSRLinear.from_dense(w, threads=2)
    want = op.run(x)
    assert lib.sb_pool_hold(0) == 0 and lib.sb_pool_hold(-1) == -1 and lib.sb_pool_hold(0) == 0
    old = native.tuning("pool_hold_us", 5_000_000)
    try:
        jobs = native.tuning("pool_jobs")
        with native.pool_held(2):
            assert lib.sb_pool_hold(0) == 1
            with native.pool_held(1):  # one thread: no hold
                assert lib.sb_pool_hold(0) == 1
            np.testing.assert_array_equal(op.run(x), want)
            native.tuning("pool_sleeps", 0)
            for _ in range(5):
                time.sleep(0.003)
                np.testing.assert_array_equal(op.run(x), want)
            held = native.tuning("pool_sleeps")
        assert lib.sb_pool_hold(0) == 0
        assert native.tuning("pool_jobs") >= jobs + 6  # the calls did run on the pool
        time.sleep(0.1)  # far less than pool_hold_us: only the release can end the spins
        released = native.tuning("pool_sleeps")
        for _ in range(5):
            time.sleep(0.003)
            op.run(x)
        time.sleep(0.01)
        unheld = native.tuning("pool_sleeps")
    finally:
        native.tuning("pool_hold_us", old)
    assert held == 0
    assert released >= 1
    assert unheld >= released + 4  # without the hold, each 3 ms gap ends in a sleep


def _anon_huge_kb() -> int:
    with open("/proc/self/smaps_rollup") as f:
        return int(re.search(r"AnonHugePages:\s+(\d+)", f.read()).group(1))


def _thp_mode() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read().split("[")[1].split("]")[0]
    except OSError:
        return "never"


def test_huge_page_arena_gives_zeroed_aligned_separate_arrays() -> None:
    from sparsebench.native.memory import HugePageArena

    arena = HugePageArena()
    shapes = [(3, 5), (1, 256, 56, 56), (7,), (40 << 20 >> 2,)]  # the last gets its own region
    arrays = [arena.zeros(s) for s in shapes]
    arrays.append(arena.zeros((9,), np.uint8))
    for a, s in zip(arrays, shapes):
        assert a.shape == s and a.dtype == np.float32 and a.flags.c_contiguous
        assert a.ctypes.data % 64 == 0 and not a.any()
    assert arrays[-1].dtype == np.uint8 and arrays[-1].ctypes.data % 64 == 0
    for i, a in enumerate(arrays):  # no two share memory
        a.fill(i + 1)
    for i, a in enumerate(arrays):
        assert (a == i + 1).all()
    assert all(arena.owns(a) for a in arrays) and not arena.owns(np.zeros(4))
    assert arena.mapped >= sum(a.nbytes for a in arrays)
    del arena  # the arrays keep their memory
    assert (arrays[1] == 2).all()
    plain = HugePageArena(huge=False)
    assert not plain.zeros((4, 4)).any() and plain.mapped == 0


@pytest.mark.skipif(_thp_mode() == "never" or not os.path.exists("/proc/self/smaps_rollup"),
                    reason="transparent huge pages are off here")
def test_huge_page_arena_is_backed_by_huge_pages() -> None:
    """The arena's mappings are private and advised: the kernel backs them with 2 MB pages
    (a shared anonymous mapping would be shmem and get none)."""
    from sparsebench.native.memory import HugePageArena

    before = _anon_huge_kb()
    arena = HugePageArena()
    keep = [arena.zeros((1 << 18,)) for _ in range(32)]  # 32 MB of 1 MB buffers
    assert _anon_huge_kb() - before >= 16 << 10, "less than half of 32 MB on huge pages"
    assert len(keep) == 32
