"""Graph passes: constant folding, alias and dead-code removal, BatchNorm folding, activation
fusion.

All of them rewrite a :class:`~sparsebench.graph.ir.Graph` in place and return it. The one
BatchNorm fold (``fold_bn``) is shared by the graph pass and by ``formats.fold`` (which folds
the torch module the native backend converts):

    s = gamma / sqrt(running_var + eps),   W' = W * s (per output unit),
    b' = (b - mean) * s + beta

Scaling rows keeps every zero weight exactly zero, so pruning masks survive.
"""

from __future__ import annotations

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
