"""Backends: every supported (format, backend, arch) matches the dense torch reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conftest import prune_units, randomize_bn
from sparsebench.archs import small_model
from sparsebench.backends import BACKENDS, Backend, Unsupported, get_backend
from sparsebench.backends.onnxrt import export_onnx, onnx_sizes, session, sparse_onnx
from sparsebench.errors import SparsebenchError
from sparsebench.formats import FORMATS, convert

BACKEND_NAMES = ["torch", "torch-sparse", "scipy", "onnxruntime"]
FORMAT_NAMES = ["dense", "structured", "csr", "bsr", "bsr-1x4"]
BATCH = 2


def prune(model: nn.Module, seed: int) -> None:
    """Random BatchNorm statistics, filter pruning (unit, bias, BN weight/bias, out_mask) plus
    ~70% weight pruning (``conftest``)."""
    randomize_bn(model, seed)
    prune_units(model, torch.Generator().manual_seed(seed))


_CACHE: dict[str, tuple] = {}


def case(arch: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """(pruned model, input batch, dense torch reference output), built once per arch."""
    if arch not in _CACHE:
        torch.manual_seed(0)
        model = small_model(arch).eval()
        prune(model, 0)
        x = torch.randn(BATCH, *model.input_shape, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            _CACHE[arch] = (model, x, model(x))
    return _CACHE[arch]


_CONVERTED: dict[tuple[str, str], object] = {}


def converted_case(arch: str, fmt: str):
    """The converted model, shared by every backend (backends never modify it)."""
    if (arch, fmt) not in _CONVERTED:
        _CONVERTED[arch, fmt] = convert(case(arch)[0], fmt)
    return _CONVERTED[arch, fmt]


def expected_impl(backend: str, fmt: str, threads: int) -> str:
    if backend == "torch":
        return "torch-eager"
    if backend == "onnxruntime":
        return f"ort-cpu-{fmt}"
    sparse = "csr" if fmt == "csr" else "bsr-4x4" if fmt == "bsr" else fmt
    if backend == "torch-sparse":
        return f"torch-sparse-{sparse}-i32"
    return f"scipy-{sparse}-i32" + ("-t1" if threads > 1 else "")


def assert_close(y: torch.Tensor, ref: torch.Tensor) -> None:
    assert y.dtype == torch.float32 and y.shape == ref.shape
    err, scale = float((y - ref).abs().max()), float(ref.abs().max()) or 1.0
    assert err <= 1e-4 * scale, f"max error {err} vs max |y| {scale}"


def supported_pairs() -> list[tuple[str, str]]:
    return [(f, b) for b in BACKEND_NAMES for f in FORMAT_NAMES if get_backend(b).supports(f)]


# resnet18 once per backend (its most interesting format), the rest over every supported pair
RUNS = [(a, f, b) for a in ("lenet5", "lenet300", "ffn", "vgg11_bn") for f, b in supported_pairs()]
RUNS += [("resnet18", "structured", "torch"), ("resnet18", "structured", "onnxruntime"),
         ("resnet18", "bsr", "torch-sparse"), ("resnet18", "csr", "scipy")]


def test_registry_and_availability() -> None:
    assert set(BACKEND_NAMES) <= set(BACKENDS.names())
    for name in BACKEND_NAMES:
        backend = get_backend(name)
        assert isinstance(backend, Backend) and backend.name == name
        assert backend.unavailable() is None
        assert set(backend.formats) <= set(FORMATS.names())
    assert get_backend("torch").formats == ("dense", "structured")
    assert {"csr", "bsr", "bsr-8x8"} <= set(get_backend("scipy").formats)


@pytest.mark.parametrize("arch, fmt, backend", RUNS)
def test_matches_dense_reference(arch: str, fmt: str, backend: str) -> None:
    model, x, ref = case(arch)
    converted = converted_case(arch, fmt)
    threads = 2 if backend == "scipy" else 1
    be = get_backend(backend)
    if (backend, fmt) == ("torch-sparse", "bsr-1x4"):
        with pytest.raises(Unsupported, match="non-square"):
            be.prepare(converted, threads=threads, batch=BATCH)
        return
    prepared = be.prepare(converted, threads=threads, batch=BATCH)
    assert prepared.impl == expected_impl(backend, fmt, threads)
    assert_close(prepared.run(x), ref)
    if arch not in ("resnet18", "vgg11_bn"):
        assert_close(prepared.run(x[:1]), ref[:1])  # other batch sizes run too


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_unsupported_formats_raise(backend: str) -> None:
    be = get_backend(backend)
    unsupported = [f for f in FORMATS.names() if not be.supports(f)]
    assert unsupported
    for fmt in unsupported:
        with pytest.raises(Unsupported, match=f"does not execute format {fmt}"):
            be.prepare(converted_case("lenet300", fmt), threads=1, batch=1)


def test_bad_threads_is_a_user_error() -> None:
    converted = converted_case("lenet300", "dense")
    with pytest.raises(SparsebenchError, match="threads and batch must be >= 1"):
        get_backend("torch").prepare(converted, threads=0, batch=1)


def test_torch_threads_applied() -> None:
    converted = converted_case("lenet300", "dense")
    before = torch.get_num_threads()
    try:
        prepared = get_backend("torch").prepare(converted, threads=1, batch=1)
        torch.set_num_threads(2)
        prepared.run(case("lenet300")[1])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_int16_payload_runs_widened() -> None:
    model, x, ref = case("lenet300")
    converted = converted_case("lenet300", "csr")
    assert converted.layers["fc1"].indices.dtype == np.int16
    for backend, impl in (("torch-sparse", "torch-sparse-csr-i32"), ("scipy", "scipy-csr-i32")):
        prepared = get_backend(backend).prepare(converted, threads=1, batch=BATCH)
        assert prepared.impl == impl
        assert_close(prepared.run(x), ref)


def test_padded_bsr_and_empty_layers() -> None:
    """Odd shapes (BSR padding), a 100%-pruned layer, empty rows, a bias-free conv."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=False), nn.ReLU(),
                          nn.Conv2d(5, 7, 2, dilation=2), nn.Flatten(), nn.Linear(63, 6),
                          nn.Linear(6, 3)).eval()
    with torch.no_grad():
        model[0].weight[1] = 0
        model[4].weight.zero_()
    x = torch.randn(2, 3, 9, 9)
    with torch.inference_mode():
        ref = model(x)
    for fmt, backend in (("csr", "torch-sparse"), ("csr", "scipy"), ("bsr", "torch-sparse"),
                         ("bsr", "scipy"), ("bsr-16x1", "scipy"), ("structured", "torch"),
                         ("dense", "onnxruntime")):
        converted = convert(model, fmt, example=x)
        prepared = get_backend(backend).prepare(converted, threads=1, batch=2)
        assert_close(prepared.run(x), ref)


def test_onnxruntime_session_options() -> None:
    converted = converted_case("lenet5", "structured")
    prepared = get_backend("onnxruntime").prepare(converted, threads=2, batch=4)
    opts = prepared.session.get_session_options()
    assert opts.intra_op_num_threads == 2
    assert opts.inter_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert "ENABLE_ALL" in str(opts.graph_optimization_level)
    assert prepared.session.get_providers() == ["CPUExecutionProvider"]


def test_onnx_sizes_with_sparse_initializers() -> None:
    model, x, ref = case("lenet300")
    converted = converted_case("lenet300", "dense")
    sizes = onnx_sizes(converted)
    assert sizes["sparse_initializers"] == 2  # fc1, fc2; the unpruned fc3 has no zeros
    # 80% zeros: 12 bytes (float32 value + int64 index) per nonzero beat 4 bytes per entry
    assert 0 < sizes["sparse"] < sizes["dense"]
    sparse, moved = sparse_onnx(export_onnx(converted.module, converted.input_shape))
    assert moved == 2 and len(sparse) == sizes["sparse"]
    out = session(sparse, 1).run(None, {"input": x.numpy()})[0]  # ORT densifies at load
    assert_close(torch.from_numpy(out), ref)
