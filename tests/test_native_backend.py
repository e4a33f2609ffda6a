"""The native backend: BatchNorm folding, the fused execution plan, every format x architecture
against the dense reference, and the fused conv epilogues of the kernels."""

from __future__ import annotations

import copy
import functools
import itertools
import re

import numpy as np
import pytest
import torch
from torch import nn

from conftest import needs_kernels, randomize_bn, rel_err
from sparsebench import native
from sparsebench.archs import create_model, small_model
from sparsebench.formats import convert
from sparsebench.formats.fold import batchnorm_pairs, fold_batchnorm
from sparsebench.measure.timing import time_steps
from sparsebench.sweep import magnitude_prune

@functools.lru_cache(maxsize=None)
def _model(arch: str, sparsity: float) -> nn.Module:
    torch.manual_seed(0)
    m = randomize_bn(small_model(arch).eval())
    magnitude_prune(m, sparsity)
    return m


def model(arch: str, sparsity: float = 0.8) -> nn.Module:
    """A pruned model with non-trivial BatchNorm (built once per test session)."""
    return copy.deepcopy(_model(arch, sparsity))


@functools.lru_cache(maxsize=None)
def converted(arch: str, fmt: str) -> object:
    return convert(_model(arch, 0.8), fmt)


# ----------------------------------------------------------------------------- folding


def test_fold_batchnorm_keeps_outputs_and_zeros() -> None:
    m = model("vgg11_bn")
    zeros = {n: (mod.weight == 0).clone() for n, mod in m.named_modules()
             if isinstance(mod, nn.Conv2d)}
    folded = fold_batchnorm(m)
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in folded.modules())
    assert len(batchnorm_pairs(m)) == 8
    x = torch.randn(2, *m.input_shape)
    with torch.no_grad():
        assert rel_err(folded(x), m(x)) < 1e-5
    for n, z in zeros.items():  # a pruned weight stays exactly zero
        assert bool((folded.get_submodule(n).weight[z] == 0).all())
    assert isinstance(m.features[1], nn.BatchNorm2d)  # the input model is untouched


def test_fold_gamma_zero_unit_becomes_zero_and_bias_created() -> None:
    conv, bn = nn.Conv2d(2, 3, 3, bias=False), nn.BatchNorm2d(3)
    seq = nn.Sequential(conv, bn).eval()
    with torch.no_grad():
        bn.weight[1] = 0.0
        bn.bias.copy_(torch.tensor([0.5, 0.0, -1.0]))
        bn.running_mean.copy_(torch.tensor([0.1, 0.2, 0.3]))
    folded = fold_batchnorm(seq)
    x = torch.randn(1, 2, 5, 5)
    with torch.no_grad():
        assert rel_err(folded(x), seq(x)) < 1e-6
    assert bool((folded[0].weight[1] == 0).all()) and folded[0].bias is not None


def test_fold_skips_bn_whose_input_is_shared() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y) + y  # folding would change the second use

    assert batchnorm_pairs(Twice()) == []


def test_fold_onnx_imported_model() -> None:
    from sparsebench.backends.onnxrt import export_onnx
    from sparsebench.graph.onnx_torch import to_torch

    import onnx

    m = randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                   nn.Conv2d(8, 4, 3), nn.BatchNorm2d(4)).eval())
    imported = to_torch(onnx.load_from_string(export_onnx(m, (3, 6, 6))))
    folded = fold_batchnorm(imported)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        assert rel_err(folded(x), m(x)) < 1e-5


# ----------------------------------------------------------------------------- the backend


CASES = [(a, f) for a in ("lenet300", "lenet5", "ffn") for f in ("csr", "bsr", "structured")]
CASES += [("vgg11_bn", "csr"), ("vgg11_bn", "structured"), ("resnet18", "csr")]


@needs_kernels
@pytest.mark.parametrize("arch,fmt", CASES)
def test_every_arch_and_format_matches_the_dense_reference(arch: str, fmt: str) -> None:
    from sparsebench.backends import get_backend

    m = _model(arch, 0.8)
    for batch, threads in ((1, 1), (3, 2)):
        prepared = get_backend("native").prepare(converted(arch, fmt), threads=threads,
                                                 batch=batch)
        x = torch.randn(batch, *m.input_shape)
        with torch.no_grad():
            assert rel_err(prepared.run(x), m(x)) <= 1e-4
        label = {"csr": r"csr", "structured": r"structured-csr", "bsr": r"bsr4x4"}[fmt]
        assert re.match(rf"native-{label}.*-(avx512|avx2|scalar)-i(16|32).*-t{threads}",
                        prepared.impl), prepared.impl
        assert prepared.traffic_bytes > 0


@needs_kernels
def test_plans_fuse_everything_the_kernels_can_take() -> None:
    from sparsebench.backends import get_backend

    vgg = get_backend("native").prepare(converted("vgg11_bn", "csr"))
    assert "+torch" not in vgg.impl  # conv+BN+ReLU+max-pool all in the kernels
    assert len(vgg.kernels) == 9
    res = get_backend("native").prepare(converted("resnet18", "csr"))
    assert "+torch" not in res.impl  # residual, out_mask, global average pool: fused
    assert len(res.kernels) == 21
    ffn = get_backend("native").prepare(converted("ffn", "csr"))
    assert [k.act for k in ffn.kernels] == [2, 0, 0]  # GELU fused into fc1


