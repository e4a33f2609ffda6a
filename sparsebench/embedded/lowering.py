"""The execution graph of a model as an embedded runtime sees it: ops, buffers, weights.

Read from the shared model graph (``sparsebench.graph``: torch.fx, an ONNX import, or
TorchScript through ONNX) and, as a deployment converter (TFLite, CMSIS-NN) would:

* BatchNorm following a Conv2d/Linear whose output feeds nothing else is folded into it
  (``graph.passes.fold_batchnorm``);
* a ReLU whose input feeds nothing else is fused into the Conv2d/Linear/add that produced it;
* flatten, view, reshape, contiguous, Identity and Dropout (eval mode) are aliases: they
  produce no new buffer (NCHW data is already laid out flat) and do not appear as ops;
  values that are not tensors (sizes) and constants are not buffers either.

Shapes are per sample (no batch dimension). Weights are float32 matrices ``rows x cols``:
Conv2d ``Cout x (Cin/groups * kh * kw)`` (column ``c*kh*kw + ky*kw + kx``), Linear
``out x in``, as in ``sparsebench.formats``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sparsebench import graph as ir
from sparsebench.errors import SparsebenchError
from sparsebench.graph.ir import VIEW_KINDS
from sparsebench.graph.passes import fold_batchnorm, fuse_activations

WEIGHT_KINDS = ("conv", "linear")
# IR kind -> the kind the embedded runtime knows (anything else is "other")
_KINDS = {"conv": "conv", "linear": "linear", "relu": "relu", "maxpool": "maxpool",
          "avgpool": "avgpool", "adaptive_avgpool": "adaptive_avgpool",
          "global_avgpool": "adaptive_avgpool", "batchnorm": "bn"}


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
    source: ir.Graph | None = None    # the model graph (folded and fused) it was lowered from

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


def _np(t: Any) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().to(torch.float32).cpu().numpy().copy()
    return np.asarray(t, dtype=np.float32).copy()


def trace(module: Any, input_shape: tuple[int, ...]) -> Graph:
    """The embedded view of ``module`` (a torch module, an ONNX import or TorchScript) on one
    sample of ``input_shape``; one-line errors."""
    g = ir.from_module(module, tuple(input_shape))
    fold_batchnorm(g)
    fuse_activations(g)
    return lower(g, tuple(input_shape))


def lower(g: ir.Graph, input_shape: tuple[int, ...]) -> Graph:
    """Ops for the tensor-valued nodes of ``g``; views become aliases of their input."""
    alias: dict[str, str] = {}
    tensors = {g.input: Tensor(g.input, tuple(input_shape), -1)}
    ops: list[Op] = []

    def buf(v: str) -> str | None:
        v = alias.get(v, v)
        return v if v in tensors else None

    for node in g.nodes:
        shape = g.shape(node.output)
        inputs = [b for b in (buf(v) for v in node.inputs if v) if b is not None]
        if shape is None or not inputs:   # a size, or computed from sizes only
            continue
        if node.kind in VIEW_KINDS:
            alias[node.output] = inputs[0]
            continue
        op = _op(g, node, inputs)
        op.index, op.output, op.out_shape = len(ops), node.output, shape[1:]
        op.in_shape = tensors[op.inputs[0]].shape
        tensors[node.output] = Tensor(node.output, op.out_shape, op.index)
        ops.append(op)
    output = buf(g.output)
    if output is None:
        raise SparsebenchError("the model's output is not computed from its input")
    if output == g.input:
        raise SparsebenchError("the model's output is its input: nothing to profile")
    return Graph(ops, tensors, g.input, output, tuple(input_shape), g)


def _op(g: ir.Graph, node: ir.Node, inputs: list[str]) -> Op:
    kind = _KINDS.get(node.kind, "other")
    op = Op(-1, node.module or node.name, kind, node.source, inputs, "", (), (),
            attrs=dict(node.attrs), act=node.act, fused=list(node.fused),
            weight_key=node.weight_key)
    w = node.weights
    if kind in WEIGHT_KINDS:
        weight = _np(w["weight"])
        op.weight = weight.reshape(weight.shape[0], -1)
        op.bias = None if w.get("bias") is None else _np(w["bias"])
        op.weight_key = node.weight_key or op.name
    elif kind == "bn":
        var, mean = w["var"].double(), w["mean"].double()
        gamma = w["gamma"].double() if w.get("gamma") is not None else torch.ones_like(var)
        beta = w["beta"].double() if w.get("beta") is not None else torch.zeros_like(var)
        scale = gamma / torch.sqrt(var + node.attrs["eps"])
        op.consts = {"scale": _np(scale), "shift": _np(beta - mean * scale)}
    elif kind == "adaptive_avgpool" and node.kind == "global_avgpool":
        op.attrs = {"output_size": 1}
    elif node.kind in ("add", "mul"):
        if len(inputs) == 2:
            op.kind = node.kind
        else:
            other = next((v for v in node.inputs if v in g.consts), None)
            value = g.consts.get(other) if other is not None else None
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = torch.tensor(float(value))
            if isinstance(value, torch.Tensor):
                op.kind = f"{node.kind}_const"
                op.consts = {"value": _np(value)}
    return op
