"""Facts read off a graph for the conversions: which layer feeds which.

``layer_chains(graph)`` lists, for every Conv2d/Linear node, the BatchNorm applied directly to
its output (if any) and the next Conv2d/Linear its units feed (the *consumer*), when the path
between them only has ops that keep each channel on its own and map an all-zero channel to
zero (ReLU, GELU, pooling, dropout, identity, flatten). ``structured`` removes a dead unit and
the consumer's input columns it fed; a layer whose output also goes elsewhere (a residual add,
a second reader, the graph output) has no consumer and is not compacted.
"""

from __future__ import annotations

from dataclasses import dataclass

from sparsebench.graph.ir import Graph, Node

_PASS = ("relu", "gelu", "maxpool", "avgpool", "global_avgpool", "adaptive_avgpool", "alias",
         "flatten")
LAYER_KINDS = ("conv", "linear")


@dataclass(frozen=True)
class Chain:
    layer: str               # module name
    bn: str | None = None
    consumer: str | None = None


def _consumer(graph: Graph, node: Node) -> tuple[str | None, str | None]:
    bn = None
    value = node.output
    first = True
    while True:
        nxt = graph.sole_consumer(value)
        if nxt is None:
            return bn, None
        if nxt.kind == "batchnorm" and first:
            bn = nxt.module
        elif nxt.kind in LAYER_KINDS and nxt.module and not nxt.own_weights:
            return bn, nxt.module
        elif nxt.kind not in _PASS:
            return bn, None
        first = False
        value = nxt.output


def layer_chains(graph: Graph) -> list[Chain]:
    """One :class:`Chain` per Conv2d/Linear node that names its module, in graph order."""
    out = []
    seen: set[str] = set()
    for node in graph.nodes:
        if node.kind in LAYER_KINDS and node.module and node.module not in seen:
            seen.add(node.module)
            shared = sum(n.module == node.module for n in graph.nodes) > 1
            bn, consumer = (None, None) if shared else _consumer(graph, node)
            out.append(Chain(node.module, bn, consumer))
    return out