@needs_kernels
def test_other_batch_sizes_get_their_own_plan() -> None:
    from sparsebench.backends import get_backend

    m = _model("lenet5", 0.8)
    prepared = get_backend("native").prepare(converted("lenet5", "csr"), batch=2)
    for batch in (1, 5, 2):
        x = torch.randn(batch, *m.input_shape)
        with torch.no_grad():
            assert rel_err(prepared.run(x), m(x)) <= 1e-4


@needs_kernels
def test_output_is_a_copy() -> None:
    from sparsebench.backends import get_backend

    m = _model("lenet300", 0.8)
    prepared = get_backend("native").prepare(converted("lenet300", "csr"))
    x = torch.randn(1, *m.input_shape)
    first = prepared.run(x)
    prepared.run(torch.randn(1, *m.input_shape))
    with torch.no_grad():
        assert rel_err(first, m(x)) <= 1e-4


@pytest.mark.parametrize("src,dst", [
    (torch.arange(24.0).reshape(2, 3, 4), torch.zeros(2, 3, 4)),             # raw memmove
    (torch.arange(24.0).reshape(2, 4, 3).transpose(1, 2), torch.zeros(2, 3, 4)),  # strided src
    (torch.arange(24.0).reshape(3, 8), torch.zeros(8, 3).t()),               # strided dst
    (torch.arange(4.0), torch.zeros(2, 3, 4)),                               # broadcast
    (torch.arange(24, dtype=torch.int64).reshape(2, 3, 4), torch.zeros(2, 3, 4)),  # other dtype
    (torch.arange(24.0, dtype=torch.float64).reshape(2, 3, 4), torch.zeros(2, 3, 4)),
    (torch.zeros(0, 3), torch.zeros(0, 3)),                                  # empty
])
def test_copy_into_is_copy_(src: torch.Tensor, dst: torch.Tensor) -> None:
    from sparsebench.backends.kernel_plan import copied, copy_into

    want = dst.clone().copy_(src)
    copy_into(dst, src)
    assert torch.equal(dst, want)
    if src.dtype is torch.float32 and src.is_contiguous():
        fresh = copied(src)
        assert torch.equal(fresh, src) and (fresh.data_ptr() != src.data_ptr() or not src.numel())


@needs_kernels
def test_untraceable_model_runs_as_swapped_modules() -> None:
    from sparsebench.backends import get_backend

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.input_shape = (8,)
            self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.fc1(x)
            if float(h.sum()) > 1e9:  # data-dependent control flow: torch.fx cannot trace it
                h = h * 2
            return self.fc2(torch.relu(h))

    m = Branchy().eval()
    prepared = get_backend("native").prepare(convert(m, "bsr"), threads=1, batch=2)
    assert prepared.impl.endswith("-swapped-modules")
    x = torch.randn(2, 8)
    with torch.no_grad():
        assert rel_err(prepared.run(x), m(x)) <= 1e-4


@needs_kernels
def test_layers_a_format_keeps_dense_run_in_torch_and_say_so() -> None:
    from sparsebench.backends import get_backend

    class Grouped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.input_shape = (4, 6, 6)
            self.g = nn.Conv2d(4, 4, 3, padding=1, groups=2)
            self.c = nn.Conv2d(4, 5, 3, padding=1)
            self.fc = nn.Linear(5 * 36, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(torch.relu(self.c(self.g(x))), 1))

    m = Grouped().eval()
    prepared = get_backend("native").prepare(convert(m, "csr"))
    assert "+torch(g (dense layer))" in prepared.impl
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        assert rel_err(prepared.run(x), m(x)) <= 1e-4


@needs_kernels
def test_onnx_imported_chain_runs_on_a_plan() -> None:
    import onnx

    from sparsebench.backends import get_backend
    from sparsebench.backends.onnxrt import export_onnx
    from sparsebench.graph.onnx_torch import to_torch

    m = model("lenet5")
    imported = to_torch(onnx.load_from_string(export_onnx(m, m.input_shape)))
    imported.input_shape = m.input_shape
    prepared = get_backend("native").prepare(convert(imported, "csr"), batch=2)
    assert "swapped" not in prepared.impl
    x = torch.randn(2, *m.input_shape)
    with torch.no_grad():
        assert rel_err(prepared.run(x), m(x)) <= 1e-4


def test_unavailable_gives_the_loader_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    from sparsebench.backends.kernel_plan import NativeBackend

    monkeypatch.setenv("SPARSEBENCH_NO_NATIVE", "1")
    assert "SPARSEBENCH_NO_NATIVE" in (NativeBackend().unavailable() or "")


# ----------------------------------------------------------------------------- kernels


@needs_kernels
@pytest.mark.parametrize("act", ["relu", "gelu", None])
@pytest.mark.parametrize("batch", [1, 3])
def test_conv_epilogue_residual_scale_act(act: str | None, batch: int) -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 5, 3, 3)).astype(np.float32)
    w[rng.random(w.shape) < 0.6] = 0
    bias = rng.standard_normal(6).astype(np.float32)
    scale = rng.standard_normal(6).astype(np.float32)
    x = rng.standard_normal((batch, 5, 7, 9)).astype(np.float32)
    res = rng.standard_normal((batch, 6, 7, 9)).astype(np.float32)
    op = native.CSRConv2d.from_dense(w, 1, 1, bias=bias, act=act, scale=scale, threads=2)
    t = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                                   torch.from_numpy(bias), 1, 1) + torch.from_numpy(res)
    t = {"relu": torch.relu, "gelu": torch.nn.functional.gelu, None: lambda v: v}[act](t)
    want = (t * torch.from_numpy(scale).view(1, -1, 1, 1)).numpy()
    np.testing.assert_allclose(op.run(x, residual=res), want, rtol=1e-4, atol=1e-4)


