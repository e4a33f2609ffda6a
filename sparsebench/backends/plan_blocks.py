"""Transformer blocks of the native plan (``kernel_plan``): subgraphs found in an ONNX BERT-style
graph and run as one native call each (``sparsebench.native.transformer``).

* **layernorm**: a ``LayerNormalization`` over the last axis, or the same decomposed as exports
  before opset 17 write it (``ReduceMean``, ``Sub``, ``Pow 2``, ``ReduceMean``, ``Add eps``,
  ``Sqrt``, ``Div``, then optional ``Mul gamma`` and ``Add beta``), with the ``add`` feeding it
  when that add has no other reader (the residual); ``x + c1 + c2`` with constants ``c1``,
  ``c2`` (BERT's embeddings) adds ``c1 + c2`` once.
* **attention**: from a ``Softmax`` over the last axis back through ``Add(mask)`` (optional),
  ``Mul``/``Div`` by a scalar (optional) to ``MatMul(q', k')`` and forward through
  ``Where(IsNaN(P), 0, P)`` (optional, SDPA exports) and ``MatMul(P, v')`` to the output, where
  q', k', v' are the Linear outputs ``(B, T, H*dh)`` moved by Reshape/Transpose chains (and
  scaled by a scalar, SDPA exports) to ``(B, H, T, dh)`` (k': ``(B, H, dh, T)``) and the output
  is moved back to ``(B, T, H*dh)``. Each chain is checked by running its nodes on element
  indices (what the exporters write differs: one Transpose with perm (0, 2, 3, 1), or two, or
  3-D reshapes in between), every intermediate must be read once. The subgraph becomes one
  call on the Linear outputs: no transposes. The mask is whatever computes it (a ``keymask``
  block, or torch steps once per call).

* **keymask**: the additive attention mask an export computes from its integer
  ``attention_mask`` input (``Cast``/``Reshape``/``Gather``/``And``/``Expand``/``Where`` in the
  SDPA exports): any node giving a float ``(B, 1, R, T)`` buffer whose inputs come, through
  nodes read by no one else, from one ``(B, T)`` integer model input alone, and which computes
  ``on if mask[b, j] != 0 else off``, checked by running those nodes on probe masks (ones,
  zeros, random 0/1, random -2..2). One native call instead of ~9 torch steps, which the
  kernels before them leave with a cold dispatcher (~0.6 ms per call on BERT-base).

* **gather**: an embedding lookup, ``Gather`` on axis 0 of a constant float table by integer
  ids (a model input or a torch step's value), written into the plan's buffer.

* **eltwise** (``eltwise``): what is left after the fusions, a torch step the kernels can run
  after all: the ``add`` of a float buffer of the output's shape and a buffer or constant
  broadcast over its leading axes, the ``mul`` of one by a one-element constant; and
  (``softmax``) a ``Softmax`` over the last axis of a float buffer (a classifier's output):
  a torch step after the kernels pays for torch's cold dispatcher, ~0.3 ms per call.

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
from sparsebench.graph.execute import bind as bind_node

KINDS = ("layernorm", "attention", "gather", "eltwise", "softmax", "keymask")


@dataclass
class Block:
    kind: str                      # one of KINDS
    pos: int                       # index of the last node it covers
    out: str
    ins: tuple[str, ...]           # buffers read
    op: Node                       # the anchor node (LayerNormalization / Softmax)
    covers: list[int]              # node indices it replaces
    label: str
    params: dict[str, Any] = field(default_factory=dict)


def _scalar(c: Any) -> float | None:
    if isinstance(c, (int, float)) and not isinstance(c, bool):
        return float(c)
    if isinstance(c, torch.Tensor) and c.is_floating_point() and c.numel() == 1:
        return float(c.reshape(()))
    return None


class _Finder:
    def __init__(self, planner: Any, consumed: set[int]) -> None:
        self.p, self.g, self.consumed = planner, planner.g, consumed
        self.at = {n.output: i for i, n in enumerate(self.g.nodes)}
        self.static: set[str] | None = None  # the planner's static values, when needed

    def node(self, v: str) -> tuple[int, Node] | None:
        i = self.at.get(v)
        return None if i is None or i in self.consumed else (i, self.g.nodes[i])

    def only_reader(self, v: str, reader: int) -> bool:
        found = self.p.sole_user(v, self.consumed)
        return found is not None and found[0] == reader

    def readers(self, v: str) -> list[tuple[int, Node]]:
        """Every node reading ``v`` (none if ``v`` is the output or a reader is taken)."""
        users = self.p.users.get(v, [])
        if v == self.p.output or any(u in self.consumed for u in users):
            return []
        return [(u, self.g.nodes[u]) for u in users]

    def sole(self, v: str, label: str) -> tuple[int, Node] | None:
        """The one reader of ``v``, when it is a ``label`` node (a call's ONNX op or a kind)."""
        found = self.p.sole_user(v, self.consumed)
        if found is None or label not in (found[1].label, found[1].kind):
            return None
        return found

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
        self.residual(block, x, shape, {i})
        return block

    def decomposed_layernorm(self, i: int, mean: Node) -> Block | None:
        """The LayerNorm of opset < 17 exports, anchored at its first ReduceMean."""
        if mean.kind != "call" or mean.label != "ReduceMean" or not mean.inputs:
            return None
        x = mean.inputs[0]
        shape = self.p.shape(x) if self.p.is_buffer(x) else ()
        if not shape or self.p.shape(mean.output) != shape[:-1] + (1,):  # last axis, keepdims
            return None
        sub = self.sole(mean.output, "Sub")
        if sub is None or sub[1].inputs != (x, mean.output):
            return None
        d = sub[1].output
        users = self.readers(d)
        pw = next((u for u in users if u[1].label == "Pow"), None)
        div = next((u for u in users if u[1].label == "Div"), None)
        if len(users) != 2 or pw is None or div is None or pw[1].inputs[0] != d \
                or _scalar(self.const(pw[1].inputs[1])) != 2.0 or div[1].inputs[0] != d:
            return None
        var = self.sole(pw[1].output, "ReduceMean")
        if var is None or self.p.shape(var[1].output) != shape[:-1] + (1,):
            return None
        add = self.sole(var[1].output, "add")
        eps = _scalar(self.const(_other(add[1], var[1].output))) if add else None
        sqrt = self.sole(add[1].output, "Sqrt") if add and eps is not None and eps >= 0 else None
        if sqrt is None or div[1].inputs[1] != sqrt[1].output \
                or not self.only_reader(sqrt[1].output, div[0]):
            return None
        covers, out, params = [i, sub[0], pw[0], var[0], add[0], sqrt[0], div[0]], div[1].output, \
            {"gamma": None, "beta": None, "eps": eps}
        for key, label in (("gamma", "mul"), ("beta", "add")):
            nxt = self.sole(out, label)
            c = self.const(_other(nxt[1], out)) if nxt else None
            if nxt is None or not isinstance(c, torch.Tensor) or c.numel() != shape[-1] \
                    or not _broadcasts(tuple(c.shape), shape) or not self.p.is_buffer(
                        nxt[1].output):
                break
            params[key] = c
            covers.append(nxt[0])
            out = nxt[1].output
        if params["gamma"] is None and params["beta"] is not None:
            params["gamma"] = torch.ones(shape[-1])
        block = Block("layernorm", max(covers), out, (x,), mean, covers, "layernorm", params)
        self.residual(block, x, shape, {i, sub[0]})
        return block

    def residual(self, block: Block, x: str, shape: tuple[int, ...], readers: set[int]) -> None:
        """Take the ``add`` producing x (read only by the block's ``readers``) into it."""
        found = self.node(x)
        got = {u for u, _ in self.readers(x)}
        if found is None or found[1].kind != "add" or len(found[1].inputs) != 2 \
                or got != readers or len(self.p.users.get(x, [])) != len(readers):
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

    # ------------------------------------------------------------------ key mask

    def mask_chain(self, i: int) -> tuple[set[int], str] | None:
        """(the nodes from the model input to node i, that input) when node i gives a float
        ``(B, 1, R, T)`` buffer computed from one ``(B, T)`` integer model input alone."""
        node = self.g.nodes[i]
        out = node.output
        if node.kind != "call" or not self.p.is_buffer(out) or out == self.p.output:
            return None
        shape = self.p.shape(out)
        if len(shape) != 4 or shape[1] != 1:
            return None
        if self.static is None:
            self.static = self.p.static_values()
        covers, sources, todo = {i}, set(), list(node.inputs)
        while todo:  # the nodes between the model's inputs and out (none consumed)
            v = todo.pop()
            if not v or v in self.static or v in self.g.consts:
                continue
            if v in self.g.inputs:
                sources.add(v)
                continue
            found = self.node(v)
            if found is None:
                return None
            if found[0] not in covers:
                covers.add(found[0])
                todo.extend(found[1].inputs)
        if len(sources) != 1:
            return None
        src = sources.pop()
        m = self.p.ref.get(src)
        if not isinstance(m, torch.Tensor) or m.is_floating_point() \
                or tuple(m.shape) != (shape[0], shape[3]):
            return None
        return covers, src

    def key_masks(self, i: int) -> list[Block] | None:
        """The key-mask blocks of node i and of every other mask computed from the nodes it
        shares with node i's chain (SDPA exports: one Where per layer on one Expand)."""
        first = self.mask_chain(i)
        if first is None:
            return None
        src = first[1]
        chains = {i: first[0]}
        covers = set(first[0])
        grown = True
        while grown:  # every reader of a covered value: covered, static, or another mask
            grown = False
            for j in sorted(covers - set(chains)):  # (a mask's own readers use the mask)
                v = self.p.canon.get(self.g.nodes[j].output, self.g.nodes[j].output)
                if v == self.p.output:
                    return None
                for u in self.p.users.get(v, []):
                    if u in covers or self.g.nodes[u].output in self.static:
                        continue
                    more = self.mask_chain(u)
                    if more is None or more[1] != src:
                        return None
                    chains[u] = more[0]
                    covers |= more[0]
                    grown = True
        blocks = []
        for a, chain in sorted(chains.items()):  # the shared nodes go with the first
            node = self.g.nodes[a]
            values = self.mask_values(chain, src, self.p.ref[src], self.p.shape(node.output))
            if values is None:
                return None
            blocks.append(Block("keymask", a, node.output, (), node,
                                [a] if blocks else sorted(covers), "key mask",
                                {"mask": src, "on": values[0], "off": values[1]}))
        return blocks

    def mask_values(self, chain: set[int], src: str, m: torch.Tensor,
                    shape: tuple[int, ...]) -> tuple[float, float] | None:
        """(on, off) when the chain computes ``on if mask[b, j] != 0 else off`` broadcast to
        ``shape`` for every probe mask, else None."""
        gen = torch.Generator().manual_seed(0)
        probes = [torch.ones(m.shape, dtype=torch.int64), torch.zeros(m.shape, dtype=torch.int64),
                  torch.randint(0, 2, m.shape, generator=gen)]
        if m.dtype != torch.bool:
            probes.append(torch.randint(-2, 3, m.shape, generator=gen))
        got = []
        for probe in probes:
            r = self.run_chain(chain, src, probe.to(m.dtype))
            if not isinstance(r, torch.Tensor) or tuple(r.shape) != shape \
                    or r.dtype != torch.float32:
                return None
            got.append(r)
        on, off = got[0].reshape(-1)[0], got[1].reshape(-1)[0]
        for probe, r in zip(probes, got):
            want = torch.where(probe[:, None, None, :] != 0, on, off).expand(shape)
            if not torch.equal(r, want):
                return None
        return float(on), float(off)

    # ------------------------------------------------------------------ gather

    def gather(self, i: int, node: Node) -> Block | None:
        if node.kind != "call" or node.label != "Gather" or len(node.inputs) != 2:
            return None
        table, ids = node.inputs
        t, idv = self.const(table), self.p.ref.get(ids)
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.dtype != torch.float32 \
                or node.attrs.get("axis", 0) % 2 != 0 or ids in self.g.consts \
                or not isinstance(idv, torch.Tensor) or idv.is_floating_point() \
                or not self.p.is_buffer(node.output) \
                or self.p.shape(node.output) != (*idv.shape, t.shape[1]):
            return None
        return Block("gather", i, node.output, (ids,), node, [i], "embedding",
                     {"table": t, "ids": ids})

    # ------------------------------------------------------------------ attention

    def scalar_factor(self, v: str, reader: int) -> tuple[float, str, int] | None:
        """(factor, x, index) of ``v = x * c`` or ``x / c`` (c a scalar constant, v read only
        by ``reader``), else None."""
        found = self.node(v)
        if found is None or len(found[1].inputs) != 2 or not self.only_reader(v, reader):
            return None
        j, n = found
        a, c = n.inputs
        if n.kind == "mul" and _scalar(self.const(a)) is not None:
            a, c = c, a
        value = _scalar(self.const(c))
        if value is None or self.const(a) is not None:
            return None
        if n.kind == "mul":
            return value, a, j
        if n.kind == "call" and n.label == "Div" and value != 0:
            return 1.0 / value, a, j
        return None

    def made_by_matmul(self, v: str) -> bool:
        """Whether v is a MatMul output, possibly times a scalar (the scores, not the mask)."""
        found = self.node(v)
        if found is not None and found[1].kind in ("mul", "call") and len(found[1].inputs) == 2:
            users = self.p.users.get(v, [])
            scaled = self.scalar_factor(v, users[0]) if len(users) == 1 else None
            if scaled is not None:
                found = self.node(scaled[1])
        return found is not None and found[1].label == "MatMul"

    def layout_chain(self, v: str, reader: int) -> tuple[list[int], str] | None:
        """(nodes, input) of the Reshape/Transpose chain producing v (each value read only by
        the next node), back to the first value not made by one (its input)."""
        covers: list[int] = []
        while True:
            found = self.node(v)
            if found is None or not (found[1].kind == "reshape" or found[1].label == "Transpose"):
                return (covers, v) if covers else None
            if not self.only_reader(v, reader) or not found[1].inputs:
                return None
            reader, v = found[0], found[1].inputs[0]
            covers.append(reader)

    def moves_like(self, chain: list[int], start: str, shape: tuple[int, ...],
                   want: torch.Tensor) -> bool:
        """Whether the chain's nodes (in graph order), run on the element indices of a
        ``shape`` tensor as their input ``start``, give exactly ``want``: the chain moves the
        data as expected (a proof for these shapes: the indices are all distinct)."""
        got = self.run_chain(chain, start, torch.arange(want.numel()).reshape(shape))
        return isinstance(got, torch.Tensor) and got.shape == want.shape \
            and bool(torch.equal(got, want))

    def run_chain(self, chain: list[int] | set[int], start: str, value: Any) -> Any:
        """The last node's output when the chain's nodes run (in graph order) with ``start``
        set to ``value`` and every other value the planning run's (the sizes a Reshape reads);
        None when a node cannot run on it."""
        env: dict[str, Any] = dict(self.p.ref)
        env[start] = value
        try:
            for j in sorted(chain):
                node = self.g.nodes[j]
                env[node.output] = bind_node(node, self.g.module)(env)
        except Exception:  # noqa: BLE001 - a node that cannot run on the probe: no match
            return None
        return env[self.g.nodes[max(chain)].output]

    def projection(self, v: str, reader: int, tokens: int, heads: int,
                   perm: tuple[int, ...]) -> tuple[list[int], str, float] | None:
        """(covered nodes, Linear output, scale factor) of q, k or v as the MatMul reads it:
        ``(B, T, H*dh)`` moved to ``(B, H, T, dh).permute(perm)`` by Reshape/Transpose nodes,
        optionally multiplied by a scalar after or before the moves (the SDPA exports)."""
        factor, covers = 1.0, []
        scaled = self.scalar_factor(v, reader)
        if scaled is not None:
            factor, v, reader = scaled
            covers.append(reader)
        chain = self.layout_chain(v, reader)
        if chain is None:
            return None
        nodes, start = chain
        src = start
        if not covers:
            inner = self.scalar_factor(start, nodes[-1])
            if inner is not None:
                factor, src = inner[0], inner[1]
                covers.append(inner[2])
        shape = self.p.shape(src) if self.p.is_buffer(src) else ()
        if len(shape) != 3 or shape[1] != tokens or shape[2] % heads:
            return None
        b, t, w = shape
        want = torch.arange(b * t * w).reshape(b, t, heads, w // heads).permute(0, 2, 1, 3) \
            .permute(*perm)
        if not self.moves_like(nodes, start, shape, want):
            return None
        return [*covers, *nodes], src, factor

    def attention(self, i: int, sm: Node) -> Block | None:
        if sm.kind != "call" or sm.label != "Softmax" or len(sm.inputs) != 1:
            return None
        opset = getattr(self.g.module, "_opset", 13)
        x = sm.inputs[0]
        shape = self.p.shape(x) if self.p.is_buffer(x) else ()
        if len(shape) != 4 or sm.attrs.get("axis", -1 if opset >= 13 else 1) % 4 != 3:
            return None
        batch, heads, tq, tk = shape
        covers, mask, scale = [i], None, 1.0
        found = self.node(x)
        if found is not None and found[1].kind == "add" and self.only_reader(x, i) \
                and len(found[1].inputs) == 2:
            for s_, m in (found[1].inputs, found[1].inputs[::-1]):
                mshape = self.p.shape(m) if (self.p.is_buffer(m) or isinstance(
                    self.const(m), torch.Tensor)) else ()
                if s_ != m and self.p.is_buffer(s_) and mshape and mshape[-1] == tk \
                        and _broadcasts(mshape, shape) and self.made_by_matmul(s_):
                    covers.append(found[0])
                    x, mask = s_, m
                    found = self.node(s_)
                    break
        scaled = self.scalar_factor(x, covers[-1])
        if scaled is not None:
            scale, x = scaled[0], scaled[1]
            covers.append(scaled[2])
            found = self.node(x)
        if found is None or found[1].label != "MatMul" or len(found[1].inputs) != 2 \
                or not self.only_reader(x, covers[-1]):
            return None
        mm = found[0]
        covers.append(mm)
        q = self.projection(found[1].inputs[0], mm, tq, heads, (0, 1, 2, 3))
        k = self.projection(found[1].inputs[1], mm, tk, heads, (0, 1, 3, 2))
        probs, after = sm.output, i
        nan = self.nan_to_zero(probs)  # SDPA exports: Where(IsNaN(P), 0, P)
        if nan is not None:
            covers += nan[0]
            probs, after = nan[1], nan[0][-1]
        pv = self.p.sole_user(probs, self.consumed)
        if q is None or k is None or pv is None or pv[1].label != "MatMul" \
                or pv[1].inputs[0] != probs or len(pv[1].inputs) != 2:
            return None
        v = self.projection(pv[1].inputs[1], pv[0], tk, heads, (0, 1, 2, 3))
        if v is None or v[2] != 1.0 or len({q[1], k[1], v[1]}) != 3:
            return None
        out = self.merge_heads(pv[0], pv[1].output, (batch, heads, tq, self.p.shape(q[1])[2]
                                                      // heads))
        if out is None:
            return None
        ins = (q[1], k[1], v[1]) + ((mask,) if mask is not None and self.p.is_buffer(mask)
                                    else ())
        params = {"heads": heads, "scale": scale * q[2] * k[2]}
        if mask is not None and not self.p.is_buffer(mask):
            params["mask"] = np.ascontiguousarray(self.const(mask).float().numpy())
        covers += [*q[0], *k[0], *v[0], pv[0], *out[0]]
        return Block("attention", max(covers), out[1], ins, sm, covers, "attention", params)

    def nan_to_zero(self, p: str) -> tuple[list[int], str] | None:
        """([IsNaN, Where], output) of ``Where(IsNaN(p), 0, p)`` when those read p, else None."""
        users = self.readers(p)
        isnan = next((u for u in users if u[1].label == "IsNaN"), None)
        where = next((u for u in users if u[1].label == "Where"), None)
        if len(users) != 2 or isnan is None or where is None:
            return None
        cond, zero, keep = (where[1].inputs + ("", "", ""))[:3]
        if cond != isnan[1].output or keep != p or _scalar(self.const(zero)) != 0.0 \
                or not self.only_reader(cond, where[0]) or not self.p.is_buffer(where[1].output):
            return None
        return [isnan[0], where[0]], where[1].output

    def merge_heads(self, reader: int, v: str, shape: tuple[int, ...]
                    ) -> tuple[list[int], str] | None:
        """(nodes, output) of the Reshape/Transpose chain after P @ V that turns its
        ``(B, H, T, dh)`` output into ``(B, T, H*dh)``, checked on element indices."""
        chain: list[int] = []
        out = v
        while True:
            nxt = self.p.sole_user(out, self.consumed)
            if nxt is None or not (nxt[1].kind == "reshape" or nxt[1].label == "Transpose") \
                    or nxt[1].inputs[0] != out:
                break
            chain.append(nxt[0])
            out = nxt[1].output
        b, h, t, dh = shape
        if not chain or self.p.shape(out) != (b, t, h * dh) or not self.p.is_buffer(out):
            return None
        want = torch.arange(b * h * t * dh).reshape(b, h, t, dh).permute(0, 2, 1, 3) \
            .reshape(b, t, h * dh)
        return (chain, out) if self.moves_like(chain, v, shape, want) else None


def _other(node: Node, value: str) -> str:
    """The input of a binary node that is not ``value``."""
    a, b = (node.inputs + ("", ""))[:2]
    return b if a == value else a


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
        block = (finder.attention(i, node) or finder.layernorm(i, node)
                 or finder.decomposed_layernorm(i, node) or finder.gather(i, node))
        found = [block] if block is not None else finder.key_masks(i) or []
        for b in found:
            consumed.update(b.covers)
            blocks.append(b)
    return blocks


def eltwise(planner: Any, i: int, node: Node, args: tuple[str, ...]) -> Block | None:
    """A leftover ``add``/``mul`` or last-axis ``Softmax`` node (canonical inputs ``args``) as
    a native block."""
    if not planner.is_buffer(node.output):
        return None
    shape = planner.shape(node.output)
    if node.kind == "call" and node.label == "Softmax" and len(args) == 1:
        opset = getattr(planner.g.module, "_opset", 13)
        axis = node.attrs.get("axis", -1 if opset >= 13 else 1)
        # before opset 13 the axis flattens (..., axis:) into one: the last axis only if it is
        if shape and planner.is_buffer(args[0]) and planner.shape(args[0]) == shape \
                and isinstance(axis, int) and axis % len(shape) == len(shape) - 1:
            return Block("softmax", i, node.output, args, node, [i], "softmax")
        return None
    if node.kind not in ("add", "mul") or len(args) != 2:
        return None
    a, b = args
    if node.kind == "add":
        for x, y in ((a, b), (b, a)):
            if not (planner.is_buffer(x) and planner.shape(x) == shape):
                continue
            if planner.is_buffer(y) and native.suffix_of(planner.shape(y), shape):
                return Block("eltwise", i, node.output, (x, y), node, [i], "add", {"alpha": 1.0})
            c = planner.g.consts.get(y)
            if isinstance(c, torch.Tensor) and c.is_floating_point() and c.numel() \
                    and native.suffix_of(tuple(c.shape), shape):
                return Block("eltwise", i, node.output, (x,), node, [i], "add",
                             {"alpha": 1.0, "addend": np.ascontiguousarray(c.float().numpy())})
        return None
    for x, c in ((a, b), (b, a)):
        alpha = _scalar(planner.g.consts.get(c))
        if alpha is not None and planner.is_buffer(x) and planner.shape(x) == shape \
                and np.isfinite(alpha):
            return Block("eltwise", i, node.output, (x,), node, [i], "scale", {"alpha": alpha})
    return None


def bind(kind: str, params: dict[str, Any], ins: list[Any], out: np.ndarray, threads: int,
         env: dict[str, Any]) -> Callable[[], None]:
    """The step callable of a block on the plan's buffers (``ins``: the buffers of the values
    it reads, None for others, which it reads from ``env`` at call time)."""
    if kind == "eltwise":
        addend = ins[1] if len(ins) > 1 else params.get("addend")
        return native.ScaleAdd(params["alpha"], threads).bind(ins[0], out, addend)
    if kind == "keymask":
        src = params["mask"]
        return native.KeyMask(params["on"], params["off"]).bind(lambda: env[src], out)
    if kind == "softmax":
        return native.Softmax(threads).bind(ins[0], out)
    if kind == "gather":
        ids = params["ids"]
        return native.GatherRows(params["table"]).bind(lambda: env[ids], out)
    if kind == "layernorm":
        op = native.AddLayerNorm(params["gamma"], params["beta"], params["eps"], threads)
        residual = ins[1] if len(ins) > 1 else params.get("residual")
        call = op.bind(ins[0], out, residual)
    else:
        op = native.Attention(params["heads"], params["scale"], threads)
        mask = ins[3] if len(ins) > 3 else params.get("mask")
        call = op.bind(ins[0], ins[1], ins[2], out, mask)
    return call
