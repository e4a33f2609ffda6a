"""Graph passes: constant folding, alias and dead-code removal, BatchNorm folding, activation
fusion, the exact-erf GELU of ONNX exports as one ``gelu`` node.

All of them rewrite a :class:`~sparsebench.graph.ir.Graph` in place and return it. The one
BatchNorm fold (``fold_bn``) is shared by the graph pass and by ``formats.fold`` (which folds
the torch module the native backend converts):

    s = gamma / sqrt(running_var + eps),   W' = W * s (per output unit),
    b' = (b - mean) * s + beta

Scaling rows keeps every zero weight exactly zero, so pruning masks survive.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from sparsebench.graph.execute import bind
from sparsebench.graph.ir import Graph, Node

WEIGHT_KINDS = ("conv", "linear")
_ACT_NAMES = {"relu": "ReLU", "gelu": "GELU"}


def fold_constants(graph: Graph) -> Graph:
    """Nodes whose inputs are all constants are computed now and become constants."""
    kept: list[Node] = []
    for node in graph.nodes:
        if all(v == "" or v in graph.consts for v in node.inputs):
            with torch.inference_mode():
                value = bind(node, graph.module)(graph.consts)
            graph.consts[node.output] = value.detach() if isinstance(value, torch.Tensor) \
                else value
        else:
            kept.append(node)
    graph.nodes = kept
    return graph


class _RenamedEnv:
    """An environment view that reads some value names under their new names."""

    __slots__ = ("env", "to")

    def __init__(self, env: dict[str, Any], to: dict[str, str]) -> None:
        self.env, self.to = env, to

    def __getitem__(self, name: str) -> Any:
        return self.env[self.to.get(name, name)]

    def __contains__(self, name: object) -> bool:
        return self.to.get(name, name) in self.env  # type: ignore[call-overload]

    def get(self, name: str, default: Any = None) -> Any:
        return self.env.get(self.to.get(name, name), default)


def _reading_renamed(fn: Callable[[Any], Any], to: dict[str, str]) -> Callable[[Any], Any]:
    return lambda env: fn(_RenamedEnv(env, to))


def remove_aliases(graph: Graph) -> Graph:
    """Drop ``alias`` nodes (Identity, dropout in eval mode, a folded BatchNorm): their readers
    read the aliased value instead."""
    to: dict[str, str] = {}
    kept: list[Node] = []
    for node in graph.nodes:
        renamed = {v: to[v] for v in node.inputs if v in to}
        node.inputs = tuple(to.get(v, v) for v in node.inputs)
        if renamed and node.fn is not None:  # fn looks its inputs up by their old names
            node.fn = _reading_renamed(node.fn, renamed)
        if node.kind == "alias" and node.inputs and node.inputs[0]:
            to[node.output] = node.inputs[0]
        else:
            kept.append(node)
    graph.nodes = kept
    graph.output = to.get(graph.output, graph.output)
    return graph


def remove_dead(graph: Graph) -> Graph:
    """Drop nodes the output does not depend on."""
    needed = {graph.output}
    kept: list[Node] = []
    for node in reversed(graph.nodes):
        if node.output in needed:
            kept.append(node)
            needed.update(v for v in node.inputs if v)
    graph.nodes = kept[::-1]
    return graph


def fold_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: dict[str, Any], eps: float
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(W', b') of a Conv2d/Linear followed by an inference BatchNorm (see the docstring);
    computed in float64, returned in the weight's dtype."""
    var, mean = bn["var"].double(), bn["mean"].double()
    gamma = bn["gamma"].double() if bn.get("gamma") is not None else torch.ones_like(var)
    beta = bn["beta"].double() if bn.get("beta") is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + eps)
    w = weight.double() * scale.view(-1, *([1] * (weight.dim() - 1)))
    b = bias.double() if bias is not None else torch.zeros_like(var)
    return w.to(weight.dtype), ((b - mean) * scale + beta).to(weight.dtype)


def foldable_batchnorms(graph: Graph) -> list[tuple[Node, Node]]:
    """(layer, batchnorm) pairs where the BatchNorm is the only reader of a Conv2d/Linear
    output with as many channels (a Linear's only when its output is (batch, features))."""
    pairs = []
    for bn in graph.nodes:
        if bn.kind != "batchnorm" or not bn.inputs:
            continue
        prev = graph.producer(bn.inputs[0])
        if prev is None or prev.kind not in WEIGHT_KINDS or prev.act is not None \
                or graph.sole_consumer(prev.output) is not bn:
            continue
        units = prev.weights["weight"].shape[0]
        if bn.weights["mean"].numel() != units:
            continue
        shape = graph.shape(prev.output)
        if prev.kind == "linear" and (len(shape) != 2 if shape is not None
                                      else bn.source != "BatchNorm1d"):
            continue
        pairs.append((prev, bn))
    return pairs


def _absorb(graph: Graph, prev: Node, node: Node) -> None:
    """``prev`` takes over ``node``'s output value (name and readers); ``node`` is dropped."""
    graph.values.pop(prev.output, None)
    prev.output = node.output
    graph.nodes.remove(node)


