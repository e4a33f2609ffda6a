"""Per-op checks of the ONNX importer: tiny graphs built with onnx.helper, run by ``to_torch``
and by onnxruntime on the same bytes (exact for integers and booleans, 1e-5 for floats), at the
opsets where an op's attributes moved to inputs or its semantics changed."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from sparsebench.graph.onnx_torch import SUPPORTED, Unsupported, to_torch  # noqa: E402

RNG = np.random.default_rng(0)


def f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def pos(*shape: int) -> np.ndarray:
    return (RNG.random(shape) + 0.1).astype(np.float32)


def i64(*v: int) -> np.ndarray:
    return np.array(v, dtype=np.int64)


def ints(*shape: int, lo: int = -5, hi: int = 6, dtype: Any = np.int64) -> np.ndarray:
    return RNG.integers(lo, hi, shape).astype(dtype)


def model_of(op: str, inputs: dict[str, np.ndarray], attrs: dict[str, Any], opset: int,
             consts: dict[str, np.ndarray] | None = None, order: list[str] | None = None,
             n_out: int = 1) -> Any:
    consts = consts or {}
    names = order if order is not None else [*inputs, *consts]
    outs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op, names, outs, name=f"the_{op.lower()}", **attrs)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
         for n, a in inputs.items()],
        [helper.make_empty_tensor_value_info(o) for o in outs],
        [numpy_helper.from_array(a, n) for n, a in consts.items()])
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets,
                              ir_version=helper.find_min_ir_version_for(opsets))
    return onnx.shape_inference.infer_shapes(model)


def run_both(model: Any, inputs: dict[str, np.ndarray]) -> tuple[list[Any], list[Any]]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = sess.run(None, inputs)
    module = to_torch(model)
    with torch.inference_mode():
        got = module(*(torch.from_numpy(a.copy()) for a in inputs.values()))
    got = list(got) if isinstance(got, tuple) else [got]
    return [g.numpy() for g in got], expected


def check(op: str, inputs: dict[str, np.ndarray], attrs: dict[str, Any] | None = None,
          opset: int = 17, consts: dict[str, np.ndarray] | None = None,
          order: list[str] | None = None, n_out: int = 1) -> None:
    model = model_of(op, inputs, attrs or {}, opset, consts, order, n_out)
    got, expected = run_both(model, inputs)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype == e.dtype, (g.shape, g.dtype, e.shape, e.dtype)
        if e.dtype.kind in "biu":
            np.testing.assert_array_equal(g, e)
        else:
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


# --- elementwise ----------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Equal", "Less", "Greater",
                                "LessOrEqual", "GreaterOrEqual", "Max", "Min"])
@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.int64])
def test_binary(op: str, dtype: Any) -> None:
    a, b = ints(2, 3, 4, dtype=dtype), ints(3, 1, dtype=dtype)
    b[b == 0] = 3
    check(op, {"a": a, "b": b}, opset=13)


@pytest.mark.parametrize("opset", [8, 13])
@pytest.mark.parametrize("op", ["Sum", "Mean", "Max", "Min"])
def test_variadic(op: str, opset: int) -> None:
    check(op, {"a": f32(2, 3, 4), "b": f32(3, 4), "c": f32(4)}, opset=opset)


@pytest.mark.parametrize("op", ["And", "Or", "Xor"])
def test_logical(op: str) -> None:
    check(op, {"a": RNG.random((3, 4)) > 0.5, "b": RNG.random((4,)) > 0.5})


def test_not_and_where() -> None:
    check("Not", {"a": RNG.random((3, 4)) > 0.5})
    check("Where", {"c": RNG.random((3, 4)) > 0.5, "a": f32(3, 4), "b": f32(4)})
    check("Where", {"c": RNG.random((2, 4)) > 0.5, "a": ints(2, 4), "b": ints(1, 4)})


def test_pow_and_mod() -> None:
    check("Pow", {"a": pos(3, 4), "b": f32(4)})
    check("Pow", {"a": pos(3, 4)}, consts={"b": np.array(2.0, np.float32)})
    check("Pow", {"a": ints(3, 4, lo=-3, hi=4)}, consts={"b": i64(2)}, opset=15)
    for fmod in (0, 1):
        b = ints(3, 4, lo=1, hi=5) * np.where(RNG.random((3, 4)) > 0.5, 1, -1)
        check("Mod", {"a": ints(3, 4, lo=-20, hi=20), "b": b}, {"fmod": fmod})


@pytest.mark.parametrize("op", ["Neg", "Abs", "Exp", "Floor", "Ceil", "Tanh", "Sigmoid", "Erf",
                                "Sin", "Cos", "Atan", "Sign", "Round", "Softplus", "Softsign",
                                "Relu", "Identity", "Sinh", "Asinh"])
def test_unary(op: str) -> None:
    x = f32(3, 5) * 2
    x[0, :3] = [0.5, -1.5, 2.5]  # Round: halves to even
    check(op, {"x": x}, opset=13)


@pytest.mark.parametrize("op", ["Log", "Sqrt", "Reciprocal"])
def test_unary_positive(op: str) -> None:
    check(op, {"x": pos(3, 5)})


def test_isnan_isinf() -> None:
    x = np.array([1.0, np.nan, np.inf, -np.inf, 0.0], np.float32)
    check("IsNaN", {"x": x})
    for neg, posi in ((1, 1), (0, 1), (1, 0)):
        check("IsInf", {"x": x}, {"detect_negative": neg, "detect_positive": posi}, opset=10)


@pytest.mark.parametrize("op,attrs,opset", [
    ("LeakyRelu", {"alpha": 0.2}, 16), ("Elu", {"alpha": 0.7}, 6), ("Selu", {}, 6),
    ("Celu", {"alpha": 1.3}, 12), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, 6),
    ("HardSwish", {}, 14), ("ThresholdedRelu", {"alpha": 0.3}, 10),
    ("Gelu", {}, 20), ("Gelu", {"approximate": "tanh"}, 20), ("Mish", {}, 18),
    ("Shrink", {"lambd": 0.4, "bias": 0.1}, 9)])
def test_activations(op: str, attrs: dict[str, Any], opset: int) -> None:
    check(op, {"x": f32(2, 3, 4)}, attrs, opset)


def test_prelu() -> None:
    check("PRelu", {"x": f32(2, 3, 4, 4)}, consts={"s": f32(3, 1, 1)}, opset=16)
    check("PRelu", {"x": f32(2, 3, 4), "s": f32(4)}, opset=9)


def test_clip_attrs_and_inputs() -> None:
    check("Clip", {"x": f32(3, 4)}, {"min": -0.5, "max": 0.3}, opset=6)
    check("Clip", {"x": f32(3, 4)}, consts={"lo": np.array(-0.5, np.float32),
                                            "hi": np.array(0.2, np.float32)}, opset=13)
    check("Clip", {"x": f32(3, 4)}, consts={"hi": np.array(0.2, np.float32)}, opset=13,
          order=["x", "", "hi"])
    check("Clip", {"x": ints(3, 4)}, consts={"lo": i64(-2), "hi": i64(3)}, opset=13)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
@pytest.mark.parametrize("opset,axis", [(11, 1), (11, -1), (11, None), (13, 1), (13, None)])
def test_softmax_semantics(op: str, opset: int, axis: int | None) -> None:
    attrs = {} if axis is None else {"axis": axis}
    check(op, {"x": f32(2, 3, 4)}, attrs, opset)


# --- shapes and indexing ------------------------------------------------------------------------

def test_reshape_flatten_transpose() -> None:
    check("Reshape", {"x": f32(2, 3, 4)}, consts={"s": i64(0, -1)}, opset=13)
    check("Reshape", {"x": f32(2, 3, 4)}, consts={"s": i64(4, 0, 2)}, opset=14)
    for axis in (0, 2, -1):
        check("Flatten", {"x": f32(2, 3, 4)}, {"axis": axis}, opset=13)
    check("Transpose", {"x": f32(2, 3, 4)}, {"perm": [1, 2, 0]})
    check("Transpose", {"x": f32(2, 3, 4)})


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_unsqueeze(opset: int) -> None:
    def axes(v: list[int]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return ({"axes": v}, {}) if opset < 13 else ({}, {"axes": i64(*v)})
    a, c = axes([0, -2])
    check("Unsqueeze", {"x": f32(3, 4)}, a, opset, c)
    a, c = axes([1])
    check("Squeeze", {"x": f32(3, 1, 4, 1)}, a, opset, c)
    check("Squeeze", {"x": f32(3, 1, 4, 1)}, opset=opset)


def test_concat_split() -> None:
    check("Concat", {"a": f32(2, 3), "b": f32(2, 5)}, {"axis": -1})
    check("Split", {"x": f32(6, 4)}, {"axis": 0, "split": [2, 4]}, 11, n_out=2)
    check("Split", {"x": f32(6, 4)}, {"axis": 1}, 11, n_out=2)
    check("Split", {"x": f32(6, 4)}, {"axis": 0}, 13, {"s": i64(1, 2, 3)}, n_out=3)
    check("Split", {"x": f32(5, 4)}, {"axis": 0, "num_outputs": 3}, 18, n_out=3)


@pytest.mark.parametrize("opset", [9, 13])
def test_slice(opset: int) -> None:
    x = {"x": f32(5, 6, 7)}
    if opset < 10:
        check("Slice", x, {"starts": [1, -4], "ends": [4, 1000], "axes": [0, 2]}, opset)
        check("Slice", x, {"starts": [0, 1], "ends": [2, -1]}, opset)
        return
    check("Slice", x, opset=opset, consts={"s": i64(1, -4), "e": i64(4, 1 << 62),
                                           "a": i64(0, 2)})
    check("Slice", x, opset=opset, consts={"s": i64(-1, 5), "e": i64(-1000, 0),
                                           "a": i64(1, 2), "st": i64(-2, -1)})
    check("Slice", x, opset=opset, consts={"s": i64(0), "e": i64(6), "a": i64(-2),
                                           "st": i64(2)})


def test_gather_family() -> None:
    check("Gather", {"x": f32(5, 4)}, {"axis": 0}, consts={"i": i64(0, -1, 3)})
    check("Gather", {"x": f32(2, 5, 4)}, {"axis": 1}, consts={"i": np.array([[1, 2], [-1, 0]])})
    check("Gather", {"x": f32(5, 4), "i": ints(2, 3, lo=0, hi=5)})
    check("GatherElements", {"x": f32(3, 4), "i": ints(3, 2, lo=-4, hi=4)}, {"axis": 1})
    check("GatherND", {"x": f32(3, 4, 5), "i": ints(2, 2, lo=0, hi=3)}, opset=13)
    check("GatherND", {"x": f32(3, 4, 5), "i": ints(3, 2, 1, lo=0, hi=4)}, {"batch_dims": 1},
          opset=13)


def test_scatter_family() -> None:
    idx = np.array([[0], [2]], np.int64)
    check("ScatterND", {"x": f32(4, 3), "u": f32(2, 3)}, opset=13, consts={"i": idx},
          order=["x", "i", "u"])
    dup = np.array([[0, 1], [2, 2], [0, 1]], np.int64)
    for red in ("add", "mul"):
        check("ScatterND", {"x": f32(4, 3), "u": f32(3)}, {"reduction": red}, 16, {"i": dup},
              order=["x", "i", "u"])
    check("ScatterElements", {"x": f32(3, 4), "u": f32(3, 2)}, {"axis": 1}, 13,
          {"i": np.array([[0, 3], [1, -1], [2, 0]], np.int64)}, order=["x", "i", "u"])


def test_expand_tile_pad() -> None:
    check("Expand", {"x": f32(3, 1)}, consts={"s": i64(2, 1, 4)})
    check("Expand", {"x": f32(3, 4)}, consts={"s": i64(1, 1)})
    check("Tile", {"x": f32(2, 3)}, consts={"r": i64(2, 3)})
    x = f32(1, 2, 4, 5)
    for mode in ("constant", "reflect", "edge"):
        check("Pad", {"x": x}, {"mode": mode, "pads": [0, 0, 1, 2, 0, 0, 2, 1]}, 10)
        check("Pad", {"x": x}, {"mode": mode}, 13, {"p": i64(0, 0, 1, 2, 0, 0, 2, 1)})
    check("Pad", {"x": x}, {}, 13, {"p": i64(0, 1, -1, 0, 0, 1, 0, -2),
                                    "v": np.array(1.5, np.float32)})
    check("Pad", {"x": x}, {"mode": "reflect"}, 18, {"p": i64(1, 2, 2, 1), "v": np.array(
        0, np.float32), "a": i64(-1, 2)})


def test_shape_size_constant_of_shape_range() -> None:
    x = {"x": f32(2, 3, 4, 5)}
    check("Shape", x)
    check("Shape", x, {"start": 1, "end": -1}, 15)
    check("Shape", x, {"start": -2}, 15)
    check("Size", x)
    value = numpy_helper.from_array(np.array([2.5], np.float32))
    check("ConstantOfShape", {"s": i64(2, 3)}, {"value": value})
    check("ConstantOfShape", {"s": i64(4)}, {"value": numpy_helper.from_array(i64(7))})
    check("Range", {"a": np.array(1, np.int64), "b": np.array(10, np.int64)},
          consts={"d": np.array(3, np.int64)})
    check("Range", {"a": np.array(0.5, np.float32), "b": np.array(2.0, np.float32)},
          consts={"d": np.array(0.3, np.float32)})


def test_trilu_cast_einsum() -> None:
    for upper in (0, 1):
        check("Trilu", {"x": f32(2, 4, 5)}, {"upper": upper}, 14)
        check("Trilu", {"x": f32(4, 5)}, {"upper": upper}, 14, {"k": i64(-1)})
    x = np.array([[-2.7, -0.5, 0.0, 0.5, 1.5, 300.2]], np.float32)
    for to in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.INT32,
               TensorProto.INT64, TensorProto.INT16, TensorProto.BOOL):
        check("Cast", {"x": x}, {"to": to}, 13)
    for to in (TensorProto.UINT8, TensorProto.INT8):
        check("Cast", {"x": x[:, :5]}, {"to": to}, 13)
    for to in (TensorProto.FLOAT, TensorProto.INT32, TensorProto.BOOL, TensorProto.DOUBLE):
        check("Cast", {"x": ints(3, 4)}, {"to": to}, 13)
    check("CastLike", {"x": f32(3), "like": ints(2, dtype=np.int32)}, opset=15)
    check("Einsum", {"a": f32(2, 3, 4), "b": f32(2, 4, 5)}, {"equation": "bij,bjk->bik"}, 12)


def test_misc_indexing() -> None:
    check("CumSum", {"x": f32(3, 4)}, {"exclusive": 1, "reverse": 1}, 14, {"a": i64(1)})
    check("CumSum", {"x": ints(3, 4)}, {}, 14, {"a": np.array(0, np.int64)})
    x = np.array([[1, 3, 3, 0], [2, 2, 1, 2]], np.float32)
    for op in ("ArgMax", "ArgMin"):
        check(op, {"x": x}, {"axis": 1, "keepdims": 0}, 13)
        check(op, {"x": x}, {"axis": 1, "select_last_index": 1}, 13)
    check("TopK", {"x": f32(3, 6)}, {"axis": 1}, 11, {"k": i64(2)}, n_out=2)
    check("TopK", {"x": f32(3, 6)}, {"axis": 0, "largest": 0}, 11, {"k": i64(2)}, n_out=2)
    check("OneHot", {"i": np.array([0, 2, -1, 5], np.int64)}, {"axis": 0}, 11,
          {"d": np.array(4, np.int64), "v": np.array([0.0, 2.0], np.float32)})
    check("NonZero", {"x": np.array([[1, 0, 2], [0, 3, 0]], np.float32)}, opset=13)
    for mode in ("DCR", "CRD"):
        check("DepthToSpace", {"x": f32(1, 8, 2, 3)}, {"blocksize": 2, "mode": mode}, 13)
    check("SpaceToDepth", {"x": f32(1, 2, 4, 6)}, {"blocksize": 2}, 13)


# --- reductions -------------------------------------------------------------------------------

REDUCE = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
          "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp"]


@pytest.mark.parametrize("opset", [11, 13, 18])
@pytest.mark.parametrize("op", REDUCE)
def test_reductions(op: str, opset: int) -> None:
    x = {"x": pos(2, 3, 4)}
    as_input = opset >= 18 or (op == "ReduceSum" and opset >= 13)
    for keep in (0, 1):
        attrs = {"keepdims": keep}
        if as_input:
            check(op, x, attrs, opset, {"a": i64(0, -1)})
        else:
            check(op, x, {**attrs, "axes": [0, -1]}, opset)
        check(op, x, attrs, opset)  # no axes: everything
    if as_input:
        check(op, x, {"noop_with_empty_axes": 1}, opset)


def test_reduce_log_sum() -> None:
    check("ReduceLogSum", {"x": pos(2, 3, 4)}, {"axes": [1]}, 13)


# --- layers ---------------------------------------------------------------------------------

def test_matmul_batch_dims() -> None:
    check("MatMul", {"a": f32(2, 1, 3, 4), "b": f32(5, 4, 6)})
    check("MatMul", {"a": f32(2, 3, 4)}, consts={"b": f32(2, 4, 5)})
    check("MatMul", {"a": f32(4)}, consts={"b": f32(4, 5)})
    check("MatMul", {"b": f32(2, 4, 5)}, consts={"a": f32(3, 4)}, order=["a", "b"])


def test_matmul_constant_2d_weight_is_a_linear() -> None:
    model = model_of("MatMul", {"a": f32(2, 3, 4)}, {}, 17, {"w": f32(4, 5)})
    module = to_torch(model)
    assert isinstance(module.the_matmul, torch.nn.Linear)
    assert module.weight_sources == {"the_matmul": ("w", True)}
    check("MatMul", {"a": f32(2, 3, 4)}, consts={"w": f32(4, 5)})


@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_gemm(trans_a: int, trans_b: int) -> None:
    a = f32(4, 3) if trans_a else f32(3, 4)
    b = f32(5, 4) if trans_b else f32(4, 5)
    attrs = {"transA": trans_a, "transB": trans_b, "alpha": 1.0, "beta": 0.5}
    check("Gemm", {"a": a}, attrs, 13, {"b": b, "c": f32(5)})
    check("Gemm", {"a": a, "b": b}, {**attrs, "alpha": 0.7}, 13, {"c": f32(3, 5)})
    module = to_torch(model_of("Gemm", {"a": a}, attrs, 13, {"b": b, "c": f32(5)}))
    assert module.weight_sources == {"the_gemm": ("b", not trans_b)}


@pytest.mark.parametrize("shape,attrs", [
    ((1, 3, 9), {"strides": [2], "pads": [1, 2], "dilations": [2]}),
    ((1, 4, 6, 7), {"group": 2, "pads": [1, 0, 0, 2]}),
    ((1, 4, 6, 7), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ((1, 4, 6, 7), {"auto_pad": "SAME_LOWER"}),
    ((1, 2, 4, 5, 6), {"pads": [1, 1, 1, 1, 1, 1], "strides": [1, 2, 1]})])
def test_conv_any_rank(shape: tuple[int, ...], attrs: dict[str, Any]) -> None:
    groups = attrs.get("group", 1)
    kernel = (3,) * (len(shape) - 2)
    w, b = f32(6, shape[1] // groups, *kernel), f32(6)
    check("Conv", {"x": f32(*shape)}, attrs, 13, {"w": w, "b": b})
    module = to_torch(model_of("Conv", {"x": f32(*shape)}, attrs, 13, {"w": w, "b": b}))
    conv_cls = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)[len(shape) - 3]
    assert isinstance(module.the_conv, conv_cls)
    assert module.weight_sources == {"the_conv": ("w", False)}
    check("Conv", {"x": f32(*shape), "w": w}, attrs, 13)  # activation weight: functional


@pytest.mark.parametrize("shape,attrs", [
    ((1, 4, 5, 5), {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}),
    ((1, 4, 5, 5), {"group": 2, "pads": [0, 1, 2, 0]}),
    ((1, 4, 6), {"strides": [2], "output_shape": [13]}),
    ((1, 4, 3, 4), {"strides": [2, 2], "dilations": [2, 1]})])
def test_conv_transpose(shape: tuple[int, ...], attrs: dict[str, Any]) -> None:
    groups = attrs.get("group", 1)
    w = f32(shape[1], 6 // groups, *((3,) * (len(shape) - 2)))
    check("ConvTranspose", {"x": f32(*shape)}, attrs, 13, {"w": w, "b": f32(6)})
    check("ConvTranspose", {"x": f32(*shape), "w": w}, attrs, 13)


@pytest.mark.parametrize("op,attrs", [
    ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [0, 1, 2, 1]}),
    ("MaxPool", {"kernel_shape": [2, 2], "ceil_mode": 1, "strides": [2, 2]}),
    ("MaxPool", {"kernel_shape": [3, 3], "dilations": [2, 1]}),
    ("MaxPool", {"kernel_shape": [3, 3], "auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    ("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1}),
    ("AveragePool", {"kernel_shape": [3, 2], "pads": [0, 1, 2, 0]}),
    ("AveragePool", {"kernel_shape": [3, 2], "pads": [0, 1, 2, 0], "count_include_pad": 1}),
    ("LpPool", {"kernel_shape": [2, 2], "p": 2}),
    ("GlobalMaxPool", {}), ("GlobalAveragePool", {})])
def test_pools(op: str, attrs: dict[str, Any]) -> None:
    check(op, {"x": f32(1, 3, 7, 8)}, attrs, 13)


@pytest.mark.parametrize("size", [3, 5])  # onnxruntime takes odd sizes only
def test_lrn(size: int) -> None:
    check("LRN", {"x": f32(2, 7, 3, 3)}, {"size": size, "alpha": 0.01, "beta": 0.6,
                                          "bias": 2.0}, 13)


def test_normalisations() -> None:
    stats = {"s": pos(3), "b": f32(3), "m": f32(3), "v": pos(3)}
    check("BatchNormalization", {"x": f32(2, 3, 5)}, {"epsilon": 1e-3}, 15, stats)
    check("BatchNormalization", {"x": f32(2, 3, 4, 5)}, {}, 9, stats)
    check("BatchNormalization", {"x": f32(2, 3, 4, 5), **stats}, {}, 15)
    check("InstanceNormalization", {"x": f32(2, 3, 4, 5)}, {"epsilon": 1e-4}, 13,
          {"s": pos(3), "b": f32(3)})
    check("LayerNormalization", {"x": f32(2, 3, 8)}, {"epsilon": 1e-4}, 17,
          {"s": pos(8), "b": f32(8)})
    check("LayerNormalization", {"x": f32(2, 3, 8)}, {"axis": 1}, 17, {"s": pos(3, 8)},
          n_out=3)
    check("LpNormalization", {"x": f32(3, 4)}, {"axis": 1, "p": 2}, 13)


@pytest.mark.parametrize("opset", [7, 12, 13])
def test_dropout_with_mask(opset: int) -> None:
    check("Dropout", {"x": f32(3, 4)}, {}, opset, n_out=2)
    check("Dropout", {"x": f32(3, 4)}, {}, opset)


def test_resize_and_upsample() -> None:
    x = {"x": f32(1, 2, 3, 4)}
    check("Upsample", x, {"mode": "nearest"}, 9, {"s": np.array([1, 1, 2, 3], np.float32)})
    check("Resize", x, {"mode": "nearest"}, 10, {"s": np.array([1, 1, 2, 2], np.float32)})
    scales = {"r": np.array([], np.float32), "s": np.array([1, 1, 2, 2], np.float32)}
    check("Resize", x, {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                        "nearest_mode": "floor"}, 13, scales)
    check("Resize", x, {"mode": "linear"}, 13, scales)
    check("Resize", x, {"mode": "linear", "coordinate_transformation_mode": "align_corners"},
          13, {"r": np.array([], np.float32), "sc": np.array([], np.float32),
               "z": i64(1, 2, 5, 7)})


# --- quantisation (exact) ---------------------------------------------------------------------

def test_quantize_dequantize() -> None:
    x = f32(2, 3, 4) * 3
    x[0, 0, :2] = [0.25, 0.75]  # halves: round to even
    for zp in (np.array(128, np.uint8), np.array(-3, np.int8)):
        check("QuantizeLinear", {"x": x}, {}, 13, {"s": np.array(0.5, np.float32), "z": zp})
    check("QuantizeLinear", {"x": x}, {"axis": 1}, 13,
          {"s": pos(3), "z": np.array([0, 10, 250], np.uint8)})
    check("DequantizeLinear", {"q": ints(2, 3, lo=0, hi=256, dtype=np.uint8)}, {}, 13,
          {"s": np.array(0.1, np.float32), "z": np.array(17, np.uint8)})
    check("DequantizeLinear", {"q": ints(2, 3, lo=-128, hi=128, dtype=np.int8)}, {"axis": 1},
          13, {"s": pos(3), "z": np.array([0, 1, -2], np.int8)})


def test_dynamic_quantize_three_outputs() -> None:
    check("DynamicQuantizeLinear", {"x": f32(3, 5)}, {}, 11, n_out=3)
    check("DynamicQuantizeLinear", {"x": pos(3, 5)}, {}, 11, n_out=3)


def test_integer_matmul_and_conv() -> None:
    a = ints(2, 3, 4, lo=0, hi=256, dtype=np.uint8)
    b = ints(4, 5, lo=-128, hi=128, dtype=np.int8)
    check("MatMulInteger", {"a": a}, {}, 10, {"b": b, "az": np.array(3, np.uint8),
                                              "bz": np.array(-2, np.int8)})
    check("MatMulInteger", {"a": a, "b": ints(4, 5, lo=0, hi=256, dtype=np.uint8)}, opset=10)
    x = ints(1, 2, 5, 5, lo=0, hi=256, dtype=np.uint8)
    w = ints(4, 2, 3, 3, lo=0, hi=256, dtype=np.uint8)
    check("ConvInteger", {"x": x}, {"pads": [1, 1, 1, 1]}, 10,
          {"w": w, "xz": np.array(7, np.uint8), "wz": np.array(3, np.uint8)})


def test_qlinear_matmul_and_conv() -> None:
    a = ints(3, 4, lo=0, hi=256, dtype=np.uint8)
    consts = {"as": np.array(0.02, np.float32), "az": np.array(120, np.uint8),
              "b": ints(4, 5, lo=0, hi=256, dtype=np.uint8), "bs": np.array(0.03, np.float32),
              "bz": np.array(130, np.uint8), "ys": np.array(0.05, np.float32),
              "yz": np.array(128, np.uint8)}
    check("QLinearMatMul", {"a": a}, {}, 10, consts)
    x = ints(1, 2, 5, 5, lo=0, hi=256, dtype=np.uint8)
    conv = {"xs": np.array(0.02, np.float32), "xz": np.array(120, np.uint8),
            "w": ints(4, 2, 3, 3, lo=-128, hi=128, dtype=np.int8),
            "ws": pos(4) / 20, "wz": np.zeros(4, np.int8),
            "ys": np.array(0.1, np.float32), "yz": np.array(7, np.uint8),
            "bias": ints(4, lo=-500, hi=500, dtype=np.int32)}
    check("QLinearConv", {"x": x}, {"pads": [1, 1, 1, 1]}, 10, conv)


# --- the importer as a whole ----------------------------------------------------------------

def test_several_inputs_and_outputs_in_order() -> None:
    nodes = [helper.make_node("Add", ["b", "a"], ["s"]), helper.make_node("Mul", ["a", "s"],
                                                                          ["p"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3])
                     for n in ("a", "b")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in ("p", "s")])
    module = to_torch(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert module.input_names == ["a", "b"] and module.output_names == ["p", "s"]
    assert module._input_name == "a" and module._output_names == ["p", "s"]
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    p, s = module(a, b)
    torch.testing.assert_close(s, a + b)
    torch.testing.assert_close(p, a * (a + b))
    with pytest.raises(TypeError, match="takes 2 inputs"):
        module(a)


def test_generated_weights_are_folded_into_layers() -> None:
    """Weights made by ops (ConstantOfShape + Add, as in the zoo test data) fold to a Conv2d."""
    nodes = [helper.make_node("ConstantOfShape", ["ws"], ["w0"], value=numpy_helper.from_array(
                 np.array([0.5], np.float32))),
             helper.make_node("Add", ["w0", "d"], ["w"]),
             helper.make_node("Conv", ["x", "w"], ["y"], name="c1")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(i64(3, 2, 1, 1), "ws"),
         numpy_helper.from_array(f32(3, 2, 1, 1), "d")])
    module = to_torch(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    assert isinstance(module.c1, torch.nn.Conv2d) and not module.weight_sources
    assert [s.op for s in module._steps] == ["conv"]


def test_unsupported_op_names_op_and_node_in_one_line() -> None:
    model = model_of("Det", {"x": f32(2, 3, 3)}, {}, 13)
    with pytest.raises(Unsupported) as err:
        to_torch(model)
    msg = str(err.value)
    assert "ONNX op Det (node the_det)" in msg and "\n" not in msg
    assert "Det" not in SUPPORTED


def test_docstring_lists_every_supported_op() -> None:
    import re

    from sparsebench.graph import onnx_torch

    listed = re.search(r"attribute and input variants\):\n(.*?)\.\n", onnx_torch.__doc__, re.S)
    assert listed is not None
    assert [s.strip() for s in listed.group(1).replace("\n", " ").split(",")] == list(SUPPORTED)


# --- transformer exports from both torch exporters --------------------------------------------

def _tiny_transformer(kind: str) -> Any:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind == "bert":
        model = transformers.BertModel(transformers.BertConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
            vocab_size=1000))
    elif kind == "gpt2":
        model = transformers.GPT2Model(transformers.GPT2Config(
            n_embd=64, n_layer=2, n_head=2, vocab_size=1000, n_positions=64, bos_token_id=0,
            eos_token_id=0))
    else:
        model = transformers.DistilBertModel(transformers.DistilBertConfig(
            dim=64, n_layers=2, n_heads=2, hidden_dim=128, vocab_size=1000))

    class LastHidden(torch.nn.Module):  # transformers 5: keyword arguments, a ModelOutput
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                    ) -> torch.Tensor:
            return self.model(input_ids=input_ids,
                              attention_mask=attention_mask).last_hidden_state
    return LastHidden().eval()


@pytest.mark.parametrize("kind,dynamo", [
    ("bert", False), ("bert", True), ("gpt2", False), ("distilbert", False),
    pytest.param("gpt2", True, marks=pytest.mark.slow),  # a dynamo export takes seconds
    pytest.param("distilbert", True, marks=pytest.mark.slow)])
def test_transformer_exports_match_onnxruntime(kind: str, dynamo: bool, tmp_path: Any) -> None:
    import io
    import warnings

    if dynamo:
        pytest.importorskip("onnxscript")
    wrapper = _tiny_transformer(kind)
    seq = 16
    ids = torch.randint(0, 1000, (1, seq))
    mask = torch.ones(1, seq, dtype=torch.int64)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (ids, mask), buf, input_names=["input_ids", "attention_mask"],
                          dynamo=dynamo, opset_version=18 if dynamo else 17,
                          **({"external_data": False} if dynamo else {}))
    model = onnx.load_from_string(buf.getvalue())
    module = to_torch(model)
    assert module.input_names == ["input_ids", "attention_mask"]
    linears = [n for n, m in module.named_modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == (8 if kind == "gpt2" else 12)  # every projection is a layer
    assert set(module.weight_sources) == set(linears)
    inits = {i.name for i in model.graph.initializer}
    assert all(src in inits for src, _ in module.weight_sources.values())
    mask[0, 11:] = 0  # padding: the mask really masks
    feeds = {"input_ids": torch.randint(0, 1000, (1, seq)).numpy(), "attention_mask": mask.numpy()}
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    expected = sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()})[0]
    with torch.inference_mode():
        got = module(*(torch.from_numpy(feeds[n]) for n in module.input_names))
    got = got[0] if isinstance(got, tuple) else got
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_onnxruntime_quantized_graphs_match(tmp_path: Any) -> None:
    """int8 graphs as ORT's quantizer writes them: dynamic (DynamicQuantizeLinear,
    MatMulInteger, ConvInteger) and static QDQ (QuantizeLinear/DequantizeLinear pairs)."""
    quant = pytest.importorskip("onnxruntime.quantization")

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.fc = torch.nn.Linear(8 * 8 * 8, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.conv(x)).flatten(1))

    torch.manual_seed(0)
    src = tmp_path / "net.onnx"
    torch.onnx.export(Net().eval(), (torch.randn(1, 3, 8, 8),), str(src), input_names=["x"],
                      dynamo=False, opset_version=17)
    samples = [{"x": f32(1, 3, 8, 8)} for _ in range(3)]

    class Reader(quant.CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(samples)

        def get_next(self) -> Any:
            return next(self.it, None)

    quant.quantize_dynamic(str(src), str(tmp_path / "dyn.onnx"))
    quant.quantize_static(str(src), str(tmp_path / "qdq.onnx"), Reader(),
                          quant_format=quant.QuantFormat.QDQ)
    for name, needed in (("dyn", {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"}),
                         ("qdq", {"QuantizeLinear", "DequantizeLinear"})):
        model = onnx.load(str(tmp_path / f"{name}.onnx"))
        assert needed <= {n.op_type for n in model.graph.node}
        got, expected = run_both(model, {"x": f32(1, 3, 8, 8)})
        np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opset", [7, 9])
def test_oldest_opsets(opset: int) -> None:
    check("Add", {"a": f32(2, 3, 4), "b": f32(4)}, opset=opset)
    check("Gemm", {"a": f32(3, 4)}, {"transB": 1}, opset, {"b": f32(5, 4), "c": f32(5)})
    check("Softmax", {"x": f32(2, 3, 4)}, {"axis": 1}, opset)
    check("Pad", {"x": f32(1, 2, 3, 4)}, {"pads": [0, 0, 1, 0, 0, 0, 0, 2]}, opset)
    check("Squeeze", {"x": f32(3, 1, 4)}, {"axes": [1]}, opset)
    check("Slice", {"x": f32(4, 5)}, {"starts": [1], "ends": [3], "axes": [1]}, opset)
    check("BatchNormalization", {"x": f32(2, 3, 4, 5)}, {}, opset,
          {"s": pos(3), "b": f32(3), "m": f32(3), "v": pos(3)})
    if opset == 7:  # scales as an attribute (an input from opset 9)
        check("Upsample", {"x": f32(1, 2, 3, 4)}, {"scales": [1.0, 1.0, 2.0, 2.0]}, 7)


def test_graph_ir_runs_padded_pools_and_same_convs() -> None:
    """Steps the graph IR cannot read as plain layers (explicitly padded pools, SAME-padded
    convs) run as calls, so the IR's output equals the module's."""
    from sparsebench.graph import from_module, run

    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="c1", auto_pad="SAME_UPPER",
                              strides=[2, 2]),
             helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[3, 3],
                              pads=[0, 1, 2, 1]),
             helper.make_node("Dropout", ["p"], ["d", "mask"]),
             helper.make_node("AveragePool", ["d"], ["y"], kernel_shape=[2, 2],
                              pads=[1, 0, 0, 1])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 9, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(f32(4, 3, 3, 3), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = f32(1, 3, 9, 9)
    got, expected = run_both(model, {"x": x})
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=1e-5)
    module = to_torch(model)
    g = from_module(module, (3, 9, 9))
    with torch.inference_mode():
        out = run(g, torch.from_numpy(x))[g.output]
    np.testing.assert_allclose(out.numpy(), expected[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_other_float_types_keep_their_dtype(dtype: Any) -> None:
    """Initializers keep their type: a float64 (or float16) graph runs in float64 (float16)."""
    a, w, b = f32(2, 3, 4).astype(dtype), f32(4, 5).astype(dtype), f32(5).astype(dtype)
    nodes = [helper.make_node("MatMul", ["a", "w"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "b"], ["s"]),
             helper.make_node("Sigmoid", ["s"], ["y"])]
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a", elem, [2, 3, 4])],
                              [helper.make_tensor_value_info("y", elem, None)],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    assert isinstance(to_torch(model).mm, torch.nn.Linear)
    got, expected = run_both(model, {"a": a})
    assert got[0].dtype == expected[0].dtype == dtype
    tol = 1e-3 if dtype == np.float16 else 1e-12
    np.testing.assert_allclose(got[0], expected[0], rtol=tol, atol=tol)


def test_imported_layer_norm_reexports_for_onnxruntime() -> None:
    """The structured/onnxruntime row re-exports the imported graph with the TorchScript
    exporter: LayerNormalization's normalized shape must be static there (it was a traced
    Gather on a Long scalar, which the exporter refuses), and the re-export matches ORT on the
    original bytes."""
    from sparsebench.backends.onnxrt import export_onnx

    inputs = {"x": f32(2, 3, 8)}
    model = model_of("LayerNormalization", inputs, {"epsilon": 1e-4}, 17,
                     {"s": pos(8), "b": f32(8)})
    expected = ort.InferenceSession(model.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, inputs)[0]
    module = to_torch(model)
    data = export_onnx(module, (3, 8), batch=2)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: inputs["x"]})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
