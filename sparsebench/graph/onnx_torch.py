"""ONNX -> torch for whole graphs (our own: the PyPI converters import torchvision).

Supported ops (default ``ai.onnx`` domain, opsets 7 to 21, attribute and input variants):
Abs, Acos, Acosh, Add, And, ArgMax, ArgMin, Asin, Asinh, Atan, Atanh, AveragePool,
BatchNormalization, BitwiseAnd, BitwiseNot, BitwiseOr, BitwiseXor, Cast, CastLike, Ceil, Celu,
Clip, Concat, ConcatFromSequence, Constant, ConstantOfShape, Conv, ConvInteger, ConvTranspose,
Cos, Cosh, CumSum, DepthToSpace, DequantizeLinear, Div, Dropout, DynamicQuantizeLinear, Einsum,
Elu, Equal, Erf, Exp, Expand, Flatten, Floor, Gather, GatherElements, GatherND, Gelu, Gemm,
GlobalAveragePool, GlobalMaxPool, Greater, GreaterOrEqual, HardSigmoid, HardSwish, Hardmax,
Identity, InstanceNormalization, IsInf, IsNaN, LRN, LayerNormalization, LeakyRelu, Less,
LessOrEqual, Log, LogSoftmax, LpNormalization, LpPool, MatMul, MatMulInteger, Max, MaxPool,
Mean, Min, Mish, Mod, Mul, Neg, NonZero, Not, OneHot, Or, PRelu, Pad, Pow, QLinearConv,
QLinearMatMul, QuantizeLinear, Range, Reciprocal, ReduceL1, ReduceL2, ReduceLogSum,
ReduceLogSumExp, ReduceMax, ReduceMean, ReduceMin, ReduceProd, ReduceSum, ReduceSumSquare, Relu,
Reshape, Resize, Round, Scatter, ScatterElements, ScatterND, Selu, SequenceAt,
SequenceConstruct, SequenceEmpty, SequenceErase, SequenceInsert, SequenceLength, Shape, Shrink,
Sigmoid, Sign, Sin, Sinh, Size, Slice, Softmax, Softplus, Softsign, SpaceToDepth, Split,
SplitToSequence, Sqrt, Squeeze, Sub, Sum, Tan, Tanh, ThresholdedRelu, Tile, TopK, Transpose,
Trilu, Unsqueeze, Upsample, Where, Xor.
Model-local functions are inlined first; other domains and control flow (If, Loop, Scan) are
not supported (``Unsupported`` names the op and the node).

* Nodes whose inputs are all constant are folded at conversion time (so graphs that generate
  their weights with ops, like the ONNX test-data zoo models, get constant weights).
* Conv (1-, 2- or 3-D, any groups) with a constant weight becomes an ``nn.Conv1d/2d/3d``,
  ConvTranspose an ``nn.ConvTranspose*d``; Gemm, and MatMul with a constant 2-D weight and an
  activation of any rank, become an ``nn.Linear`` (a MatMul's following bias Add is folded into
  it); BatchNormalization with constant statistics becomes an ``nn.BatchNorm2d`` in eval mode.
  They are registered under sanitised node names (``/fc1/Gemm`` -> ``fc1_gemm``, unnamed ->
  ``gemm_3``) and ``forward`` looks each one up by name at call time, so swapping a submodule
  changes what runs. ``weight_sources`` maps each such layer whose weight is an initializer to
  ``(initializer name, transposed)``.
* Small int64 values (``Shape`` -> ``Gather`` -> ``Unsqueeze`` -> ``Concat`` -> ``Reshape``, as
  ``torch.onnx.export`` emits for ``x.view(x.size(0), -1)``) flow as tuples of sizes, so a traced
  re-export keeps the batch dimension dynamic (while tracing, sizes are 0-d tensors).
* Quantisation ops (QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, MatMulInteger,
  ConvInteger, QLinearMatMul, QLinearConv) run in exact integer arithmetic; they stay ops, not
  layers.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import skip_init

from sparsebench.graph.onnx_ops import _OPS, TensorSequence, Unsupported, Value, _Step, _tensor

__all__ = ["SUPPORTED", "OnnxGraphModule", "Unsupported", "to_torch", "_OPS", "_Step"]

_SMALL_INT = 64  # int64 constants up to this many elements (rank <= 1) stay Python values
# ops whose extra outputs are computed (the others: only the first output may be used)
_MULTI_OUTPUT = {"Split", "Dropout", "DynamicQuantizeLinear", "TopK", "LayerNormalization"}

SUPPORTED = tuple(sorted({n for n in _OPS if n[0].isupper()} | {"Constant"}))


class OnnxGraphModule(nn.Module):
    """A converted ONNX graph: steps run in order; layers are named submodules.

    ``forward(*inputs)`` takes one tensor per name in ``input_names`` (the graph inputs that are
    not initializers, in graph order) and returns a tensor when the graph has one output, else
    a tuple in ``output_names`` order. ``weight_sources`` maps a layer submodule name to
    ``(initializer name, transposed)``.
    """

    def __init__(self, input_names: list[str], output_names: list[str], opset: int) -> None:
        super().__init__()
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.weight_sources: dict[str, tuple[str, bool]] = {}
        self._opset = opset
        self._steps: list[_Step] = []
        self._py_consts: dict[str, Value] = {}  # small integer constants as Python values
        self._buffer_of: dict[str, str] = {}  # value name -> buffer attribute name

    @property
    def _input_name(self) -> str:  # the single-input name older callers use
        return self.input_names[0] if self.input_names else ""

    @property
    def _output_names(self) -> list[str]:
        return self.output_names

    def _value(self, env: dict[str, Value], name: str) -> Value:
        if name == "":
            return None
        if name in env:
            return env[name]
        if name in self._py_consts:
            return self._py_consts[name]
        return getattr(self, self._buffer_of[name])

    def forward(self, *inputs: torch.Tensor) -> Any:
        if len(inputs) != len(self.input_names):
            raise TypeError(f"the ONNX graph takes {len(self.input_names)} inputs "
                            f"({', '.join(self.input_names)}); got {len(inputs)}")
        env: dict[str, Value] = dict(zip(self.input_names, inputs))
        for step in self._steps:
            out = _OPS[step.op](self, step, *(self._value(env, n) for n in step.inputs))
            if isinstance(out, list):
                env.update((n, v) for n, v in zip(step.outputs, out) if n)
            else:
                env[step.outputs[0]] = out
        outs = tuple(_tensor(self._value(env, n)) for n in self.output_names)
        return outs[0] if len(outs) == 1 else outs


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import AttributeProto, helper, numpy_helper

    out = {}
    for a in node.attribute:
        if a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
            raise Unsupported(f"ONNX op {node.op_type} (node {node.name or '?'}): subgraphs "
                              "(control flow) are not supported")
        v = helper.get_attribute_value(a)
        if a.type == AttributeProto.TENSOR:
            v = _to_torch_const(numpy_helper.to_array(v))
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
    if arr.dtype == object:
        raise Unsupported("string tensors are not supported")
    return torch.from_numpy(np.array(arr, copy=True))


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


def _runtime(t: Any) -> Value:
    """Small int64 tensors become Python ints/tuples; anything else stays as it is."""
    if isinstance(t, torch.Tensor) and t.dtype == torch.int64 and t.dim() <= 1 \
            and t.numel() <= _SMALL_INT:
        return int(t) if t.dim() == 0 else tuple(int(i) for i in t.tolist())
    return t


def _where(node: Any, index: int) -> str:
    return f"ONNX op {node.op_type} (node {node.name or index})"


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
        self.initializers = set(self.consts)
        inputs = [i for i in graph.input if i.name not in self.consts]
        self.module = OnnxGraphModule([i.name for i in inputs], [o.name for o in graph.output],
                                      self.opset)
        self.consumers: dict[str, int] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers[name] = self.consumers.get(name, 0) + 1
        for o in graph.output:
            self.consumers[o.name] = self.consumers.get(o.name, 0) + 1
        self.skip: set[int] = set()
        self.taken: set[str] = set()
        self.alias: dict[str, str] = {}  # Identity / Dropout output -> the value it passes on
        self.graph_outputs = {o.name for o in graph.output}
        self.batch_dims = self.fixed_batch_dims(model, inputs[0]) if len(inputs) == 1 else None

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
            layer: nn.Module | None = None, index: int = 0, outputs: list[str] | None = None,
            weight: tuple[str, bool] | None = None) -> None:
        outs = list(outputs or node.output)
        while len(outs) > 1 and not self.consumers.get(outs[-1]):
            outs.pop()  # unused optional outputs (a Dropout's mask, ...) are not computed
        step = _Step(op, node.name or f"#{index}", tuple(inputs), tuple(outs), attrs)
        if layer is not None:
            step.module = self.module_name(node, index)
            self.module.add_module(step.module, layer.eval())
            if weight is not None and weight[0] in self.initializers:
                self.module.weight_sources[step.module] = weight
        self.module._steps.append(step)

    def check(self, node: Any, index: int) -> None:
        op = node.op_type
        if node.domain not in ("", "ai.onnx") or op not in SUPPORTED:
            qualified = f"{node.domain}.{op}" if node.domain not in ("", "ai.onnx") else op
            raise Unsupported(
                f"ONNX op {qualified} (node {node.name or index}) is not supported by "
                f"sparsebench's ONNX importer; supported: {', '.join(SUPPORTED)}")
        if op in _MULTI_OUTPUT:
            return
        for extra in node.output[1:]:
            if extra and self.consumers.get(extra):
                raise Unsupported(f"{_where(node, index)}: its output {extra!r} (output "
                                  f"{list(node.output).index(extra)}) is not supported")

    def build(self) -> OnnxGraphModule:
        for index, node in enumerate(self.graph.node):
            if index in self.skip:
                continue
            node = self.resolved(node)
            op = node.op_type
            if op == "Constant" and node.domain in ("", "ai.onnx"):
                self.consts[node.output[0]] = _constant_value(node)
                continue
            self.check(node, index)
            attrs = _attrs(node)
            if all(n == "" or n in self.consts for n in node.input):
                self.fold(node, index, attrs)
            elif op in ("Identity", "Dropout") and self.passes_through(node):
                self.alias[node.output[0]] = node.input[0]
            elif op == "Conv" and self.const(node.input[1]) is not None:
                self.conv(node, index, attrs)
            elif op == "ConvTranspose" and self.const(node.input[1]) is not None:
                self.conv_transpose(node, index, attrs)
            elif op == "BatchNormalization" and self.batchnorm(node, index, attrs):
                pass
            elif op in ("Gemm", "MatMul") and self.linear(node, index, attrs):
                pass
            elif op in ("MaxPool", "AveragePool", "LpPool"):
                self.pool(node, index, attrs)
            elif op == "Reshape":
                self.add(node, op, self.reshape_inputs(node, attrs), attrs)
            else:
                self.add(node, op, list(node.input), attrs, index=index)
        self.register_constants()
        return self.module

    def resolved(self, node: Any) -> Any:
        """``node`` reading through the Identity/Dropout outputs it consumes (a copy)."""
        if not any(n in self.alias for n in node.input):
            return node
        from onnx import NodeProto

        copy = NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [self.alias.get(n, n) for n in node.input]
        return copy

    def passes_through(self, node: Any) -> bool:
        """An Identity, or a Dropout (inference) whose mask is unused, not a graph output."""
        return node.output[0] not in self.graph_outputs and not any(
            self.consumers.get(o) for o in node.output[1:] if o)

    def fold(self, node: Any, index: int, attrs: dict[str, Any]) -> None:
        step = _Step(node.op_type, node.name or f"#{index}", tuple(node.input),
                     tuple(node.output), attrs)
        if node.op_type in ("MaxPool", "AveragePool", "LpPool"):
            step.attrs = self.pool_attrs(node, index, attrs)
        args = [None if n == "" else _runtime(self.consts[n]) for n in node.input]
        out = _OPS[node.op_type](self.module, step, *args)
        outs = out if isinstance(out, list) else [out]
        for name, value in zip(node.output, outs):
            if name:
                self.consts[name] = value if isinstance(value, (torch.Tensor, TensorSequence)) \
                    else _tensor(value)

    def register_constants(self) -> None:
        used = {n for s in self.module._steps for n in s.inputs} | set(self.module.output_names)
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

    def conv(self, node: Any, index: int, attrs: dict[str, Any]) -> None:
        w = self.consts[node.input[1]]
        b = self.const(node.input[2]) if len(node.input) > 2 else None
        n = w.dim() - 2
        if not 1 <= n <= 3:
            raise Unsupported(f"{_where(node, index)}: {n}-D convolutions are not supported")
        auto_pad = attrs.get("auto_pad", "NOTSET")
        pads = [0] * 2 * n if auto_pad == "VALID" else list(attrs.get("pads", [0] * 2 * n))
        symmetric = pads[:n] == pads[n:] and auto_pad in ("NOTSET", "VALID")
        groups = int(attrs.get("group", 1))
        cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[n - 1]
        strides = list(attrs.get("strides", [1] * n))
        dilations = list(attrs.get("dilations", [1] * n))
        layer = skip_init(cls, w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]),
                          stride=tuple(strides), padding=tuple(pads[:n]) if symmetric else 0,
                          dilation=tuple(dilations), groups=groups, bias=b is not None,
                          dtype=w.dtype)
        self.copy_params(layer, w, b)
        extra: dict[str, Any] = {}
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            extra = {"auto_pad": auto_pad, "kernel": list(w.shape[2:]), "strides": strides,
                     "dilations": dilations}
        elif not symmetric:
            extra = {"pad": [p for i in reversed(range(n)) for p in (pads[i], pads[i + n])]}
        # padding computed from the input's size at run time: not a plain conv for the graph IR
        op = "conv_auto_pad" if "auto_pad" in extra else "conv"
        self.add(node, op, [node.input[0]], extra, layer, index, weight=(node.input[1], False))

    @staticmethod
    def copy_params(layer: nn.Module, w: torch.Tensor, b: torch.Tensor | None) -> None:
        with torch.no_grad():
            layer.weight.copy_(w)
            if b is not None:
                layer.bias.copy_(b.reshape(-1))

    def conv_transpose(self, node: Any, index: int, attrs: dict[str, Any]) -> None:
        w = self.consts[node.input[1]]
        b = self.const(node.input[2]) if len(node.input) > 2 else None
        if len(node.input) > 2 and node.input[2] and b is None:
            self.add(node, "ConvTranspose", list(node.input), attrs, index=index)
            return
        n = w.dim() - 2
        if not 1 <= n <= 3:
            raise Unsupported(f"{_where(node, index)}: {n}-D convolutions are not supported")
        groups = int(attrs.get("group", 1))
        cls = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[n - 1]
        layer = skip_init(cls, w.shape[0], w.shape[1] * groups, tuple(w.shape[2:]),
                          stride=tuple(attrs.get("strides", [1] * n)), padding=0,
                          dilation=tuple(attrs.get("dilations", [1] * n)), groups=groups,
                          bias=b is not None, dtype=w.dtype)
        self.copy_params(layer, w, b)
        self.add(node, "conv_transpose", [node.input[0]], {**attrs, "kernel": list(w.shape[2:])},
                 layer, index, weight=(node.input[1], False))

    def batchnorm(self, node: Any, index: int, attrs: dict[str, Any]) -> bool:
        """BatchNormalization with constant statistics -> nn.BatchNorm2d (eval)."""
        params = [self.const(n) for n in node.input[1:5]]
        if attrs.get("training_mode", 0) or not attrs.get("spatial", 1):
            raise Unsupported(f"{_where(node, index)}: training_mode=1 / spatial=0 is not "
                              "supported")
        if any(p is None for p in params) or not params[0].is_floating_point():
            return False
        scale, bias, mean, var = params
        layer = nn.BatchNorm2d(scale.numel(), eps=float(attrs.get("epsilon", 1e-5)),
                               dtype=scale.dtype)
        with torch.no_grad():
            layer.weight.copy_(scale)
            layer.bias.copy_(bias)
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(var)
        self.add(node, "batchnorm", [node.input[0]], {}, layer, index)
        return True

    def linear(self, node: Any, index: int, attrs: dict[str, Any]) -> bool:
        """Gemm/MatMul with a constant 2-D weight -> nn.Linear; False to run it generically."""
        w = self.const(node.input[1])
        if w is None or w.dim() != 2 or node.input[0] in self.consts \
                or not w.is_floating_point():
            return False
        bias, outputs = None, list(node.output)
        if node.op_type == "Gemm":
            transposed = not attrs.get("transB", 0)
            weight = w.t() if transposed else w
            alpha = attrs.get("alpha", 1.0)
            weight = weight * alpha
            if len(node.input) > 2 and node.input[2]:
                c = self.const(node.input[2])
                if c is None or c.numel() not in (1, weight.shape[0]) or \
                        (c.dim() == 2 and c.shape[0] != 1):
                    return False
                bias = c.reshape(-1).expand(weight.shape[0]) * attrs.get("beta", 1.0)
            source = (node.input[1], transposed) if alpha == 1.0 else None
        else:
            weight = w.t()
            source = (node.input[1], True)
            add = self.bias_add(node.output[0], weight.shape[0])
            if add is not None:
                bias, outputs = add
        layer = skip_init(nn.Linear, weight.shape[1], weight.shape[0], bias=bias is not None,
                          dtype=weight.dtype)
        self.copy_params(layer, weight, bias)
        extra = {"transA": 1} if attrs.get("transA", 0) else {}
        self.add(node, "linear", [node.input[0]], extra, layer, index, outputs, source)
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

    def pool(self, node: Any, index: int, attrs: dict[str, Any]) -> None:
        """A pool step; one with padding torch's pools cannot take is a ``*_padded`` step
        (padded explicitly at run time, so not a plain pool for the graph IR)."""
        a = self.pool_attrs(node, index, attrs)
        n = len(a["kernel"])
        pads = a["onnx_pads"]
        plain = a["auto_pad"] in ("NOTSET", "VALID", "") and pads[:n] == pads[n:] and all(
            p <= k // 2 for p, k in zip(pads, a["kernel"]))
        if a["auto_pad"] == "VALID":
            a["pads"], a["onnx_pads"] = [0] * n, [0] * 2 * n
        op = node.op_type
        if not plain and op != "LpPool":
            op = {"MaxPool": "max_pool_padded", "AveragePool": "avg_pool_padded"}[op]
        self.add(node, op, list(node.input), a, index=index)

    def pool_attrs(self, node: Any, index: int, attrs: dict[str, Any]) -> dict[str, Any]:
        kernel = list(attrs["kernel_shape"])
        n = len(kernel)
        if not 1 <= n <= 3:
            raise Unsupported(f"{_where(node, index)}: {n}-D pooling is not supported")
        dilations = list(attrs.get("dilations", [1] * n))
        if node.op_type != "MaxPool" and any(d != 1 for d in dilations):
            raise Unsupported(f"{_where(node, index)}: dilations are not supported")
        pads = list(attrs.get("pads", [0] * 2 * n))
        return {"kernel": kernel, "strides": list(attrs.get("strides", [1] * n)),
                "pads": pads[:n], "onnx_pads": pads, "dilations": dilations,
                "auto_pad": attrs.get("auto_pad", "NOTSET"),
                "ceil_mode": bool(attrs.get("ceil_mode", 0)), "p": attrs.get("p", 2),
                "count_include_pad": bool(attrs.get("count_include_pad", 0))}


def to_torch(model: Any) -> OnnxGraphModule:
    """An ``onnx.ModelProto`` as an ``OnnxGraphModule`` in eval mode; ``Unsupported`` if not."""
    if len(model.functions):
        from onnx import inliner

        model = inliner.inline_local_functions(model)
    return _Builder(model).build().eval()
