"""ONNX -> torch for common classifier graphs (our own: the PyPI converters import torchvision).

Supported ops (default ``ai.onnx`` domain): Add, AveragePool, BatchNormalization, Cast, Clip,
Concat, Constant, Conv, Div, Dropout, Erf, Flatten, Gather, Gelu, Gemm, GlobalAveragePool,
GlobalMaxPool, Identity, LeakyRelu, LogSoftmax, MatMul, MaxPool, Mul, Pow, Relu, Reshape, Shape,
Sigmoid, Softmax, Sqrt, Squeeze, Sub, Tanh, Transpose, Unsqueeze.

* Conv (2-D, any groups) with a constant weight becomes an ``nn.Conv2d``; Gemm and MatMul with a
  constant 2-D weight become an ``nn.Linear`` (a MatMul's following bias Add is folded into it);
  BatchNormalization becomes an ``nn.BatchNorm2d`` in eval mode. They are registered under
  sanitised node names (``/fc1/Gemm`` -> ``fc1_gemm``, unnamed -> ``gemm_3``) and ``forward``
  looks each one up by name at call time, so swapping a submodule changes what runs.
* Nodes whose inputs are all constant are folded at conversion time.
* Small integer values (``Shape`` -> ``Gather`` -> ``Unsqueeze`` -> ``Concat`` -> ``Reshape``, as
  ``torch.onnx.export`` emits for ``x.view(x.size(0), -1)``) flow as tuples of sizes, so a traced
  re-export keeps the batch dimension dynamic (while tracing, sizes are 0-d tensors).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import skip_init

from sparsebench.errors import SparsebenchError

Value = Any  # torch.Tensor, or a Python int / tuple of ints (small integer tensors)
_SMALL_INT = 64  # integer constants up to this many elements (rank <= 1) stay Python values


class Unsupported(SparsebenchError):
    """The ONNX graph uses an op (or an op variant) this importer cannot convert."""


@dataclass
class _Step:
    op: str
    node: str
    inputs: tuple[str, ...]  # "" for an absent optional input
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    module: str | None = None


_OPS: dict[str, Callable[..., Any]] = {}


def _op(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        for name in names:
            _OPS[name] = fn
        return fn
    return wrap


def _tensor(v: Value) -> torch.Tensor:
    return v if isinstance(v, torch.Tensor) else torch.tensor(v, dtype=torch.int64)


def _int_scalar(v: Value) -> bool:
    """A Python int, or a 0-d integer tensor (what ``x.shape[i]`` is while tracing)."""
    return isinstance(v, int) or (isinstance(v, torch.Tensor) and v.dim() == 0
                                  and not v.is_floating_point())


def _ints(v: Value) -> tuple[int, ...]:
    if _int_scalar(v):
        return (v,)
    if isinstance(v, torch.Tensor):
        return tuple(int(i) for i in v.reshape(-1).tolist())
    return tuple(v)


def _py_elementwise(fn: Callable[[int, int], int], a: Value, b: Value) -> Value:
    if isinstance(a, int) and isinstance(b, int):
        return fn(a, b)
    aa, bb = _ints(a), _ints(b)
    n = max(len(aa), len(bb))
    aa, bb = (aa * n if len(aa) == 1 else aa), (bb * n if len(bb) == 1 else bb)
    return tuple(fn(x, y) for x, y in zip(aa, bb))


def _trunc_div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _binary(tfn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
            pyfn: Callable[[int, int], int]) -> Callable[..., Any]:
    def run(mod: OnnxGraphModule, step: _Step, a: Value, b: Value) -> Value:
        if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):
            return _py_elementwise(pyfn, a, b)
        return tfn(_tensor(a), _tensor(b))
    return run


def _div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


_OPS["Add"] = _binary(torch.add, lambda x, y: x + y)
_OPS["Sub"] = _binary(torch.sub, lambda x, y: x - y)
_OPS["Mul"] = _binary(torch.mul, lambda x, y: x * y)
_OPS["Div"] = _binary(_div, _trunc_div)
_OPS["Pow"] = _binary(torch.pow, lambda x, y: x ** y)


def _unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., Any]:
    return lambda mod, step, x: fn(_tensor(x))


_OPS["Relu"] = _unary(torch.relu)
_OPS["Sigmoid"] = _unary(torch.sigmoid)
_OPS["Tanh"] = _unary(torch.tanh)
_OPS["Erf"] = _unary(torch.erf)
_OPS["Sqrt"] = _unary(torch.sqrt)


@_op("Identity", "Dropout")
def _identity(mod: OnnxGraphModule, step: _Step, x: Value, *rest: Value) -> Value:
    return x


@_op("Gelu")
def _gelu(mod: OnnxGraphModule, step: _Step, x: Value) -> torch.Tensor:
    return F.gelu(x, approximate=step.attrs.get("approximate", "none"))


@_op("LeakyRelu")
def _leaky_relu(mod: OnnxGraphModule, step: _Step, x: Value) -> torch.Tensor:
    return F.leaky_relu(x, step.attrs.get("alpha", 0.01))


@_op("Clip")
def _clip(mod: OnnxGraphModule, step: _Step, x: Value, lo: Value = None,
          hi: Value = None) -> torch.Tensor:
    lo = step.attrs["min"] if "min" in step.attrs else lo
    hi = step.attrs["max"] if "max" in step.attrs else hi
    if lo is None and hi is None:
        return x
    return torch.clamp(x, lo, hi)


@_op("Softmax", "LogSoftmax")
def _softmax(mod: OnnxGraphModule, step: _Step, x: Value) -> torch.Tensor:
    fn = torch.softmax if step.op == "Softmax" else torch.log_softmax
    axis = step.attrs.get("axis", -1 if mod._opset >= 13 else 1)
    if mod._opset >= 13:
        return fn(x, axis)
    axis = axis % x.dim()  # before opset 13: softmax over the input coerced to 2-D at `axis`
    return fn(x.reshape(math.prod(x.shape[:axis]), -1), 1).reshape(x.shape)


@_op("Transpose")
def _transpose(mod: OnnxGraphModule, step: _Step, x: Value) -> torch.Tensor:
    x = _tensor(x)
    return x.permute(step.attrs.get("perm", list(range(x.dim()))[::-1]))


@_op("Flatten")
def _flatten(mod: OnnxGraphModule, step: _Step, x: Value) -> torch.Tensor:
    x = _tensor(x)
    axis = step.attrs.get("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    if axis == 0:
        return x.reshape(1, -1)
    if axis == x.dim():
        return x.reshape(-1, 1)
    return torch.flatten(torch.flatten(x, axis), 0, axis - 1)


@_op("Reshape")
def _reshape(mod: OnnxGraphModule, step: _Step, x: Value, shape: Value) -> torch.Tensor:
    x = _tensor(x)
    target = list(_ints(shape))
    if not step.attrs.get("allowzero", 0):
        target = [x.shape[i] if isinstance(d, int) and d == 0 else d
                  for i, d in enumerate(target)]
    return x.reshape(target)


@_op("Shape")
def _shape(mod: OnnxGraphModule, step: _Step, x: Value) -> tuple[int, ...]:
    dims = tuple(_tensor(x).shape)
    return dims[step.attrs.get("start", 0):step.attrs.get("end", len(dims))]


@_op("Gather")
def _gather(mod: OnnxGraphModule, step: _Step, data: Value, idx: Value) -> Value:
    axis = step.attrs.get("axis", 0)
    if not isinstance(data, torch.Tensor) and not isinstance(idx, torch.Tensor):
        dims = _ints(data)
        return dims[idx] if isinstance(idx, int) else tuple(dims[i] for i in idx)
    data, idx = _tensor(data), _tensor(idx)
    axis = axis % data.dim()
    idx = torch.where(idx < 0, idx + data.shape[axis], idx)
    out = torch.index_select(data, axis, idx.reshape(-1))
    return out.reshape(*data.shape[:axis], *idx.shape, *data.shape[axis + 1:])


def _axes(step: _Step, given: Value) -> tuple[int, ...]:
    return tuple(step.attrs["axes"]) if "axes" in step.attrs else _ints(given)


@_op("Unsqueeze")
def _unsqueeze(mod: OnnxGraphModule, step: _Step, x: Value, axes: Value = None) -> Value:
    axes = _axes(step, axes)
    if _int_scalar(x) and axes in ((0,), (-1,)):
        return (x,)
    x = _tensor(x)
    rank = x.dim() + len(axes)
    for a in sorted(a % rank for a in axes):
        x = x.unsqueeze(a)
    return x


@_op("Squeeze")
def _squeeze(mod: OnnxGraphModule, step: _Step, x: Value, axes: Value = None) -> Value:
    axes = _axes(step, axes) if axes is not None or "axes" in step.attrs else None
    if isinstance(x, tuple) and len(x) == 1 and axes in (None, (0,), (-1,)):
        return x[0]
    x = _tensor(x)
    if axes is None:
        return x.squeeze()
    for a in sorted((a % x.dim() for a in axes), reverse=True):
        x = x.squeeze(a)
    return x


@_op("Concat")
def _concat(mod: OnnxGraphModule, step: _Step, *parts: Value) -> Value:
    if not any(isinstance(p, torch.Tensor) for p in parts):
        return tuple(i for p in parts for i in _ints(p))
    return torch.cat([_tensor(p) for p in parts], step.attrs.get("axis", 0))


_DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32,
           7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64,
           16: torch.bfloat16}


@_op("Cast")
def _cast(mod: OnnxGraphModule, step: _Step, x: Value) -> Value:
    dtype = _DTYPES.get(step.attrs["to"])
    if dtype is None:
        raise Unsupported(f"ONNX op Cast (node {step.node}): unsupported target type "
                          f"{step.attrs['to']}")
    if not isinstance(x, torch.Tensor) and dtype in (torch.int32, torch.int64):
        return x
    return _tensor(x).to(dtype)


@_op("MatMul")
def _matmul(mod: OnnxGraphModule, step: _Step, a: Value, b: Value) -> torch.Tensor:
    return torch.matmul(a, b)


@_op("Gemm")
def _gemm(mod: OnnxGraphModule, step: _Step, a: Value, b: Value, c: Value = None
          ) -> torch.Tensor:
    at = step.attrs
    a = a.t() if at.get("transA", 0) else a
    b = b.t() if at.get("transB", 0) else b
    out = at.get("alpha", 1.0) * (a @ b)
    return out if c is None else out + at.get("beta", 1.0) * c


@_op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(mod: OnnxGraphModule, step: _Step, x: Value) -> torch.Tensor:
    dims = tuple(range(2, x.dim()))
    return x.mean(dims, keepdim=True) if step.op == "GlobalAveragePool" else x.amax(dims, True)


@_op("MaxPool")
def _max_pool(mod: OnnxGraphModule, step: _Step, x: Value) -> torch.Tensor:
    a = step.attrs
    fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[len(a["kernel"]) - 1]
    return fn(x, a["kernel"], a["strides"], a["pads"], a["dilations"], a["ceil_mode"])


@_op("AveragePool")
def _avg_pool(mod: OnnxGraphModule, step: _Step, x: Value) -> torch.Tensor:
    a = step.attrs
    fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[len(a["kernel"]) - 1]
    return fn(x, a["kernel"], a["strides"], a["pads"], a["ceil_mode"], a["count_include_pad"])


@_op("conv", "linear")
def _layer(mod: OnnxGraphModule, step: _Step, x: Value) -> torch.Tensor:
    if step.attrs.get("pad"):
        x = F.pad(x, step.attrs["pad"])
    if step.attrs.get("transA"):
        x = x.t()
    return mod._modules[step.module](x)  # looked up at call time: swapped layers run


@_op("batchnorm")
def _batchnorm(mod: OnnxGraphModule, step: _Step, x: Value) -> torch.Tensor:
    bn = mod._modules[step.module]
    if x.dim() == 4:
        return bn(x)
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0,
                        bn.eps)


SUPPORTED = tuple(sorted(
    {n for n in _OPS if n[0].isupper()} | {"BatchNormalization", "Constant", "Conv"}))


class OnnxGraphModule(nn.Module):
    """A converted ONNX graph: steps run in order; layers are named submodules."""

    def __init__(self, input_name: str, output_names: list[str], opset: int) -> None:
        super().__init__()
        self._input_name = input_name
        self._output_names = list(output_names)
        self._opset = opset
        self._steps: list[_Step] = []
        self._py_consts: dict[str, Value] = {}  # small integer constants as Python values
        self._buffer_of: dict[str, str] = {}  # value name -> buffer attribute name

    def _value(self, env: dict[str, Value], name: str) -> Value:
        if name == "":
            return None
        if name in env:
            return env[name]
        if name in self._py_consts:
            return self._py_consts[name]
        return getattr(self, self._buffer_of[name])

    def forward(self, x: torch.Tensor) -> Any:
        env: dict[str, Value] = {self._input_name: x}
        for step in self._steps:
            out = _OPS[step.op](self, step, *(self._value(env, n) for n in step.inputs))
            env[step.outputs[0]] = out
        outs = tuple(self._value(env, n) for n in self._output_names)
        return outs[0] if len(outs) == 1 else outs


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _sparse_to_array(sp: Any) -> np.ndarray:
    from onnx import numpy_helper

    values = numpy_helper.to_array(sp.values).reshape(-1)
    idx = numpy_helper.to_array(sp.indices)
    dims = tuple(sp.dims)
    dense = np.zeros(int(np.prod(dims)), dtype=values.dtype)
    flat = idx.reshape(-1) if idx.ndim == 1 else np.ravel_multi_index(tuple(idx.T), dims)
    dense[flat] = values
    return dense.reshape(dims)


def _to_torch_const(arr: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.array(arr, copy=True))
    return t.float() if t.is_floating_point() else t  # inputs are float32


def _constant_value(node: Any) -> torch.Tensor:
    from onnx import numpy_helper

    attrs = {a.name: a for a in node.attribute}
    if "value" in attrs:
        return _to_torch_const(numpy_helper.to_array(attrs["value"].t))
    if "sparse_value" in attrs:
        return _to_torch_const(_sparse_to_array(attrs["sparse_value"].sparse_tensor))
    a = _attrs(node)
    for key, dtype in (("value_float", torch.float32), ("value_floats", torch.float32),
                       ("value_int", torch.int64), ("value_ints", torch.int64)):
        if key in a:
            return torch.tensor(a[key], dtype=dtype)
    raise Unsupported(f"ONNX op Constant (node {node.name}): only numeric values are supported")


def _runtime(t: torch.Tensor) -> Value:
    """Small integer tensors become Python ints/tuples; anything else stays a tensor."""
    if not t.is_floating_point() and t.dtype != torch.bool and t.dim() <= 1 \
            and t.numel() <= _SMALL_INT:
        return int(t) if t.dim() == 0 else tuple(int(i) for i in t.tolist())
    return t


class _Builder:
    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        graph = model.graph
        self.graph = graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                          1)
        self.consts: dict[str, torch.Tensor] = {}
        for init in graph.initializer:
            self.consts[init.name] = _to_torch_const(numpy_helper.to_array(init))
        for sp in graph.sparse_initializer:
            self.consts[sp.values.name] = _to_torch_const(_sparse_to_array(sp))
        inputs = [i for i in graph.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise Unsupported(f"the ONNX graph has {len(inputs)} inputs; sparsebench's importer "
                              f"converts single-input models")
        self.module = OnnxGraphModule(inputs[0].name, [o.name for o in graph.output], self.opset)
        self.consumers: dict[str, int] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers[name] = self.consumers.get(name, 0) + 1
        for o in graph.output:
            self.consumers[o.name] = self.consumers.get(o.name, 0) + 1
        self.skip: set[int] = set()
        self.taken: set[str] = set()
        self.batch_dims = self.fixed_batch_dims(model, inputs[0])

    @staticmethod
    def fixed_batch_dims(model: Any, value: Any) -> tuple[int, dict[str, int]] | None:
        """(B, {value name: leading dim}) when the input fixes the batch size to B."""
        dims = value.type.tensor_type.shape.dim
        if not dims or not dims[0].HasField("dim_value") or not any(
                n.op_type == "Reshape" for n in model.graph.node):
            return None
        from onnx import shape_inference

        try:
            inferred = shape_inference.infer_shapes(model).graph
        except Exception:  # noqa: BLE001 - shape inference is only a hint here
            return None
        lead = {}
        for vi in list(inferred.value_info) + list(inferred.input):
            d = vi.type.tensor_type.shape.dim
            if d and d[0].HasField("dim_value"):
                lead[vi.name] = d[0].dim_value
        return dims[0].dim_value, lead

    def reshape_inputs(self, node: Any, attrs: dict[str, Any]) -> list[str]:
        """A graph exported at a fixed batch size B reshapes to the constant [B, ...]: copy the
        data's leading dim instead (0), identical at batch B and right at any other batch."""
        shape = self.const(node.input[1])
        if self.batch_dims is None or shape is None or attrs.get("allowzero", 0) \
                or shape.dim() != 1 or not len(shape):
            return list(node.input)
        batch, lead = self.batch_dims
        if int(shape[0]) != batch or lead.get(node.input[0]) != batch:
            return list(node.input)
        name = f"{node.output[0]}::batch_free_shape"
        self.consts[name] = torch.cat([shape.new_zeros(1), shape[1:]])
        return [node.input[0], name]

    def module_name(self, node: Any, index: int) -> str:
        base = re.sub(r"\W+", "_", node.name).strip("_").lower() or f"{node.op_type.lower()}"
        base = f"n_{base}" if base[0].isdigit() else base
        name = base if node.name else f"{base}_{index}"
        if name in self.taken or hasattr(nn.Module, name) or name.startswith("_"):
            name = f"{base}_{index}"
        while name in self.taken:
            name += "_"
        self.taken.add(name)
        return name

    def const(self, name: str) -> torch.Tensor | None:
        return self.consts.get(name) if name else None

    def add(self, node: Any, op: str, inputs: list[str], attrs: dict[str, Any],
            layer: nn.Module | None = None, index: int = 0, outputs: list[str] | None = None
            ) -> None:
        step = _Step(op, node.name or f"#{index}", tuple(inputs),
                     tuple(outputs or node.output), attrs)
        if layer is not None:
            step.module = self.module_name(node, index)
            self.module.add_module(step.module, layer.eval())
        self.module._steps.append(step)

    def build(self) -> OnnxGraphModule:
        for index, node in enumerate(self.graph.node):
            if index in self.skip:
                continue
            op = node.op_type
            if node.domain not in ("", "ai.onnx") or op not in SUPPORTED:
                qualified = f"{node.domain}.{op}" if node.domain not in ("", "ai.onnx") else op
                raise Unsupported(
                    f"ONNX op {qualified} (node {node.name or index}) is not supported by "
                    f"sparsebench's ONNX importer; supported: {', '.join(SUPPORTED)}")
            for extra in node.output[1:]:
                if extra and self.consumers.get(extra):
                    raise Unsupported(f"ONNX op {op} (node {node.name or index}): its output "
                                      f"{extra!r} (output {list(node.output).index(extra)}) "
                                      "is not supported")
            attrs = _attrs(node)
            if op == "Constant":
                self.consts[node.output[0]] = _constant_value(node)
            elif op == "Conv":
                self.conv(node, index, attrs)
            elif op == "BatchNormalization":
                self.batchnorm(node, index, attrs)
            elif op in ("Gemm", "MatMul") and self.linear(node, index, attrs):
                pass
            elif op in ("MaxPool", "AveragePool"):
                self.add(node, op, list(node.input), self.pool_attrs(node, index, attrs))
            elif all(n == "" or n in self.consts for n in node.input):
                self.fold(node, attrs)
            elif op == "Reshape":
                self.add(node, op, self.reshape_inputs(node, attrs), attrs)
            else:
                self.add(node, op, list(node.input)[:1] if op == "Dropout" else
                         list(node.input), attrs)
        self.register_constants()
        return self.module

    def fold(self, node: Any, attrs: dict[str, Any]) -> None:
        step = _Step(node.op_type, node.name, tuple(node.input), tuple(node.output), attrs)
        args = [None if n == "" else _runtime(self.consts[n]) for n in node.input]
        if node.op_type == "Dropout":
            args = args[:1]
        out = _OPS[node.op_type](self.module, step, *args)
        self.consts[node.output[0]] = out if isinstance(out, torch.Tensor) else _tensor(out)

    def register_constants(self) -> None:
        used = {n for s in self.module._steps for n in s.inputs} | set(self.module._output_names)
        for name in sorted(used & set(self.consts)):
            value = _runtime(self.consts[name])
            if isinstance(value, torch.Tensor):
                attr = "const_" + (re.sub(r"\W+", "_", name).strip("_").lower() or "value")
                while attr in self.module._buffers or hasattr(self.module, attr):
                    attr += "_"
                self.module.register_buffer(attr, value)
                self.module._buffer_of[name] = attr
            else:
                self.module._py_consts[name] = value

    def need_const(self, node: Any, index: int, name: str, what: str) -> torch.Tensor:
        t = self.const(name)
        if t is None:
            raise Unsupported(f"ONNX op {node.op_type} (node {node.name or index}): a non-constant "
                              f"{what} is not supported")
        return t

    def conv(self, node: Any, index: int, attrs: dict[str, Any]) -> None:
        w = self.need_const(node, index, node.input[1], "weight")
        b = self.const(node.input[2]) if len(node.input) > 2 else None
        where = f"ONNX op Conv (node {node.name or index})"
        if w.dim() != 4:
            raise Unsupported(f"{where}: only 2-D convolutions are supported")
        if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise Unsupported(f"{where}: auto_pad={attrs['auto_pad']} is not supported")
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        groups = int(attrs.get("group", 1))
        layer = skip_init(nn.Conv2d, w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]),
                          stride=tuple(attrs.get("strides", [1, 1])),
                          padding=(pads[0], pads[1]) if pads[:2] == pads[2:] else 0,
                          dilation=tuple(attrs.get("dilations", [1, 1])), groups=groups,
                          bias=b is not None)
        with torch.no_grad():
            layer.weight.copy_(w)
            if b is not None:
                layer.bias.copy_(b.reshape(-1))
        extra = {} if pads[:2] == pads[2:] else {"pad": (pads[1], pads[3], pads[0], pads[2])}
        self.add(node, "conv", [node.input[0]], extra, layer, index)

    def batchnorm(self, node: Any, index: int, attrs: dict[str, Any]) -> None:
        scale, bias, mean, var = (self.need_const(node, index, n, what) for n, what in
                                  zip(node.input[1:5], ("scale", "bias", "mean", "variance")))
        if attrs.get("training_mode", 0):
            raise Unsupported(f"ONNX op BatchNormalization (node {node.name or index}): "
                              "training_mode=1 is not supported")
        layer = nn.BatchNorm2d(scale.numel(), eps=float(attrs.get("epsilon", 1e-5)))
        with torch.no_grad():
            layer.weight.copy_(scale)
            layer.bias.copy_(bias)
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(var)
        self.add(node, "batchnorm", [node.input[0]], {}, layer, index)

    def linear(self, node: Any, index: int, attrs: dict[str, Any]) -> bool:
        """Gemm/MatMul with a constant 2-D weight -> nn.Linear; False to run it generically."""
        w = self.const(node.input[1])
        if w is None or w.dim() != 2 or node.input[0] in self.consts:
            return False
        bias, outputs = None, list(node.output)
        if node.op_type == "Gemm":
            weight = w if attrs.get("transB", 0) else w.t()
            weight = weight * attrs.get("alpha", 1.0)
            if len(node.input) > 2 and node.input[2]:
                c = self.const(node.input[2])
                if c is None or c.numel() not in (1, weight.shape[0]) or \
                        (c.dim() == 2 and c.shape[0] != 1):
                    return False
                bias = c.reshape(-1).expand(weight.shape[0]) * attrs.get("beta", 1.0)
        else:
            weight = w.t()
            add = self.bias_add(node.output[0], weight.shape[0])
            if add is not None:
                bias, outputs = add
        layer = skip_init(nn.Linear, weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            layer.weight.copy_(weight)
            if bias is not None:
                layer.bias.copy_(bias)
        extra = {"transA": 1} if attrs.get("transA", 0) else {}
        self.add(node, "linear", [node.input[0]], extra, layer, index, outputs)
        return True

    def bias_add(self, value: str, units: int) -> tuple[torch.Tensor, list[str]] | None:
        """The constant bias of the single Add consuming ``value`` (marked as folded)."""
        if self.consumers.get(value) != 1:
            return None
        for j, nxt in enumerate(self.graph.node):
            if nxt.op_type == "Add" and value in nxt.input and len(nxt.input) == 2:
                other = nxt.input[1] if nxt.input[0] == value else nxt.input[0]
                c = self.const(other)
                if c is None or c.dim() == 0 or c.numel() != units or c.shape[-1] != units:
                    return None
                self.skip.add(j)
                return c.reshape(-1), list(nxt.output)
        return None

    def pool_attrs(self, node: Any, index: int, attrs: dict[str, Any]) -> dict[str, Any]:
        where = f"ONNX op {node.op_type} (node {node.name or index})"
        kernel = list(attrs["kernel_shape"])
        n = len(kernel)
        pads = list(attrs.get("pads", [0] * 2 * n))
        if not 1 <= n <= 3:
            raise Unsupported(f"{where}: {n}-D pooling is not supported")
        if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise Unsupported(f"{where}: auto_pad={attrs['auto_pad']} is not supported")
        if pads[:n] != pads[n:] or any(p > k // 2 for p, k in zip(pads, kernel)):
            raise Unsupported(f"{where}: pads {pads} (asymmetric or over half the kernel) are "
                              "not supported")
        dilations = list(attrs.get("dilations", [1] * n))
        if node.op_type == "AveragePool" and any(d != 1 for d in dilations):
            raise Unsupported(f"{where}: dilations are not supported")
        return {"kernel": kernel, "strides": list(attrs.get("strides", [1] * n)),
                "pads": pads[:n], "dilations": dilations,
                "ceil_mode": bool(attrs.get("ceil_mode", 0)),
                "count_include_pad": bool(attrs.get("count_include_pad", 0))}


def to_torch(model: Any) -> OnnxGraphModule:
    """An ``onnx.ModelProto`` as an ``OnnxGraphModule`` in eval mode; ``Unsupported`` if not."""
    return _Builder(model).build().eval()