@needs_kernels
@pytest.mark.parametrize("layout", [0, 1, 2, 3])
@pytest.mark.parametrize("size,pool", [(8, 2), (9, 2), (12, 3), (4, 2)])
def test_conv_fused_max_pool_and_layouts(layout: int, size: int, pool: int) -> None:
    rng = np.random.default_rng(2)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w[rng.random(w.shape) < 0.5] = 0
    x = rng.standard_normal((2, 3, size, size)).astype(np.float32)
    old = native.tuning("conv_layout", layout)
    try:
        op = native.CSRConv2d.from_dense(w, 1, 1, act="relu", pool=pool)
        got = op.run(x)
    finally:
        native.tuning("conv_layout", old)
    ref = torch.nn.functional.max_pool2d(torch.relu(torch.nn.functional.conv2d(
        torch.from_numpy(x), torch.from_numpy(w), None, 1, 1)), pool).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert op.plan(x.shape)["pool"] == pool


@needs_kernels
def test_conv_plan_refuses_bad_residual_and_unsorted_rows_are_sorted() -> None:
    from sparsebench.errors import SparsebenchError

    op = native.CSRConv2d(np.array([1.0, 2.0], np.float32), np.array([5, 1]), [0, 2], 1, 1, 3,
                          padding=1)
    x = np.ones((1, 1, 4, 4), np.float32)
    ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(
        np.array([0, 2, 0, 0, 0, 1, 0, 0, 0], np.float32).reshape(1, 1, 3, 3)), padding=1)
    np.testing.assert_allclose(op.run(x), ref.numpy())
    with pytest.raises(SparsebenchError, match="residual"):
        op.run(x, residual=np.ones((1, 1, 3, 3), np.float32))
    with pytest.raises(SparsebenchError, match="pool"):
        native.CSRConv2d.from_dense(np.ones((1, 1, 3, 3), np.float32), pool=0)
    # residual, ReLU and a fused 2x2 max-pool / global average together
    res = np.random.default_rng(4).standard_normal((1, 1, 4, 4)).astype(np.float32)
    full = np.maximum(ref.numpy() + res, 0)
    for pool, want in ((2, full.reshape(1, 1, 2, 2, 2, 2).max(axis=(3, 5))),
                       ("avg", full.mean(axis=(2, 3), keepdims=True))):
        pooled = native.CSRConv2d(op.values, op.col_idx, op.row_ptr, 1, 1, 3, padding=1,
                                  act="relu", pool=pool)
        np.testing.assert_allclose(pooled.run(x, residual=res), want, rtol=1e-6, atol=1e-6)


@needs_kernels
def test_linear_gelu_epilogue() -> None:
    rng = np.random.default_rng(3)
    w = rng.standard_normal((37, 50)).astype(np.float32)
    w[rng.random(w.shape) < 0.7] = 0
    b = rng.standard_normal(37).astype(np.float32)
    for batch in (1, 2, 9):
        x = rng.standard_normal((batch, 50)).astype(np.float32) * 3
        want = torch.nn.functional.gelu(torch.from_numpy(x @ w.T + b)).numpy()
        for cls in (native.CSRLinear, native.BSRLinear):
            op = (cls.from_dense(w, bias=b, act="gelu", threads=2) if cls is native.CSRLinear
                  else cls.from_dense(np.pad(w, ((0, 3), (0, 0))), (4, 1),
                                      bias=np.pad(b, (0, 3)), act="gelu"))
            got = op.run(x)[:, :37]
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@needs_kernels
def test_global_average_pool_variants_fuse_into_the_conv() -> None:
    from sparsebench.backends import get_backend

    class Gap(nn.Module):
        def __init__(self, how: str) -> None:
            super().__init__()
            self.input_shape, self.how = (3, 6, 6), how
            self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 4)
            self.pool = nn.AdaptiveAvgPool2d((1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.conv(x))
            if self.how == "mean":
                return self.fc(y.mean((2, 3)))
            if self.how == "module":
                return self.fc(torch.flatten(self.pool(y), 1))
            return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(y, 1), 1))

    for how in ("mean", "module", "function"):
        m = Gap(how).eval()
        prepared = get_backend("native").prepare(convert(m, "csr"), batch=2)
        assert "+torch" not in prepared.impl and len(prepared.kernels) == 2, how
        x = torch.randn(2, 3, 6, 6)
        with torch.no_grad():
            assert rel_err(prepared.run(x), m(x)) <= 1e-4
        steps = time_steps(*prepared.steps(x), calls=2)
        assert list(steps) == ["conv+relu+avgpool", "fc"] and all(v > 0 for v in steps.values())


