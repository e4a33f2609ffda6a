"""The activation arena: tensor lifetimes along the execution order, packed first-fit.

As TensorFlow Lite Micro's ``GreedyMemoryPlanner``: every buffer's size is rounded up to
``ALIGN`` (16) bytes; buffers are placed in order of decreasing size (ties: creation order),
each at the lowest offset where it overlaps no already-placed buffer whose lifetime overlaps
its own. Lifetimes are inclusive op indices: the model input lives from op 0, every other
buffer from the op that writes it to the last op that reads it, the output to the last op.
So an op's inputs and output never share memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from sparsebench.embedded.lowering import Graph

ALIGN = 16


@dataclass
class Buffer:
    name: str
    size: int          # bytes, aligned
    first: int         # op index that creates it (0 for the input)
    last: int          # last op index that reads it
    offset: int = -1


@dataclass
class ArenaPlan:
    buffers: list[Buffer]
    size: int          # arena bytes: max(offset + size)
    lower_bound: int   # max over ops of the live bytes (no packing can beat it)

    def offset(self, name: str) -> int:
        return next(b.offset for b in self.buffers if b.name == name)


def align(n: int, a: int = ALIGN) -> int:
    return (int(n) + a - 1) // a * a


def lifetimes(graph: Graph, elem_bytes: int = 4) -> list[Buffer]:
    """One buffer per activation tensor, in creation order."""
    last_op = max(len(graph.ops) - 1, 0)
    bufs = []
    for name, t in graph.tensors.items():
        first = max(t.producer, 0)
        uses = graph.consumers(name)
        last = max(uses) if uses else first
        if name == graph.output:
            last = last_op
        bufs.append(Buffer(name, align(t.numel * elem_bytes), first, max(last, first)))
    return sorted(bufs, key=lambda b: (b.first, b.name != graph.input))


def plan(buffers: list[Buffer]) -> ArenaPlan:
    """Greedy first-fit by decreasing size (offsets written into the buffers)."""
    order = sorted(range(len(buffers)), key=lambda i: -buffers[i].size)  # stable: ties keep order
    placed: list[Buffer] = []
    for i in order:
        b = buffers[i]
        live = sorted((p for p in placed if p.first <= b.last and b.first <= p.last),
                      key=lambda p: p.offset)
        offset = 0
        for p in live:
            if p.offset - offset >= b.size:
                break
            offset = max(offset, p.offset + p.size)
        b.offset = offset
        placed.append(b)
    size = max((b.offset + b.size for b in buffers), default=0)
    steps = max((b.last for b in buffers), default=-1) + 1
    bound = max((sum(b.size for b in buffers if b.first <= t <= b.last) for t in range(steps)),
                default=0)
    return ArenaPlan(buffers, size, bound)


def plan_graph(graph: Graph, elem_bytes: int = 4) -> ArenaPlan:
    return plan(lifetimes(graph, elem_bytes))
