"""The execution graph of a model: ops in execution order, their tensors, shapes and weights.

Traced with ``torch.fx`` and shape-propagated on one sample. Then, as a deployment converter
(TFLite, CMSIS-NN) would:

* BatchNorm following a Conv2d/Linear whose output feeds nothing else is folded into it
  (``w' = w * g/sqrt(var+eps)``, ``b' = (b - mean) * g/sqrt(var+eps) + beta``);
* a ReLU whose input feeds nothing else is fused into the Conv2d/Linear/add that produced it;
* flatten, view, reshape, contiguous, Identity and Dropout (eval mode) are aliases: they
  produce no new buffer (NCHW data is already laid out flat) and do not appear as ops.

Shapes are per sample (no batch dimension). Weights are float32 matrices ``rows x cols``:
Conv2d ``Cout x (Cin/groups * kh * kw)`` (column ``c*kh*kw + ky*kw + kx``), Linear
``out x in``, as in ``sparsebench.formats``.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from sparsebench.errors import SparsebenchError

ALIAS_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                 nn.AlphaDropout, nn.Flatten, nn.Unflatten)
ALIAS_FUNCTIONS = {torch.flatten, torch.reshape, F.dropout, torch.squeeze, torch.unsqueeze}
ALIAS_METHODS = {"view", "reshape", "flatten", "contiguous", "squeeze", "unsqueeze"}
RELU_FUNCTIONS = {torch.relu, F.relu, torch.relu_}
MAXPOOL_FUNCTIONS = {torch.max_pool2d, F.max_pool2d}
AVGPOOL_FUNCTIONS = {F.avg_pool2d, torch._C._nn.avg_pool2d}
ADAPTIVE_FUNCTIONS = {F.adaptive_avg_pool2d, torch._C._nn.adaptive_avg_pool2d}
ADD_FUNCTIONS = {operator.add, torch.add, operator.iadd}
MUL_FUNCTIONS = {operator.mul, torch.mul, operator.imul}
WEIGHT_KINDS = ("conv", "linear")


@dataclass
class Tensor:
    """An activation buffer (aliases resolved): per-sample shape, fp32 bytes, producer op."""

    name: str
    shape: tuple[int, ...]
    producer: int = -1          # op index; -1 for the model input

    @property
    def numel(self) -> int:
        return int(math.prod(self.shape))


@dataclass
class Op:
    """One executed operation (after folding and fusion)."""

    index: int
    name: str                    # module path (call_module) or fx node name
    kind: str                    # conv linear relu maxpool avgpool add mul bn other
    source: str                  # what it was traced from: "Conv2d", "torch.max_pool2d", ...
    inputs: list[str]            # activation tensors read
    output: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    weight: np.ndarray | None = None       # float32 rows x cols (conv/linear)
    bias: np.ndarray | None = None         # float32 (rows,)
    consts: dict[str, np.ndarray] = field(default_factory=dict)  # bn scale/shift, mul factor
    act: str | None = None                 # fused activation ("relu")
    fused: list[str] = field(default_factory=list)
    weight_key: str | None = None          # shared by ops calling the same module

    @property
    def positions(self) -> int:
        """Output positions per sample (Ho*Wo for a conv, rows of vectors for a linear)."""
        if self.kind == "conv":
            return int(math.prod(self.out_shape[1:]))
        if self.kind == "linear":
            return int(math.prod(self.out_shape)) // max(1, self.out_shape[-1])
        return 0

    @property
    def bias_len(self) -> int:
        return 0 if self.bias is None else int(self.bias.size)

    @property
    def nnz(self) -> int:
        return int(np.count_nonzero(self.weight)) if self.weight is not None else 0

    @property
    def params(self) -> int:
        n = 0 if self.weight is None else self.weight.size
        n += 0 if self.bias is None else self.bias.size
        return n + sum(int(np.asarray(c).size) for c in self.consts.values())

    @property
    def dense_macs(self) -> int:
        if self.weight is None:
            return 0
        return int(self.weight.size) * self.positions

    @property
    def sparse_macs(self) -> int:
        return self.nnz * self.positions

    @property
    def out_numel(self) -> int:
        return int(math.prod(self.out_shape))


@dataclass
class Graph:
    """Ops in execution order; ``tensors`` maps buffer names to tensors (aliases resolved)."""

    ops: list[Op]
    tensors: dict[str, Tensor]
    input: str
    output: str
    input_shape: tuple[int, ...]

    def weight_ops(self) -> list[Op]:
        """Ops holding a weight matrix, one per distinct weight (first call)."""
        seen: set[str] = set()
        out = []
        for op in self.ops:
            if op.weight is not None and op.weight_key not in seen:
                seen.add(op.weight_key or op.name)
                out.append(op)
        return out

    def consumers(self, tensor: str) -> list[int]:
        return [op.index for op in self.ops if tensor in op.inputs]


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        if len(v) == 0:
            raise ValueError("empty")
        return (int(v[0]), int(v[-1])) if len(v) in (1, 2) else (int(v[0]), int(v[1]))
    return int(v), int(v)


def _bind(names: list[str], args: tuple, kwargs: dict) -> dict[str, Any]:
    bound = dict(zip(names, args))
    bound.update(kwargs)
    return bound


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy().copy()


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if hasattr(node, "meta") else None
    shape = getattr(meta, "shape", None)
    return None if shape is None else tuple(int(s) for s in shape)


def _fn_name(fn: Any) -> str:
    mod = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__name__", str(fn))
    if fn in ADD_FUNCTIONS or fn in MUL_FUNCTIONS:
        return f"operator.{name}" if mod in ("_operator", "operator") else f"torch.{name}"
    return f"{'F' if 'functional' in mod or '_nn' in mod else 'torch'}.{name}"


def trace(module: nn.Module, input_shape: tuple[int, ...]) -> Graph:
    """Trace ``module`` (eval mode) on one zero sample of ``input_shape``; one-line errors."""
    import torch.fx
    from torch.fx.passes.shape_prop import ShapeProp

    if isinstance(module, torch.jit.ScriptModule):
        raise SparsebenchError("a TorchScript model cannot be traced for its execution graph; "
                               "profile a checkpoint, state_dict, pickled module or ONNX file")
    if type(module).__name__ == "OnnxGraphModule":
        raise SparsebenchError("profile and export-c need a torch model traceable by torch.fx; "
                               "models imported from ONNX are not (profile the checkpoint or "
                               "state_dict they were exported from)")
    module = module.eval()
    try:
        gm = torch.fx.symbolic_trace(module)
    except Exception as exc:  # noqa: BLE001 - fx raises many kinds for untraceable code
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise SparsebenchError(f"cannot trace the model's execution graph with torch.fx "
                               f"({type(exc).__name__}: {first})") from None
    try:
        with torch.inference_mode():
            ShapeProp(gm).propagate(torch.zeros(1, *input_shape))
    except Exception as exc:  # noqa: BLE001 - the user's model/input mismatch
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise SparsebenchError(f"model does not run on an input of shape "
                               f"{tuple(input_shape)}: {first}") from None
    return _build(gm, tuple(input_shape))


def _build(gm: Any, input_shape: tuple[int, ...]) -> Graph:
    alias: dict[str, str] = {}           # fx node name -> buffer name
    consts: dict[str, torch.Tensor] = {}
    tensors: dict[str, Tensor] = {}
    ops: list[Op] = []
    input_name = output_name = None

    def buf(arg: Any) -> str | None:
        name = getattr(arg, "name", None)
        return alias.get(name, name) if name in alias or name in tensors else None

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if input_name is not None:
                raise SparsebenchError("profile supports models with one input tensor")
            input_name = node.name
            tensors[node.name] = Tensor(node.name, input_shape, -1)
            continue
        if node.op == "get_attr":
            value = gm
            for part in str(node.target).split("."):
                value = getattr(value, part)
            if isinstance(value, torch.Tensor):
                consts[node.name] = value.detach()
            continue
        if node.op == "output":
            out = node.args[0]
            if isinstance(out, (tuple, list)):
                if len(out) != 1:
                    raise SparsebenchError("profile supports models with one output tensor")
                out = out[0]
            output_name = buf(out)
            if output_name is None:
                raise SparsebenchError("the model's output is not computed from its input")
            continue
        shape = _shape(node)
        if shape is None:  # a size(), getattr or other non-tensor value
            continue
        shape = shape[1:]
        tensor_args = [a for a in node.args if buf(a) is not None]
        if not tensor_args and node.args and isinstance(node.args[0], (list, tuple)):
            tensor_args = [a for a in node.args[0] if buf(a) is not None]
        if not tensor_args:  # computed from constants only (folded at conversion time)
            continue
        src = buf(tensor_args[0])
        op = _classify(gm, node, consts, buf, [buf(a) for a in tensor_args])
        if op is None:  # an alias
            alias[node.name] = src  # type: ignore[assignment]
            continue
        op.index = len(ops)
        op.output = node.name
        op.out_shape = shape
        op.in_shape = tensors[op.inputs[0]].shape
        tensors[node.name] = Tensor(node.name, shape, op.index)
        ops.append(op)
    if input_name is None or output_name is None:
        raise SparsebenchError("the model has no input or no output")
    if output_name == input_name:
        raise SparsebenchError("the model's output is its input: nothing to profile")
    graph = Graph(ops, tensors, input_name, output_name, input_shape)
    _fold_batchnorm(graph)
    _fuse_relu(graph)
    return graph


def _classify(gm: Any, node: Any, consts: dict[str, torch.Tensor], buf: Any,
              inputs: list[str]) -> Op | None:
    """An Op for ``node`` (index/output/shapes filled by the caller), or None for an alias."""
    kwargs = dict(node.kwargs)
    op = Op(-1, node.name, "other", "", inputs, "", (), ())
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        op.name = op.weight_key = str(node.target)
        op.source = type(mod).__name__
        if isinstance(mod, ALIAS_MODULES):
            return None
        if isinstance(mod, nn.Conv2d):
            op.kind = "conv"
            w = _np(mod.weight)
            op.weight = w.reshape(w.shape[0], -1)
            op.bias = None if mod.bias is None else _np(mod.bias)
            op.attrs = {"in_channels": mod.in_channels, "out_channels": mod.out_channels,
                        "kernel": tuple(mod.kernel_size), "stride": tuple(mod.stride),
                        "padding": mod.padding if isinstance(mod.padding, str)
                        else tuple(mod.padding), "dilation": tuple(mod.dilation),
                        "groups": mod.groups, "padding_mode": mod.padding_mode}
        elif isinstance(mod, nn.Linear):
            op.kind = "linear"
            op.weight = _np(mod.weight)
            op.bias = None if mod.bias is None else _np(mod.bias)
            op.attrs = {"in_features": mod.in_features, "out_features": mod.out_features}
        elif isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if mod.running_mean is None or mod.running_var is None:
                op.source += " (no running stats)"
                return op
            op.kind = "bn"
            scale = (mod.weight if mod.weight is not None else torch.ones_like(
                mod.running_var)) / torch.sqrt(mod.running_var + mod.eps)
            shift = (mod.bias if mod.bias is not None else 0) - mod.running_mean * scale
            op.consts = {"scale": _np(scale), "shift": _np(shift)}
        elif isinstance(mod, nn.ReLU):
            op.kind = "relu"
        elif isinstance(mod, nn.MaxPool2d):
            _pool(op, "maxpool", mod.kernel_size, mod.stride, mod.padding, mod.dilation,
                  mod.ceil_mode)
        elif isinstance(mod, nn.AvgPool2d):
            _pool(op, "avgpool", mod.kernel_size, mod.stride, mod.padding, 1, mod.ceil_mode,
                  mod.count_include_pad, mod.divisor_override)
        elif isinstance(mod, nn.AdaptiveAvgPool2d):
            op.kind = "adaptive_avgpool"
            op.attrs = {"output_size": mod.output_size}
        return op
    if node.op == "call_method":
        op.source = f"Tensor.{node.target}"
        if node.target in ALIAS_METHODS:
            return None
        if node.target in ("relu", "relu_"):
            op.kind = "relu"
        return op
    if node.op != "call_function":
        return op
    fn = node.target
    op.source = _fn_name(fn)
    if fn in ALIAS_FUNCTIONS:
        return None
    if fn in RELU_FUNCTIONS:
        op.kind = "relu"
    elif fn in MAXPOOL_FUNCTIONS:
        b = _bind(["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode",
                   "return_indices"], node.args, kwargs)
        if b.get("return_indices"):
            return op
        _pool(op, "maxpool", b["kernel_size"], b.get("stride"), b.get("padding", 0),
              b.get("dilation", 1), b.get("ceil_mode", False))
    elif fn in AVGPOOL_FUNCTIONS:
        b = _bind(["input", "kernel_size", "stride", "padding", "ceil_mode",
                   "count_include_pad", "divisor_override"], node.args, kwargs)
        _pool(op, "avgpool", b["kernel_size"], b.get("stride"), b.get("padding", 0), 1,
              b.get("ceil_mode", False), b.get("count_include_pad", True),
              b.get("divisor_override"))
    elif fn in ADAPTIVE_FUNCTIONS:
        b = _bind(["input", "output_size"], node.args, kwargs)
        op.kind = "adaptive_avgpool"
        op.attrs = {"output_size": b["output_size"]}
    elif fn in ADD_FUNCTIONS or fn in MUL_FUNCTIONS:
        kind = "add" if fn in ADD_FUNCTIONS else "mul"
        others = [a for a in node.args[:2] if buf(a) is None]
        if kind == "add" and "alpha" in kwargs:
            return op
        if len(inputs) == 2:
            op.kind = kind
        elif len(inputs) == 1 and len(others) == 1:
            other = others[0]
            value = consts.get(getattr(other, "name", ""), other)
            if isinstance(value, (int, float)):
                value = torch.tensor(float(value))
            if isinstance(value, torch.Tensor):
                op.kind = f"{kind}_const"
                op.consts = {"value": _np(value)}
    return op


def _pool(op: Op, kind: str, kernel: Any, stride: Any, padding: Any, dilation: Any,
          ceil_mode: bool, count_include_pad: bool = True, divisor: Any = None) -> None:
    try:
        k = _pair(kernel)
        s = _pair(stride) if stride not in (None, [], ()) else k
        attrs = {"kernel": k, "stride": s, "padding": _pair(padding),
                 "dilation": _pair(dilation), "ceil_mode": bool(ceil_mode)}
    except (TypeError, ValueError):
        return
    if kind == "avgpool":
        attrs.update(count_include_pad=bool(count_include_pad), divisor_override=divisor)
    op.kind = kind
    op.attrs = attrs


def _single_consumer(graph: Graph, tensor: str) -> bool:
    uses = graph.consumers(tensor)
    return len(uses) == 1 and tensor != graph.output


def _absorb(graph: Graph, prev: Op, op: Op) -> None:
    """``prev`` takes over ``op``'s output tensor (name and consumers); ``op`` is dropped."""
    out, old = op.output, prev.output
    graph.tensors[out] = graph.tensors.pop(old)
    graph.tensors[out].name = out
    prev.output = out
    graph.ops.remove(op)
    for i, other in enumerate(graph.ops):
        other.inputs = [out if t == old else t for t in other.inputs]
        other.index = i
        graph.tensors[other.output].producer = i