class _Bottleneck(nn.Module):
    """ResNet-50's shapes in small: stem conv + 3x3/s2/p1 max-pool, a block with a strided
    1x1 shortcut, a residual add, a global average pool spelled as a full-map AveragePool."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 7, 2, 3), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        self.body = nn.Sequential(nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.Conv2d(4, 4, 3, 2, 1), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.Conv2d(4, 16, 1), nn.BatchNorm2d(16))
        self.short = nn.Sequential(nn.Conv2d(8, 16, 1, 2), nn.BatchNorm2d(16))
        self.pool = nn.AvgPool2d(4)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(self.body(x) + self.short(x))
        return self.fc(torch.flatten(self.pool(x), 1))


@needs_kernels
def test_onnx_resnet_blocks_run_natively_with_sum_and_pools() -> None:
    """The ONNX model zoo's ResNet-50 adds with Sum, pools with MaxPool(3, 2, pad 1) and a
    full-map AveragePool, and keeps BatchNormalization nodes: all of it on the plan (before:
    folding broke the graph and the model ran as swapped modules, the pool in torch)."""
    import onnx

    from sparsebench.backends import get_backend
    from sparsebench.backends.onnxrt import export_onnx
    from sparsebench.graph.onnx_torch import to_torch

    m = randomize_bn(_Bottleneck().eval())
    magnitude_prune(m, 0.6)
    proto = onnx.load_from_string(export_onnx(m, (3, 32, 32)))
    for node in proto.graph.node:
        if node.op_type == "Add":
            node.op_type = "Sum"
    assert {"Sum", "MaxPool", "AveragePool"} <= {n.op_type for n in proto.graph.node}
    imported = to_torch(proto)
    imported.input_shape = (3, 32, 32)
    for threads in (1, 2):
        prepared = get_backend("native").prepare(convert(imported, "csr"), threads=threads,
                                                 batch=2)
        assert "swapped" not in prepared.impl and "torch(" not in prepared.impl, prepared.impl
        x = torch.randn(2, 3, 32, 32)
        names = prepared.steps(x)[0]
        # the shortcut is added by the block's last conv: as its residual (the batch plan) or
        # merged into it (the batch-1 plan, which prepare may choose to run per sample)
        assert "maxpool" in names and any(
            n.endswith(("+residual+relu+avgpool", "+short_short_0_conv+relu+avgpool"))
            for n in names), names
        with torch.no_grad():
            assert rel_err(prepared.run(x), m(x)) <= 1e-4


class _Stem(nn.Module):
    """An ImageNet stem: a dense 7x7 / 2 conv of 3 -> 32 channels, BatchNorm, ReLU and the
    3x3 / 2 / pad-1 max-pool, then a sparse 3x3 conv and a global average pool."""

    def __init__(self) -> None:
        super().__init__()
        self.input_shape = (3, 45, 40)
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 7, 2, 3, bias=False), nn.BatchNorm2d(32),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        self.conv = nn.Conv2d(32, 16, 3, padding=1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(self.stem(x)))
        return self.fc(y.mean((2, 3)))


@needs_kernels
@pytest.mark.parametrize("stem_sparsity,fused", [(0.0, True), (0.3, True), (0.9, False)])
def test_dense_stem_and_its_pool_run_as_one_call(stem_sparsity: float, fused: bool) -> None:
    """A stem conv with few input channels, mostly nonzero, and the overlapping max-pool after
    its ReLU run as one DenseConv2d call (the impl says ``denseconv``); a sparse stem stays on
    the CSR kernel with a separate pool. Outputs match the dense model and the plan with the
    switch off, at batch 1 and 2, on 1 and 2 threads."""
    from sparsebench.backends import get_backend, kernel_plan

    torch.manual_seed(3)
    m = randomize_bn(_Stem().eval())
    with torch.no_grad():
        m.conv.weight[torch.rand_like(m.conv.weight) < 0.8] = 0
        w = m.stem[0].weight
        w[torch.rand_like(w) < stem_sparsity] = 0
    cv = convert(m, "csr")
    for threads in (1, 2):
        prepared = get_backend("native").prepare(cv, batch=2, threads=threads)
        kernel_plan.STEM_POOL = False
        try:
            apart = get_backend("native").prepare(cv, batch=2, threads=threads)
        finally:
            kernel_plan.STEM_POOL = True
        assert ("denseconv" in prepared.impl) == fused, prepared.impl
        assert "denseconv" not in apart.impl
        for batch in (1, 2):
            x = torch.randn(batch, 3, 45, 40)
            names = prepared.steps(x)[0]
            assert names[:2] == (["stem.0+relu+maxpool", "conv+relu+avgpool"] if fused
                                 else ["stem.0+relu", "stem.3"]), names  # stem.3: the pool
            with torch.no_grad():
                want = m(x)
                assert rel_err(prepared.run(x), want) <= 1e-5
                assert rel_err(apart.run(x), want) <= 1e-5


@needs_kernels
@pytest.mark.parametrize("kernel,stride,padding,ceil", [(3, 2, 1, False), (3, 2, 1, True),
                                                        (2, 2, 0, False), ((3, 2), (1, 2),
                                                                           (1, 0), True)])
def test_native_maxpool_matches_torch(kernel: object, stride: object, padding: object,
                                      ceil: bool) -> None:
    x = torch.randn(2, 3, 9, 11)
    want = torch.nn.functional.max_pool2d(x, kernel, stride, padding, ceil_mode=ceil)
    y = np.empty(tuple(want.shape), np.float32)
    native.MaxPool2d(x.numpy(), y, kernel, stride, padding, ceil, threads=2).run()
    assert np.array_equal(y, want.numpy())


@needs_kernels
def test_native_maxpool_refuses_bad_shapes() -> None:
    from sparsebench.errors import SparsebenchError

    x = np.zeros((1, 2, 8, 8), np.float32)
    with pytest.raises(SparsebenchError, match="output must be"):
        native.MaxPool2d(x, np.zeros((1, 2, 3, 3), np.float32), 3, 2, 1)
    with pytest.raises(SparsebenchError, match="exceeds half the window"):
        native.MaxPool2d(x, np.zeros((1, 2, 4, 4), np.float32), 2, 2, 2)


@needs_kernels
@pytest.mark.parametrize("batch,density,dense", [(1, 0.1, False), (1, 0.3, False),
                                                 (1, 0.6, True), (1, 1.0, True),
                                                 (32, 0.3, False), (32, 0.6, True),
                                                 (64, 0.45, "panels"), (64, 0.6, True),
                                                 (2, 1.0, "small")])
def test_dense_enough_linears_run_on_torch_gemm(batch: int, density: float,
                                                dense: bool | str) -> None:
    """csr/native: a Linear denser than the break-even (DENSE_WINS) and big enough
    (DENSE_MIN_MACS) runs on torch's GEMM and the impl says so; sparse or small ones stay on
    the kernel; the output matches either way."""
    from sparsebench.backends import get_backend

    torch.manual_seed(0)
    width = 16 if dense == "small" else 2048  # 2048 x 2048: DENSE_MIN_MACS at batch 1
    m = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 8)).eval()
    if dense == "panels":  # between DENSE_WINS and DENSE_WINS_PANELS: where the panels run
        from sparsebench import native
        dense = native.isa() != "avx512"
    dense = dense is True
    with torch.no_grad():
        for layer in (m[0], m[2]):
            layer.weight.mul_((torch.rand_like(layer.weight) < density).float())
    m.input_shape = (width,)
    prepared = get_backend("native").prepare(convert(m, "csr"), batch=batch)
    assert ("nonzero)" in prepared.impl) is dense, prepared.impl
    x = torch.randn(batch, width)
    with torch.no_grad():
        assert rel_err(prepared.run(x), m(x)) <= 1e-5
    structured = get_backend("native").prepare(convert(m, "structured"), batch=batch)
    assert "nonzero)" not in structured.impl  # a structured model asked for its compaction


class _ThreeProjections(nn.Module):
    """q, k, v = three Linears of one input (attention's projections), combined in torch."""

    def __init__(self, width: int = 300) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(width, n) for n in (width, width, 40))
        self.out = nn.Linear(width, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(x), self.k(x), self.v(x)
        return self.out(torch.relu(q) * k) + v[..., :8]


@needs_kernels
@pytest.mark.parametrize("tokens,grouped", [(64, True), (8, False)])
def test_linears_of_one_input_run_as_one_group_call(tokens: int, grouped: bool) -> None:
    """csr/native: consecutive Linears reading the same input of >= 64 rows are one
    CSRLinearGroup call (one transpose of the input), named by the steps it runs; fewer rows
    keep one call each; the output matches either way."""
    from sparsebench.backends import get_backend

    torch.manual_seed(1)
    m = _ThreeProjections().eval()
    magnitude_prune(m, 0.9)
    m.input_shape = (tokens, 300)
    prepared = get_backend("native").prepare(convert(m, "csr"), batch=1)
    names = prepared._names[1]
    joined = [n for n in names if " + " in n]
    assert len(joined) == (1 if grouped else 0), names
    if grouped:
        assert joined[0].count(" + ") == 2  # q, k and v
    x = torch.randn(1, tokens, 300)
    with torch.no_grad():
        assert rel_err(prepared.run(x), m(x)) <= 1e-5


@needs_kernels
def test_linear_group_checks_its_ops() -> None:
    from sparsebench.errors import SparsebenchError

    a = native.CSRLinear.from_dense(np.eye(4, dtype=np.float32))
    b = native.CSRLinear.from_dense(np.eye(5, dtype=np.float32))
    with pytest.raises(SparsebenchError, match="share the input width"):
        native.CSRLinearGroup([a, b])
    with pytest.raises(SparsebenchError, match="1 to 8 CSRLinear ops"):
        native.CSRLinearGroup([a] * 9)
    g = native.CSRLinearGroup([a, a])
    x = np.ones((2, 4), np.float32)
    with pytest.raises(SparsebenchError, match="2 ops but 1 outputs"):
        g.bind(x, [np.empty((2, 4), np.float32)])
    with pytest.raises(SparsebenchError, match="out must be a float32 array of shape"):
        g.bind(x, [np.empty((2, 4), np.float32), np.empty((2, 3), np.float32)])
    outs = [np.empty((2, 4), np.float32), np.empty((2, 4), np.float32)]
    g.bind(x, outs)()
    np.testing.assert_array_equal(outs[0], x)
    np.testing.assert_array_equal(outs[1], x)


class _FeedForward(nn.Module):
    """A transformer's feed-forward pair, optionally with a second reader of the hidden layer."""

    def __init__(self, width: int = 300, hidden: int = 520, tap: bool = False,
                 prenorm: bool = False) -> None:
        super().__init__()
        self.up, self.down, self.tap = nn.Linear(width, hidden), nn.Linear(hidden, width), tap
        self.norm = nn.LayerNorm(width) if prenorm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:  # read by `up` only: the plan reuses its buffer for `down`
            x = self.norm(x)
        h = nn.functional.gelu(self.up(x))
        y = self.down(h)
        return y + h[..., :1] if self.tap else torch.relu(y) if self.norm is not None else y


@needs_kernels
@pytest.mark.parametrize("tokens,tap,threads,chained,prenorm", [
    (130, False, 1, True, False), (130, False, 2, True, False), (64, False, 2, True, False),
    (256, False, 2, True, False),
    (130, False, 1, True, True), (256, False, 2, True, True),  # in place: out is the input
    (130, True, 1, False, False),  # the hidden layer has a second reader: it must be stored
    (8, False, 1, False, False),   # too few rows for the K-panel path
])
def test_feed_forward_pair_runs_as_one_chain_call(tokens: int, tap: bool, threads: int,
                                                  chained: bool, prenorm: bool) -> None:
    """csr/native: a Linear whose output only the next Linear reads, both on the K-panel path,
    is one CSRLinearChain call named "first -> second" (also when the plan gives the pair's
    output the buffer of its dead input, as a pre-norm block does); the output matches the
    dense model and the plan with the chain switched off."""
    from sparsebench.backends import get_backend, kernel_plan

    if chained and native.isa() != "avx512":
        chained = False  # no K-panel path: the steps stay apart
    torch.manual_seed(2)
    m = _FeedForward(tap=tap, prenorm=prenorm).eval()
    with torch.no_grad():  # 90% sparse, the last layer too (magnitude_prune keeps it dense)
        for layer in (m.up, m.down):
            layer.weight.mul_((torch.rand_like(layer.weight) < 0.1).float())
    m.input_shape = (tokens, 300)
    cv = convert(m, "csr")
    prepared = get_backend("native").prepare(cv, batch=1, threads=threads)
    names = prepared._names[1]
    assert sum(" -> " in n for n in names) == int(chained), names
    kernel_plan.CHAIN_LINEARS = False
    try:
        apart = get_backend("native").prepare(cv, batch=1, threads=threads)
    finally:
        kernel_plan.CHAIN_LINEARS = True
    assert not any(" -> " in n for n in apart._names[1])
    x = torch.randn(1, tokens, 300)
    with torch.no_grad():
        want = m(x)
        assert rel_err(prepared.run(x), want) <= 1e-5
        assert rel_err(apart.run(x), want) <= 1e-5


@needs_kernels
def test_plan_buffers_and_panel_copies_live_on_the_plans_huge_pages() -> None:
    """The plan's activation buffers and its linears' K-panel copies come from the plan's
    HugePageArena (switch kernel_plan.HUGE_PAGES); outputs do not depend on it."""
    from sparsebench.backends import get_backend, kernel_plan

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(300, 400), nn.GELU(), nn.Linear(400, 300)).eval()
    with torch.no_grad():
        for lin in (m[0], m[2]):
            lin.weight[torch.rand_like(lin.weight) < 0.8] = 0
    m.input_shape = (128, 300)
    cv = convert(m, "csr")
    prepared = get_backend("native").prepare(cv, batch=1)
    kernel_plan.HUGE_PAGES = False
    try:
        plain = get_backend("native").prepare(cv, batch=1)
    finally:
        kernel_plan.HUGE_PAGES = True
    x = torch.randn(1, 128, 300)
    with torch.no_grad():
        want = m(x)
        assert rel_err(prepared.run(x), want) <= 1e-5 and rel_err(plain.run(x), want) <= 1e-5
    arena = prepared._arena
    feeds = prepared._plans[1][0]
    assert arena.mapped > 0 and all(arena.owns(f[1].numpy()) for f in feeds if f[1] is not None)
    linears = [k for k in prepared.kernels if isinstance(k, native.CSRLinear)]
    if native.isa() == "avx512":  # the K-panel path (and its copy) is AVX-512 only
        assert linears and all(k.panels is not None and arena.owns(k.panels[2]) for k in linears)
    assert plain._arena.mapped == 0


