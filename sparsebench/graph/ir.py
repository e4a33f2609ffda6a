"""The model graph every stage reads: nodes in execution order over named values.

A :class:`Graph` is what the importers (``from_fx``, ``from_onnx``) produce and what the passes,
the reference evaluator, the native planner, ``profile`` and ``export-c`` read. Values are
named (torch.fx node names, ONNX value names) and typed after shape inference
(:func:`sparsebench.graph.execute.infer`): ``shape`` with the batch dimension first (at batch
1), ``dtype`` a torch dtype name; a value that is not a tensor (a size, a tuple of sizes) has
``shape = None``. Constants (weights the graph reads as values, folded subgraphs) sit in
``consts``. A graph has one or more inputs (``inputs``, in call order: token ids, masks,
images) and one output.

Node kinds (``KINDS``): the ops every consumer understands, each with fixed attributes;
anything else is a ``call`` whose ``fn`` computes it with torch. Conv/linear/batchnorm nodes
name their torch submodule (``module``), so a format that swaps the layer changes what runs,
and hold their parameters in ``weights`` (the module's tensors, or folded copies after
``passes.fold_batchnorm``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

KINDS = {
    "conv": "Conv2d; weights weight (Cout, Cin/g, kh, kw), bias; attrs in_channels, "
            "out_channels, kernel, stride, padding, dilation, groups, padding_mode",
    "linear": "Linear over the last axis; weights weight (out, in), bias; attrs in_features, "
              "out_features",
    "batchnorm": "inference BatchNorm over axis 1; weights mean, var, gamma, beta; attrs eps",
    "relu": "max(x, 0)",
    "gelu": "exact (erf) GELU",
    "maxpool": "2-D max pool; attrs kernel, stride, padding, dilation, ceil_mode",
    "avgpool": "2-D average pool; attrs kernel, stride, padding, dilation, ceil_mode, "
               "count_include_pad, divisor_override",
    "global_avgpool": "mean over H, W; attrs keepdim",
    "adaptive_avgpool": "adaptive average pool; attrs output_size",
    "flatten": "flatten from axis 1 (a view)",
    "reshape": "any other view or reshape (computed by fn)",
    "alias": "identity (dropout in eval mode, Identity, a folded BatchNorm)",
    "add": "x + y (either may be a constant)",
    "mul": "x * y (either may be a constant)",
    "call": "anything else, computed by fn",
}
VIEW_KINDS = ("alias", "flatten", "reshape")


@dataclass
class Value:
    name: str
    shape: tuple[int, ...] | None = None  # batch first, at batch 1; None: not a tensor
    dtype: str | None = None


@dataclass
class Node:
    """``output = kind(inputs...)``. ``fn(env)`` (env: value name -> value) computes ``call``
    and ``reshape`` nodes."""

    kind: str
    name: str
    inputs: tuple[str, ...]
    output: str
    attrs: dict[str, Any] = field(default_factory=dict)
    module: str | None = None
    source: str = ""              # what it was imported from: "Conv2d", "F.relu", "MaxPool"
    fn: Callable[[dict[str, Any]], Any] | None = None
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    act: str | None = None        # a fused activation (passes.fuse_activations)
    fused: list[str] = field(default_factory=list)
    weight_key: str | None = None  # shared by nodes calling the same module
    own_weights: bool = False     # a pass changed ``weights``: executors use them, not module

    @property
    def label(self) -> str:
        """The short name of what it was imported from (``max_pool2d``, ``view``, ``Relu``)."""
        return self.source.rpartition(".")[2] or self.kind


@dataclass
class Graph:
    """``inputs``: the graph's input values in call order (``forward(*inputs)``)."""

    nodes: list[Node]
    inputs: list[str]
    output: str
    values: dict[str, Value]
    consts: dict[str, Any]
    module: nn.Module | None = None   # the torch module ``Node.module`` names refer to

    @property
    def input(self) -> str:
        """The first input (code that handles single-input graphs)."""
        return self.inputs[0]

    def producer(self, value: str) -> Node | None:
        return next((n for n in self.nodes if n.output == value), None)

    def consumers(self, value: str) -> list[Node]:
        return [n for n in self.nodes if value in n.inputs]

    def sole_consumer(self, value: str) -> Node | None:
        """The one node reading ``value`` (once), when it is not also the graph output."""
        users = self.consumers(value)
        if value == self.output or len(users) != 1 or users[0].inputs.count(value) != 1:
            return None
        return users[0]

    def is_const(self, value: str) -> bool:
        return value in self.consts

    def tensor_inputs(self, node: Node) -> list[str]:
        """The inputs computed from the graph input (not constants, not absent)."""
        return [v for v in node.inputs if v and v not in self.consts]

    def shape(self, value: str) -> tuple[int, ...] | None:
        v = self.values.get(value)
        return None if v is None else v.shape