def _producer(graph: Graph, tensor: str) -> Op | None:
    idx = graph.tensors[tensor].producer
    return graph.ops[idx] if idx >= 0 else None


def _fold_batchnorm(graph: Graph) -> None:
    for bn in [op for op in graph.ops if op.kind == "bn"]:
        prev = _producer(graph, bn.inputs[0])
        if (prev is None or prev.kind not in WEIGHT_KINDS or prev.act is not None
                or not _single_consumer(graph, prev.output) or prev.weight is None):
            continue
        scale, shift = bn.consts["scale"], bn.consts["shift"]
        if scale.shape[0] != prev.weight.shape[0]:
            continue
        bias = prev.bias if prev.bias is not None else np.zeros(scale.shape, np.float32)
        prev.weight = (prev.weight.astype(np.float64) * scale[:, None]).astype(np.float32)
        prev.bias = (bias.astype(np.float64) * scale + shift).astype(np.float32)
        prev.fused.append(f"{bn.name} (BatchNorm folded)")
        prev.weight_key = f"{prev.weight_key}+{bn.name}"
        _absorb(graph, prev, bn)


def _fuse_relu(graph: Graph) -> None:
    for relu in [op for op in graph.ops if op.kind == "relu"]:
        prev = _producer(graph, relu.inputs[0])
        if (prev is None or prev.kind not in (*WEIGHT_KINDS, "add") or prev.act is not None
                or not _single_consumer(graph, prev.output)):
            continue
        prev.act = "relu"
        prev.fused.append(f"{relu.name} (ReLU fused)")
        _absorb(graph, prev, relu)