@needs_kernels
def test_linear_chain_checks_its_ops() -> None:
    from sparsebench.errors import SparsebenchError

    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((300, 270)).astype(np.float32) * (rng.random((300, 270)) < 0.2)
    w2 = rng.standard_normal((33, 300)).astype(np.float32) * (rng.random((33, 300)) < 0.2)
    a = native.CSRLinear.from_dense(w1, act="gelu", threads=2)
    b = native.CSRLinear.from_dense(w2, bias=np.arange(33, dtype=np.float32))
    with pytest.raises(SparsebenchError, match="first op's 33 outputs are not the second's 270 inputs"):
        native.CSRLinearChain(b, a)
    with pytest.raises(SparsebenchError, match="two CSRLinear ops"):
        native.CSRLinearChain(a, "b")  # type: ignore[arg-type]
    with pytest.raises(SparsebenchError, match="share the thread count"):
        native.CSRLinearChain(a, b)
    b = native.CSRLinear.from_dense(w2, bias=np.arange(33, dtype=np.float32), threads=2)
    chain = native.CSRLinearChain(a, b)
    x = rng.standard_normal((70, 270)).astype(np.float32)
    with pytest.raises(SparsebenchError, match="out must be a float32 array of shape"):
        chain.bind(x, np.empty((70, 300), np.float32))
    with pytest.raises(SparsebenchError, match="must be .batch, features."):
        chain.bind(x[0].copy(), np.empty(33, np.float32))
    square = native.CSRLinearChain(a, native.CSRLinear.from_dense(w1.T.copy(), threads=2))
    flat = np.zeros(70 * 270 + 16, np.float32)  # x and out 16 floats apart in one buffer
    with pytest.raises(SparsebenchError, match="the input itself or not overlap it"):
        square.bind(flat[:70 * 270].reshape(70, 270), flat[16:].reshape(70, 270))
    for rows in (7, 130):  # in place: the plan's buffer reuse
        xin = np.tile(x, (2, 1))[:rows].copy()
        want = square.ops[1].run(a.run(xin))
        square.bind(xin, xin)()
        np.testing.assert_allclose(xin, want, rtol=1e-5, atol=1e-5)
    for rows in (1, 7, 70, 130):  # the row path, then the K-panel path (AVX-512)
        out = np.full((rows, 33), np.nan, np.float32)
        chain.bind(x[:rows].copy() if rows <= 70 else np.tile(x, (2, 1))[:rows], out)()
        xin = x[:rows] if rows <= 70 else np.tile(x, (2, 1))[:rows]
        np.testing.assert_allclose(out, b.run(a.run(xin)), rtol=1e-5, atol=1e-5)


