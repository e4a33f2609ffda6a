"""Formats: every format computes the masked model's function, with exact byte counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from conftest import prune_units, randomize_bn
from sparsebench.archs import ARCHS, create_model, list_archs, prunable_layers, small_model
from sparsebench.errors import SparsebenchError, UnknownNameError
from sparsebench.formats import FORMATS, convert, has_nonfinite
from sparsebench.formats.base import bsr_nbytes, csr_nbytes, dense_nbytes
from sparsebench.formats.sparse import to_bsr, to_csr

SEQUENTIAL = ["lenet300", "lenet5", "vgg11_bn", "ffn"]
TEST_FORMATS = ["dense", "structured", "csr", "bsr", "bsr-1x4", "bsr-16x1"]


def prune(model: nn.Module, seed: int = 0, unit_frac: float = 0.3, weight_frac: float = 0.7,
          full: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """``conftest.prune_units`` after non-trivial BatchNorm statistics, from one seed."""
    gen = torch.Generator().manual_seed(seed)
    randomize_bn(model, gen)
    return prune_units(model, gen, unit_frac, weight_frac, full)


def pruned_model(arch: str, seed: int = 0, **kw: object) -> tuple[nn.Module, dict]:
    torch.manual_seed(seed)
    model = small_model(arch).eval()
    return model, prune(model, seed, **kw)  # type: ignore[arg-type]


def nonzero_params(model: nn.Module) -> int:
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


def assert_close(y: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-4) -> None:
    scale = float(ref.abs().max()) or 1.0
    err = float((y - ref).abs().max())
    assert err <= rtol * scale, f"max error {err} vs max |y| {scale}"


@pytest.fixture(scope="module")
def pruned_models() -> dict[str, tuple[nn.Module, dict, torch.Tensor, torch.Tensor]]:
    out = {}
    for arch in list_archs():
        model, dead = pruned_model(arch)
        x = torch.randn(2, *model.input_shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            out[arch] = (model, dead, x, model(x))
    return out


@pytest.fixture(scope="module")
def converted_cases(pruned_models) -> dict:
    """Lazily converted pruned models, shared between tests: {(arch, fmt): ConvertedModel}."""
    class Cache(dict):
        def __missing__(self, key: tuple[str, str]) -> object:
            self[key] = convert(pruned_models[key[0]][0], key[1])
            return self[key]

    return Cache()


def test_every_arch_is_covered() -> None:
    assert all("small" in ARCHS.meta(a) and "input" in ARCHS.meta(a) for a in list_archs())
    assert {"dense", "structured", "csr", "bsr"} <= set(FORMATS.names())


# the large convnets skip the odd block shapes (covered on the small archs) to save time
MATCH_CASES = [(a, f) for a in ARCHS.names() for f in TEST_FORMATS
               if a not in ("resnet18", "vgg11_bn") or f in ("dense", "structured", "csr", "bsr")]


@pytest.mark.parametrize("arch, fmt", MATCH_CASES)
def test_format_matches_masked_model(pruned_models, converted_cases, arch: str,
                                    fmt: str) -> None:
    model, _, x, ref = pruned_models[arch]
    converted = converted_cases[arch, fmt]
    with torch.no_grad():
        assert_close(converted.module(x), ref)
    assert converted.format == fmt and converted.input_shape == tuple(model.input_shape)
    weights = {n: m for n, m in converted.module.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert [s.name for s in converted.storage] == list(weights)
    for name, sw in converted.layers.items():  # the payload is the module's weight, exactly
        w = weights[name].weight.detach().reshape(sw.shape[0], -1).numpy()
        np.testing.assert_array_equal(sw.to_dense(), w)
        assert sw.nbytes == next(s.nbytes for s in converted.storage if s.name == name)
    if fmt not in ("dense", "structured"):
        assert set(converted.layers) == set(weights) and converted.dense_layers == []
    for row in converted.storage:
        assert row.sparse_macs <= row.dense_macs
        assert row.nnz == int(torch.count_nonzero(weights[row.name].weight))


@pytest.mark.parametrize("arch", SEQUENTIAL)
def test_structured_removes_exactly_the_pruned_units(pruned_models, converted_cases,
                                                     arch: str) -> None:
    model, dead, _, _ = pruned_models[arch]
    converted = converted_cases[arch, "structured"]
    rows = {s.name: s for s in converted.storage}
    layers = {p.name: p for p in prunable_layers(model)}
    fed_by_dead = 0  # consumer weights that only ever multiplied a removed unit's zero output
    for name, idx in dead.items():
        units = model.get_submodule(name).weight.shape[0]
        assert rows[name].shape[0] == units - len(idx)
        assert rows[name].note.startswith(f"compacted {units} -> {units - len(idx)} units")
        consumer = model.get_submodule(layers[name].consumer)
        cw = consumer.weight.detach()
        cols = cw.reshape(cw.shape[0], units, -1)[:, idx]
        fed_by_dead += int(torch.count_nonzero(cols))
    assert nonzero_params(converted.module) == nonzero_params(model) - fed_by_dead
    assert converted.weight_bytes < converted_cases[arch, "dense"].weight_bytes


def test_structured_nonzero_count_equal_when_consumer_columns_are_zero() -> None:
    model, dead = pruned_model("lenet300")
    with torch.no_grad():
        model.fc2.weight[:, dead["fc1"]] = 0
        model.fc3.weight[:, dead["fc2"]] = 0
    converted = convert(model, "structured")
    assert nonzero_params(converted.module) == nonzero_params(model)
    assert converted.module.fc1.out_features == 300 - len(dead["fc1"])
    assert converted.module.fc2.in_features == 300 - len(dead["fc1"])


def test_structured_resnet_keeps_residual_outputs(pruned_models, converted_cases) -> None:
    model, dead, _, _ = pruned_models["resnet18"]
    converted = converted_cases["resnet18", "structured"]
    rows = {s.name: s for s in converted.storage}
    assert rows["layer1.0.conv1"].shape[0] == 64 - len(dead["layer1.0.conv1"])
    assert rows["layer1.0.conv2"].shape[0] == 64
    assert "residual stream" in rows["layer1.0.conv2"].note
    assert ("layer1.0.conv2", rows["layer1.0.conv2"].note) in converted.dense_layers
    assert converted.module.layer1[0].conv2.in_channels == rows["layer1.0.conv1"].shape[0]


def test_structured_keeps_units_with_constant_output() -> None:
    """Zero weights but nonzero bias / BN shift: the unit outputs a constant; never removed."""
    torch.manual_seed(0)
    model = create_model("lenet300").eval()
    vgg = small_model("vgg11_bn").eval()
    randomize_bn(vgg, torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.fc1.weight[:5] = 0
        model.fc1.bias[:5] = 0.5
        model.fc1.bias[5:] = 0
        model.fc1.weight[5:10] = 0  # truly dead
        vgg.features[0].weight[:3] = 0
        vgg.features[0].bias[:3] = 0  # BN shift stays: constant nonzero output
    for m, first, kept in ((model, "fc1", 295), (vgg, "features.0", 64)):
        x = torch.randn(2, *m.input_shape)
        converted = convert(m, "structured")
        with torch.no_grad():
            assert_close(converted.module(x), m(x))
        row = next(s for s in converted.storage if s.name == first)
        assert row.shape[0] == kept
        assert "constant nonzero output" in row.note


@pytest.mark.parametrize("fmt", TEST_FORMATS)
def test_fully_pruned_layer_in_every_format(fmt: str) -> None:
    model, _ = pruned_model("lenet300", full=("fc2",))
    x = torch.randn(3, *model.input_shape)
    converted = convert(model, fmt)
    with torch.no_grad():
        assert_close(converted.module(x), model(x))
    row = next(s for s in converted.storage if s.name == "fc2")
    assert row.nnz == 0 and row.sparse_macs == 0
    if fmt == "structured":
        assert row.shape == (1, 300 - 90) and "all pruned" in row.note
    elif fmt == "csr":
        assert row.nbytes == 4 * 101 + 4 * 100  # indptr and the (zero, still stored) bias
        assert converted.layers["fc2"].values.size == 0


def test_fully_pruned_csr_and_bsr_bytes() -> None:
    model = nn.Sequential(nn.Linear(10, 6, bias=False))
    nn.init.zeros_(model[0].weight)
    x = torch.zeros(1, 10)
    csr = convert(model, "csr", example=x)
    assert csr.storage[0].nbytes == 4 * 7 and csr.layers["0"].values.size == 0
    bsr = convert(model, "bsr", example=x)  # 6x10 padded to 8x12: 2 block rows, 0 blocks
    assert bsr.storage[0].nbytes == 4 * 3 and bsr.layers["0"].padded_shape == (8, 12)
    np.testing.assert_array_equal(bsr.layers["0"].to_dense(), np.zeros((6, 10), np.float32))


def hand_linear() -> nn.Sequential:
    lin = nn.Linear(6, 4)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1., 0, 0, 2, 0, 0],
                                       [0., 0, 0, 0, 0, 0],  # empty row
                                       [0., 3, 0, 0, 0, 4],
                                       [5., 6, 7, 0, 0, 0]]))
        lin.bias.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    return nn.Sequential(lin)


@pytest.mark.parametrize("fmt, kwargs, expected, stored_as", [
    ("dense", {}, 112, "dense"),                            # 4*24 + 4*4
    ("structured", {}, 112, "dense"),                       # no prunable consumer: unchanged
    ("csr", {}, 78, "csr-i16"),                             # 4*7 + 2*7 + 4*5 + 4*4
    ("csr", {"index_dtype": "int32"}, 92, "csr-i32"),       # 4*7 + 4*7 + 4*5 + 4*4
    ("bsr", {"block": (2, 2)}, 128, "bsr-2x2"),             # 5 blocks: 4*5*4 + 4*5 + 4*3 + 16
    ("bsr", {}, 160, "bsr-4x4"),                            # 4x8 padded, 2 blocks: 128+8+8+16
    ("bsr-8x8", {}, 284, "bsr-8x8"),                        # 8x8 padded, 1 block: 256+4+8+16
    ("bsr", {"block": (2, 2), "index_dtype": "int16"}, 118, "bsr-2x2-i16"),  # 80+10+12+16
    ("bsr-1x4", {}, 116, "bsr-1x4"),                        # 4x8, 4 blocks: 64+16+20+16
])
def test_exact_bytes_linear(fmt: str, kwargs: dict, expected: int, stored_as: str) -> None:
    converted = convert(hand_linear(), fmt, example=torch.zeros(1, 6), **kwargs)
    (row,) = converted.storage
    assert (row.nbytes, row.format, row.nnz, row.numel) == (expected, stored_as, 7, 24)
    assert (row.dense_macs, row.sparse_macs) == (24, 7)
    assert converted.weight_bytes == expected
    if converted.layers:
        assert converted.layers["0"].nbytes == expected


def test_exact_bytes_conv_and_other_buffers() -> None:
    conv = nn.Conv2d(2, 3, 2, bias=False)
    w = torch.zeros(3, 2, 2, 2)
    w[0, 0, 0, 0], w[0, 1, 1, 1], w[2, 0, 1, 0], w[2, 1, 0, 1], w[2, 1, 1, 1] = 1, 2, 3, 4, 5
    with torch.no_grad():
        conv.weight.copy_(w)  # 5 nonzeros, row 1 empty; flattened 3 x 8
    model = nn.Sequential(conv, nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 4))
    model.eval()
    x = torch.zeros(1, 2, 5, 5)  # 4x4 output positions
    bn_bytes = 4 * 3 * 4 + 8  # weight, bias, running mean/var + int64 num_batches_tracked
    lin_dense = 4 * 192 + 4 * 4
    dense = convert(model, "dense", example=x)
    assert [s.nbytes for s in dense.storage] == [96, lin_dense]
    assert dense.weight_bytes == 96 + lin_dense + bn_bytes
    assert (dense.storage[0].dense_macs, dense.storage[0].sparse_macs) == (3 * 8 * 16, 5 * 16)
    csr = convert(model, "csr", example=x)
    assert csr.storage[0].nbytes == 4 * 5 + 2 * 5 + 4 * 4 == 46
    assert csr.storage[1].nbytes == 4 * 192 + 2 * 192 + 4 * 5 + 4 * 4
    assert csr.weight_bytes == 46 + csr.storage[1].nbytes + bn_bytes
    sw = csr.layers["0"]
    assert (sw.in_channels, sw.out_channels, sw.kernel_size, sw.groups) == (2, 3, (2, 2), 1)
    assert sw.indices.tolist() == [0, 7, 2, 5, 7]  # c*kh*kw + ky*kw + kx
    assert sw.indptr.tolist() == [0, 2, 2, 5]
    bsr = convert(model, "bsr", example=x)  # 3x8 -> 4x8: 1 block row, 2 blocks
    assert bsr.storage[0].nbytes == 4 * 2 * 16 + 4 * 2 + 4 * 2 == 144
    assert "padded to 4x8" in bsr.storage[0].note


def test_formula_helpers() -> None:
    assert dense_nbytes(24, 4) == 112
    assert csr_nbytes(7, 4, 2, 4) == 78
    assert bsr_nbytes(5, (2, 2), 2, 4, 4) == 128


def test_grouped_conv_kept_dense() -> None:
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(4, 2)).eval()
    x = torch.randn(2, 4, 3, 3)
    converted = convert(model, "csr", example=x)
    assert list(converted.layers) == ["2"]
    assert converted.dense_layers == [("0", "kept dense: grouped conv (groups=2) not supported")]
    assert converted.storage[0].format == "dense"


def test_index_dtype_choice() -> None:
    x16, x32 = torch.zeros(1, 32767), torch.zeros(1, 32768)
    small = nn.Sequential(nn.Linear(32767, 2))
    big = nn.Sequential(nn.Linear(32768, 2))
    assert convert(small, "csr", example=x16).layers["0"].indices.dtype == np.int16
    assert convert(big, "csr", example=x32).layers["0"].indices.dtype == np.int32
    assert convert(small, "csr", index_dtype="int32", example=x16).storage[0].format == "csr-i32"
    with pytest.raises(SparsebenchError, match="int16 indices cannot address"):
        convert(big, "csr", index_dtype="int16", example=x32)
    assert convert(big, "bsr", example=x32).layers["0"].indices.dtype == np.int32


def test_bad_options() -> None:
    model = hand_linear()
    x = torch.zeros(1, 6)
    with pytest.raises(UnknownNameError, match="unknown format 'coo'"):
        convert(model, "coo", example=x)
    with pytest.raises(SparsebenchError, match="unknown index dtype"):
        convert(model, "csr", index_dtype="int8", example=x)
    with pytest.raises(SparsebenchError, match="fixes the block"):
        convert(model, "bsr-8x8", block=(4, 4), example=x)
    with pytest.raises(SparsebenchError, match="bsr formats only"):
        convert(model, "csr", block=(4, 4), example=x)
    with pytest.raises(SparsebenchError, match="block sizes must be positive"):
        convert(model, "bsr", block=(0, 4), example=x)
    with pytest.raises(SparsebenchError, match="no input_shape"):
        convert(model, "dense")
    with pytest.raises(SparsebenchError, match="does not run on an input"):
        convert(model, "dense", example=torch.zeros(1, 5))


def test_nonfinite_weights_still_convert() -> None:
    model = hand_linear()
    with torch.no_grad():
        model[0].weight[1, 2] = float("nan")
        model[0].weight[3, 5] = float("inf")
    assert has_nonfinite(model) == ["0"]
    assert has_nonfinite(create_model("lenet300")) == []
    x = torch.zeros(1, 6)
    for fmt in ("dense", "structured", "csr", "bsr"):
        converted = convert(model, fmt, example=x)
        assert converted.storage[0].nnz == 9
    sw = convert(model, "csr", example=x).layers["0"]
    np.testing.assert_array_equal(sw.to_dense(), model[0].weight.detach().numpy())


def test_structured_keeps_units_feeding_nonfinite_weights() -> None:
    """Removing a zero unit would turn NaN * 0 = NaN into a finite output: it is kept."""
    model = create_model("lenet300").eval()
    with torch.no_grad():
        model.fc1.weight[:3] = 0
        model.fc1.bias[:3] = 0
        model.fc2.weight[0, 1] = float("nan")
    converted = convert(model, "structured")
    assert converted.module.fc1.out_features == 298
    assert bool(torch.isnan(converted.module(torch.randn(2, 1, 28, 28))).any())


@st.composite
def sparse_matrices(draw: st.DrawFn) -> np.ndarray:
    rows, cols = draw(st.integers(1, 17)), draw(st.integers(1, 23))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w[rng.random((rows, cols)) < draw(st.sampled_from([0.0, 0.5, 0.9, 1.0]))] = 0
    w[rng.random(rows) < 0.3] = 0     # all-zero rows
    w[:, rng.random(cols) < 0.3] = 0  # all-zero cols
    if draw(st.booleans()):
        w[rng.integers(rows), rng.integers(cols)] = draw(st.sampled_from([np.nan, np.inf]))
    return w


@settings(max_examples=60, deadline=None)
@given(w=sparse_matrices(), r=st.integers(1, 5), c=st.integers(1, 5),
       idx=st.sampled_from(["auto", "int16", "int32"]))
def test_round_trip(w: np.ndarray, r: int, c: int, idx: str) -> None:
    rows, cols = w.shape
    nnz = int(np.count_nonzero(w))
    csr = to_csr(w, idx)
    np.testing.assert_array_equal(csr.to_dense(), w)
    idx_bytes = 4 if idx == "int32" else 2
    assert csr.nnz == nnz and csr.nbytes == csr_nbytes(nnz, rows, idx_bytes)
    assert csr.indptr.dtype == np.int32 and csr.indptr[-1] == nnz
    bsr = to_bsr(w, (r, c), idx)
    np.testing.assert_array_equal(bsr.to_dense(), w)
    prow, pcol = bsr.padded_shape
    assert prow % r == 0 and pcol % c == 0 and prow - rows < r and pcol - cols < c
    idx_bytes = 2 if idx == "int16" else 4
    assert bsr.nbytes == bsr_nbytes(bsr.nblocks, (r, c), prow // r, idx_bytes)
    padded = np.zeros((prow, pcol), np.float32)
    padded[:rows, :cols] = w
    occupied = (padded.reshape(prow // r, r, pcol // c, c) != 0).any(axis=(1, 3))
    assert bsr.nblocks == int(occupied.sum())
