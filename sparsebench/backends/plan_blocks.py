"""Transformer blocks of the native plan (``kernel_plan``): subgraphs found in an ONNX BERT-style
graph and run as one native call each (``sparsebench.native.transformer``).

* **layernorm**: a ``LayerNormalization`` over the last axis, with the ``add`` feeding it when
  that add has no other reader (the residual); ``x + c1 + c2`` with constants ``c1``, ``c2``
  (BERT's embeddings) adds ``c1 + c2`` once.

``find`` returns the blocks of a graph (the planner skips the nodes they cover); ``bind`` makes
a block's step callable on the plan's buffers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from sparsebench import native
from sparsebench.graph import Node

KINDS = ("layernorm",)


@dataclass
class Block:
    kind: str                      # one of KINDS
    pos: int                       # index of the last node it covers
    out: str
    ins: tuple[str, ...]           # buffers read
    op: Node                       # the anchor node (LayerNormalization)
    covers: list[int]              # node indices it replaces
    label: str
    params: dict[str, Any] = field(default_factory=dict)


class _Finder:
    def __init__(self, planner: Any, consumed: set[int]) -> None:
        self.p, self.g, self.consumed = planner, planner.g, consumed
        self.at = {n.output: i for i, n in enumerate(self.g.nodes)}

    def node(self, v: str) -> tuple[int, Node] | None:
        i = self.at.get(v)
        return None if i is None or i in self.consumed else (i, self.g.nodes[i])

    def only_reader(self, v: str, reader: int) -> bool:
        found = self.p.sole_user(v, self.consumed)
        return found is not None and found[0] == reader

    def const(self, v: str) -> Any:
        return self.g.consts.get(v)

    # ------------------------------------------------------------------ layernorm

    def layernorm(self, i: int, ln: Node) -> Block | None:
        if ln.kind != "call" or ln.label != "LayerNormalization" or len(ln.inputs) < 2:
            return None
        x, gamma = ln.inputs[0], ln.inputs[1]
        beta = ln.inputs[2] if len(ln.inputs) > 2 else ""
        if not (self.p.is_buffer(x) and self.p.is_buffer(ln.output)):
            return None
        shape = self.p.shape(x)
        if not shape or ln.attrs.get("axis", -1) % len(shape) != len(shape) - 1:
            return None
        cols = shape[-1]
        g, b = self.const(gamma), self.const(beta) if beta else None
        if not isinstance(g, torch.Tensor) or g.numel() != cols or (beta and (
                not isinstance(b, torch.Tensor) or b.numel() != cols)):
            return None
        block = Block("layernorm", i, ln.output, (x,), ln, [i], "layernorm",
                      {"gamma": g, "beta": b, "eps": float(ln.attrs.get("epsilon", 1e-5))})
        self.residual(block, x, shape)
        return block

    def residual(self, block: Block, x: str, shape: tuple[int, ...]) -> None:
        """Take the ``add`` producing x (read only by the LayerNorm) into the block."""
        found = self.node(x)
        if found is None or found[1].kind != "add" or len(found[1].inputs) != 2 \
                or not self.only_reader(x, block.pos):
            return
        j, add = found
        a, b = add.inputs
        for t, c in ((a, b), (b, a)):
            if self.p.is_buffer(t) and self.p.shape(t) == shape:
                if self.p.is_buffer(c) and self.p.shape(c) == shape:
                    block.ins, block.label = (t, c), "add+layernorm"
                    block.covers.append(j)
                    return
                cv = self.const(c)
                if isinstance(cv, torch.Tensor) and cv.is_floating_point() \
                        and _broadcasts(tuple(cv.shape), shape):
                    inner = self.node(t)  # (x + c1) + c2 with constants: x + (c1 + c2)
                    covers = [j]
                    if inner is not None and inner[1].kind == "add" \
                            and len(inner[1].inputs) == 2 and self.only_reader(t, j):
                        ia, ib = inner[1].inputs
                        for u, c1 in ((ia, ib), (ib, ia)):
                            c1v = self.const(c1)
                            if self.p.is_buffer(u) and self.p.shape(u) == shape \
                                    and isinstance(c1v, torch.Tensor) \
                                    and c1v.is_floating_point() \
                                    and _broadcasts(tuple(c1v.shape), shape):
                                cv, t = c1v.double() + cv.double(), u
                                covers.append(inner[0])
                                break
                    block.ins, block.label = (t,), "add+layernorm"
                    block.params["residual"] = np.ascontiguousarray(
                        np.broadcast_to(cv.float().numpy(), shape), np.float32)
                    block.covers += covers
                    return



def _broadcasts(small: tuple[int, ...], full: tuple[int, ...]) -> bool:
    if len(small) > len(full):
        return False
    return all(s in (1, f) for s, f in zip(small[::-1], full[::-1]))


def find(planner: Any, consumed: set[int]) -> list[Block]:
    """The blocks of the planner's graph; the nodes they cover are added to ``consumed``."""
    finder = _Finder(planner, consumed)
    blocks = []
    for i, node in enumerate(planner.g.nodes):
        if i in consumed:
            continue
        block = finder.layernorm(i, node)
        if block is not None:
            consumed.update(block.covers)
            blocks.append(block)
    return blocks


def bind(kind: str, params: dict[str, Any], ins: list[np.ndarray], out: np.ndarray,
         threads: int) -> Callable[[], None]:
    """The step callable of a block on the plan's buffers."""
    op = native.AddLayerNorm(params["gamma"], params["beta"], params["eps"], threads)
    residual = ins[1] if len(ins) > 1 else params.get("residual")
    return op.bind(ins[0], out, residual)