@needs_kernels
def test_per_sample_execution_matches_the_batch_plan() -> None:
    """A CNN at batch > 1 may run its batch-1 plan once per sample (chosen by timing both at
    prepare time): forced either way, the outputs and the per-layer steps agree."""
    from sparsebench.backends import get_backend
    from sparsebench.measure.timing import time_steps

    m = model("resnet18")
    prepared = get_backend("native").prepare(converted("resnet18", "csr"), batch=3)
    assert re.search(r"-t1(-per-sample)?(\+|$)", prepared.impl)  # marker before any +part
    x = torch.randn(3, *m.input_shape)
    with torch.no_grad():
        want = m(x)
    prepared._build(1)
    prepared._build(3)
    for per_sample in (set(), {3}):
        prepared._per_sample = per_sample
        assert rel_err(prepared.run(x), want) <= 1e-4
        names, steps, reset = prepared.steps(x)
        assert len(names) == len(steps) == len(prepared._names[1])
        assert sum(time_steps(names, steps, reset).values()) > 0


@needs_kernels
@pytest.mark.parametrize("batch", [2, 5])
def test_sample_parallel_execution_matches_the_batch_plan(batch: int) -> None:
    """With 2 threads a CNN's batch may instead run on two 1-thread batch-1 plans at once, each
    taking a contiguous share of the samples (chosen by timing at prepare time, named in the
    impl): forced, the output matches torch sample for sample, twice in a row."""
    from sparsebench.backends import get_backend

    m = model("resnet18")
    prepared = get_backend("native").prepare(converted("resnet18", "csr"), threads=2,
                                             batch=batch)
    assert re.search(r"-t2(-per-sample|-sample-parallel)?(\+|$)", prepared.impl)
    x = torch.randn(batch, *m.input_shape)
    with torch.no_grad():
        want = m(x)
    if not prepared._lanes:  # the timing chose another mode: force this one
        prepared._lanes = [type(prepared)(prepared.converted, prepared.graph, 1, 1,
                                          prepared.label) for _ in range(2)]
        prepared._per_sample = {batch}
    assert len(prepared._lanes) == 2
    for _ in range(2):
        got = prepared.run(x)
        assert got.shape == want.shape
        assert rel_err(got, want) <= 1e-4