def fold_batchnorm(graph: Graph) -> Graph:
    """Fold every foldable BatchNorm into the layer before it (the layer's ``weights`` become
    the folded copies, ``own_weights`` is set)."""
    for prev, bn in foldable_batchnorms(graph):
        w, b = fold_bn(prev.weights["weight"], prev.weights.get("bias"), bn.weights,
                       bn.attrs["eps"])
        prev.weights = {"weight": w, "bias": b}
        prev.own_weights = True
        prev.fused.append(f"{bn.module or bn.name} (BatchNorm folded)")
        prev.weight_key = f"{prev.weight_key or prev.name}+{bn.module or bn.name}"
        _absorb(graph, prev, bn)
    return graph


def fuse_activations(graph: Graph, acts: tuple[str, ...] = ("relu",),
                     into: tuple[str, ...] = ("conv", "linear", "add")) -> Graph:
    """An activation whose input is the only use of a ``into`` node's output is fused into
    that node (``act``)."""
    for node in [n for n in graph.nodes if n.kind in acts]:
        prev = graph.producer(node.inputs[0])
        if prev is None or prev.kind not in into or prev.act is not None \
                or graph.sole_consumer(prev.output) is not node:
            continue
        prev.act = node.kind
        prev.fused.append(f"{node.module or node.name} ({_ACT_NAMES.get(node.kind, node.kind)} "
                          "fused)")
        _absorb(graph, prev, node)
    return graph


# ----------------------------------------------------------------------------- GELU

_GELU_TOL = 1e-6  # relative tolerance on the pattern's constants (float32 sqrt(2) is 1.7e-8 off)


def _scalar_const(graph: Graph, value: str) -> float | None:
    """The value of a one-element floating-point constant, else None."""
    c = graph.consts.get(value)
    if isinstance(c, float):
        return c
    if isinstance(c, torch.Tensor) and c.is_floating_point() and c.numel() == 1:
        return float(c.reshape(()))
    return None


def _is_const(graph: Graph, value: str, want: float) -> bool:
    got = _scalar_const(graph, value)
    return got is not None and abs(got - want) <= _GELU_TOL * abs(want)


def _binary(node: Node | None, kinds: tuple[str, ...]) -> bool:
    return node is not None and node.kind in kinds and len(node.inputs) == 2


def _other(node: Node, value: str) -> str | None:
    """The input of binary ``node`` that is not ``value`` (None if ``value`` is not read)."""
    a, b = node.inputs
    return b if a == value else a if b == value else None


def _erf_argument(graph: Graph, node: Node | None) -> str | None:
    """x of ``x / sqrt(2)`` (ONNX Div) or ``x * (1/sqrt(2))``, else None."""
    if node is None or len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if node.kind == "call" and node.label == "Div":
        return a if a not in graph.consts and _is_const(graph, b, math.sqrt(2.0)) else None
    if node.kind == "mul":
        for x, c in ((a, b), (b, a)):
            if x not in graph.consts and _is_const(graph, c, math.sqrt(0.5)):
                return x
    return None


def _gelu_match(graph: Graph, erf: Node) -> tuple[str, list[Node]] | None:
    """(x, the pattern's nodes, last one last) of ``x * 0.5 * (1 + erf(x / sqrt 2))`` around
    an Erf node: Div by sqrt(2) or Mul by 1/sqrt(2); the 0.5 multiplied into x, into
    ``1 + erf`` or into their product. Intermediate values must have no other reader."""
    div = graph.producer(erf.inputs[0]) if len(erf.inputs) == 1 else None
    x = _erf_argument(graph, div)
    if x is None or graph.sole_consumer(div.output) is not erf:  # type: ignore[union-attr]
        return None
    one = graph.sole_consumer(erf.output)
    if not _binary(one, ("add",)) or not _is_const(graph, _other(one, erf.output) or "", 1.0):
        return None
    first = graph.sole_consumer(one.output)  # type: ignore[union-attr]
    if not _binary(first, ("mul",)):
        return None
    nodes = [div, erf, one, first]
    partner = _other(first, one.output)  # type: ignore[union-attr,arg-type]
    half_x = graph.producer(partner or "")
    if partner == x or _is_const(graph, partner or "", 0.5):  # (x or 0.5) * (1 + erf), then
        last = graph.sole_consumer(first.output)             # the other one
        want = 0.5 if partner == x else None
        if not _binary(last, ("mul",)):
            return None
        rest = _other(last, first.output)  # type: ignore[union-attr,arg-type]
        if rest is None or not (_is_const(graph, rest, 0.5) if want else rest == x):
            return None
        return x, [*nodes, last]  # type: ignore[list-item]
    if _binary(half_x, ("mul",)) and graph.sole_consumer(partner or "") is first:
        rest = _other(half_x, x)  # type: ignore[arg-type]
        if rest is not None and rest != x and _is_const(graph, rest, 0.5):
            return x, [half_x, *nodes]  # type: ignore[list-item]
    return None


def fuse_gelu(graph: Graph) -> Graph:
    """Replace the exact-erf GELU as the ONNX exporters write it (see ``_gelu_match``) by one
    ``gelu`` node; every constant is checked to 1e-6, so a near-miss is left alone."""
    for erf in [n for n in graph.nodes if n.kind == "call" and n.label == "Erf"]:
        if erf not in graph.nodes:
            continue
        found = _gelu_match(graph, erf)
        if found is None:
            continue
        x, nodes = found
        last = nodes[-1]
        gelu = Node("gelu", last.name, (x,), last.output, source="Erf (GELU)")
        graph.nodes[graph.nodes.index(last)] = gelu
        for node in nodes[:-1]:
            graph.nodes.remove(node)
            graph.values.pop(node.output, None)
    return graph