@needs_kernels
@pytest.mark.parametrize("threads", [1, 2])
def test_samples_that_are_not_independent_keep_the_batch_plan(
        threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-sample execution is chosen only when it gives the batch plan's output: a model that
    mixes its samples (each output minus the batch mean) keeps the batch plan even when the
    per-sample modes time faster (the clock is rigged: the batch plan, timed first, is slowest)."""
    from sparsebench.backends import get_backend, kernel_plan

    times = itertools.cycle([1.0, 0.5, 0.25][:threads + 1])  # batch, per-sample, lanes
    monkeypatch.setattr(kernel_plan, "fastest_seconds", lambda fn, reps=5: next(times))

    class BatchMix(nn.Module):
        input_shape = (16,)

        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(16, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.fc(x)
            return y - y.mean(0, keepdim=True)

    m = BatchMix().eval()
    prepared = get_backend("native").prepare(convert(m, "csr"), threads=threads, batch=4)
    assert "per-sample" not in prepared.impl and "sample-parallel" not in prepared.impl
    assert prepared._per_sample == set() and prepared._lanes == []
    x = torch.randn(4, 16)
    with torch.no_grad():
        want = m(x)
    assert float(want.abs().max()) > 0.1  # the per-sample answer (all zeros) would differ
    assert rel_err(prepared.run(x), want) <= 1e-4


class _ProjectionBlock(nn.Module):
    """A stem, a max-pool, then a ResNet-50 bottleneck: 1x1, 3x3 (stride 1 or 2), 1x1, and a
    1x1 projection shortcut of the same stride added before the final ReLU; ``tap`` also
    returns the shortcut (a second reader of its output)."""

    input_shape = (3, 16, 16)

    def __init__(self, tap: bool = False, stride: int = 1, pool: bool = True,
                 size: int = 16) -> None:
        super().__init__()
        self.tap, self.input_shape = tap, (3, size, size)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.a, self.b = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 4, 3, stride, padding=1)
        self.c, self.proj = nn.Conv2d(4, 16, 1), nn.Conv2d(8, 16, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.pool(torch.relu(self.stem(x)))
        h = torch.relu(self.b(torch.relu(self.a(x0))))
        short = self.proj(x0)
        y = torch.relu(self.c(h) + short)
        return y + short if self.tap else y


@needs_kernels
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("stride", [1, 2])
def test_projection_shortcut_is_merged_into_the_block_conv(threads: int, stride: int) -> None:
    """At batch 1 the shortcut and the block's last 1x1 become one conv on one buffer holding
    both inputs as channel slices (a stride-2 shortcut's input subsampled into it first; no
    shortcut output stored); every layer still counts as native; outputs match the dense
    module at batch 1 and in a batched plan (no merge); with a second reader of the shortcut,
    or with the switch off, the two convs stay apart."""
    from sparsebench.backends import get_backend, kernel_plan

    torch.manual_seed(0)
    m = _ProjectionBlock(stride=stride).eval()
    magnitude_prune(m, 0.5)
    x = torch.randn(1, 3, 16, 16)
    with torch.inference_mode():
        want = m(x)
    prepared = get_backend("native").prepare(convert(m, "csr"), threads=threads, batch=1)
    assert rel_err(prepared.run(x), want) <= 1e-5
    names = prepared._names[1]  # (fx order makes proj the conv that takes the add)
    merged = [n for n in names if set(n.split("+")) >= {"c", "proj"}]
    assert merged == ["proj+c+relu"], names
    assert names[3:] == (["proj+c+relu"] if stride == 1 else ["subsample", "proj+c+relu"])
    assert prepared._native_layers >= {"c", "proj"}
    xs = torch.randn(4, 3, 16, 16)
    with torch.inference_mode():
        want4 = m(xs)
    batched = get_backend("native").prepare(convert(m, "csr"), threads=threads, batch=4)
    assert rel_err(batched.run(xs), want4) <= 1e-5
    tapped = _ProjectionBlock(tap=True, stride=stride).eval()
    tapped.load_state_dict(m.state_dict())
    with torch.inference_mode():
        want_t = tapped(x)
    kept = get_backend("native").prepare(convert(tapped, "csr"), threads=threads, batch=1)
    assert rel_err(kept.run(x), want_t) <= 1e-5
    assert "proj" in kept._names[1] and "subsample" not in kept._names[1], kept._names[1]
    kernel_plan.MERGE_PROJECTIONS = False
    try:
        off = get_backend("native").prepare(convert(m, "csr"), threads=threads, batch=1)
    finally:
        kernel_plan.MERGE_PROJECTIONS = True
    assert "c" in off._names[1] and "proj+residual+relu" in off._names[1], off._names[1]
    assert rel_err(off.run(x), want) <= 1e-5


@needs_kernels
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("size, written", [(16, True), (20, False)])
def test_strided_shortcut_input_is_subsampled_by_its_producer(threads: int, size: int,
                                                              written: bool) -> None:
    """A stride-2 shortcut's subsampled input is written by the conv that makes it, from its
    registers, when that conv's plan writes its output directly (16 wide: kx-copy rows of
    pitch Wo); else (20 wide: padded rows) by a subsample step after it. Either way the
    output matches the dense module, and the switch off gives the separate step."""
    from sparsebench.backends import get_backend, kernel_plan

    torch.manual_seed(1)
    m = _ProjectionBlock(stride=2, pool=False, size=size).eval()
    magnitude_prune(m, 0.5)
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        want = m(x)
    prepared = get_backend("native").prepare(convert(m, "csr"), threads=threads, batch=1)
    assert rel_err(prepared.run(x), want) <= 1e-5
    names = prepared._names[1]
    assert names[:2] == (["stem+relu+subsample", "a+relu"] if written
                         else ["stem+relu", "subsample"]), names
    assert names[-1] == "proj+c+relu", names
    kernel_plan.SUBSAMPLE_IN_PRODUCER = False
    try:
        off = get_backend("native").prepare(convert(m, "csr"), threads=threads, batch=1)
    finally:
        kernel_plan.SUBSAMPLE_IN_PRODUCER = True
    assert off._names[1][:2] == ["stem+relu", "a+relu"] and "subsample" in off._names[1]
    assert rel_err(off.run(x), want) <= 1e-5
    # bytes moved: the written subsample is one more output of the conv; the step also reads
    # the conv's whole output (1 x 8 x size x size floats) again
    stem_out = 8 * size * size * 4
    assert off.traffic_bytes - prepared.traffic_bytes == (stem_out if written else 0)


@needs_kernels
def test_native_plan_run_holds_the_pool_on_two_threads() -> None:
    """A plan's run() holds the pool while its steps run (2 threads), and releases it after."""
    from sparsebench.backends.kernel_plan import NativeBackend

    lib = native.load()
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    seen = []
    for threads in (1, 2):
        x = torch.randn(4, 64)
        prepared = NativeBackend().prepare(convert(model, "csr", example=x), threads=threads)
        prepared.run(x)
        feeds, calls, out, env = prepared._plans[4]
        prepared._plans[4] = (feeds, (*calls, lambda: seen.append(lib.sb_pool_hold(0))), out, env)
        prepared.run(x)
        assert lib.sb_pool_hold(0) == 0
    assert seen == [0, 1]
