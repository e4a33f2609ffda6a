"""The `native` backend: csr, bsr and structured models on the compiled kernels
(``sparsebench.native``) as one plan of kernel calls.

``prepare`` folds BatchNorm into the preceding layers (``formats.fold_batchnorm``), converts
the folded model again (a structured model's compacted layers become CSR too, zeros dropped),
and builds a flat **plan** for one batch size from the model's graph (``sparsebench.graph``:
torch.fx, or an ONNX import's step list):

* every Conv2d/Linear with a payload is one prepared kernel call on preallocated buffers, with
  fused epilogues: ReLU/GELU, for convolutions also a residual add (ResNet), a constant
  per-channel scale (ResNet ``out_mask``) and a following 2x2-style max-pool (VGG, LeNet-5);
* LayerNorm (with the residual add before it), attention subgraphs and embedding lookups of
  transformer exports are one native call each (``plan_blocks``), GELU is fused into the
  Linear before it; an add of two buffers or a scaling by a constant left over is native too;
* flatten, reshapes of a float buffer and dropout/identity are views (no work);
* anything else (e.g. ResNet's global average pool, ops of a foreign graph, layers a format
  kept dense) runs in torch on views of the same buffers, named in the impl
  (``+torch(adaptive_avg_pool2d)``); torch gets the same thread count.

``run`` copies the input into the plan's input buffer, calls each step (~1 us of Python per
kernel call) and returns a copy of the output. A model that cannot be traced runs as swapped
modules instead (each layer a native call inside the original module), and the impl says so.
"""

from __future__ import annotations

import collections
import concurrent.futures
import ctypes
import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from sparsebench import native
from sparsebench.backends import plan_blocks
from sparsebench.backends.base import Backend, Prepared, Unsupported, swap_layers, validate
from sparsebench.errors import SparsebenchError
from sparsebench.graph import Graph, Node, from_module, run
from sparsebench.graph.execute import bind
from sparsebench.formats import ConvertedModel, SparseWeight, convert, format_family
from sparsebench.formats.fold import fold_batchnorm
from sparsebench.measure.timing import fastest_seconds
from sparsebench.native.memory import HugePageArena
from sparsebench.model_io import compare, make_inputs

_ACTS = ("relu", "gelu")
# Nonzero fraction of a CSR Linear above which torch's dense GEMM/GEMV (MKL) beats the CSR
# kernel. Measured (same process, interleaved, 1 thread): 768x768 and 3072x768 at 128 tokens,
# 2048^2 and 4096^2 at batch 1 all cross between 35% (CSR 1.15-1.29x faster) and 45% (dense
# 1.0-1.2x faster). Layers under DENSE_MIN_MACS (rows x weights per call) stay on the kernel:
# torch's ~10 us call overhead dominates there.
# With 64 or more rows the kernel's K-panel path (AVX-512, K > PANEL_COLS) is faster: the
# 128-token shapes cross between 45% (CSR 1.16-1.18x faster) and 55% (dense 1.03x faster).
DENSE_WINS = 0.40
DENSE_WINS_PANELS = 0.50
DENSE_MIN_MACS = 1 << 22
_GLOBAL_AVG = -1  # _Step.pool: a fused global average pool
# what a torch step of these kinds is called in the impl (other nodes: what they came from)
_KIND_LABELS = {"global_avgpool": "gap", "relu": "relu", "gelu": "gelu", "maxpool": "maxpool",
                "flatten": "flatten", "add": "add", "alias": "alias"}


MERGE_PROJECTIONS = True  # merge_projections on (a switch for benchmarks and tests)
# a merged projection's subsample written by the conv that makes its input (likewise)
SUBSAMPLE_IN_PRODUCER = True
CHAIN_LINEARS = True  # _chain_linears on (likewise)
STEM_POOL = True  # a dense stem conv and its max-pool as one DenseConv2d call (likewise)
HUGE_PAGES = True  # activation buffers on transparent huge pages (native.memory; likewise)
# DenseConv2d computes every tap: below this nonzero fraction the CSR kernel does less work
STEM_MIN_DENSITY = 0.5
# rounds of _choose_per_sample's timing (each mode 1 untimed + 1 timed call per round)
PER_SAMPLE_ROUNDS = 2


@dataclass
class _Step:
    kind: str                          # "linear" | "conv" | "pool" | "view" | "torch"
    pos: int                           # position of the last graph node it covers
    out: str                           # value written
    ins: tuple[str, ...]               # values read
    op: Node
    act: str | None = None
    residual: str | None = None
    scale: torch.Tensor | None = None
    pool: int = 1
    label: str = ""
    params: dict[str, Any] | None = None  # a plan_blocks block's kernel parameters
    weight: SparseWeight | None = None    # a merged weight replacing the layer's (merge_projections)
    merged: str | None = None             # the projection layer merged into this one
    maxpool: dict[str, Any] | None = None  # an overlapping max-pool fused by DenseConv2d
    sub: str | None = None                 # out[:, :, ::2, ::2] also written here (a conv step)

    def name(self) -> str:
        """The layer and what was fused into it, e.g. ``features.0+relu+maxpool2``."""
        if self.kind in plan_blocks.KINDS:
            return self.label
        parts = [self.op.module or self.label or self.kind]
        parts += [self.merged] if self.merged else []
        parts += ["residual"] if self.residual is not None else []
        parts += [self.act] if self.act else []
        parts += ["scale"] if self.scale is not None else []
        parts += [f"maxpool{self.pool}"] if self.pool > 1 else []
        parts += ["maxpool"] if self.maxpool is not None else []
        parts += ["avgpool"] if self.pool == _GLOBAL_AVG else []
        parts += ["subsample"] if self.sub else []
        return "+".join(parts)


def _pool_size(attrs: dict[str, Any], shape: tuple[int, ...]) -> int:
    """The window of a max-pool the conv kernel can fuse (window = stride, no padding), or 0."""
    k, s = attrs["kernel"], attrs["stride"]
    ok = (k[0] == k[1] == s[0] == s[1] and attrs["padding"] == (0, 0)
          and attrs["dilation"] == (1, 1) and k[0] > 1 and len(shape) == 4)
    if not ok:
        return 0
    # ceil_mode only matters when the map does not divide evenly
    if attrs["ceil_mode"] and (shape[2] % k[0] or shape[3] % k[0]):
        return 0
    return k[0]


# ``x[:, :, ::2, ::2]`` as a max-pool (the native pool kernel's attributes)
_SUBSAMPLE = {"kernel": (1, 1), "stride": (2, 2), "padding": (0, 0), "ceil_mode": False}


def _subsample_step(x: str, xs: str, pos: int) -> _Step:
    """A step writing ``x[:, :, ::2, ::2]`` into ``xs`` (the native pool kernel, 1x1 / 2)."""
    node = Node("maxpool", xs, (x,), xs, dict(_SUBSAMPLE))
    return _Step("pool", pos, xs, (x,), node, label="subsample")


class _Planner:
    """Fuses a graph into steps, assigns buffers, and binds the step callables."""

    def __init__(self, graph: Graph, converted: ConvertedModel, threads: int, batch: int,
                 dense_choice: bool = False):
        self.g, self.cv, self.threads, self.batch = graph, converted, threads, batch
        self.dense_choice = dense_choice  # may a dense Linear run on torch's GEMM instead
        self.module = converted.module
        with torch.inference_mode():
            self.ref = run(graph, make_inputs(converted.inputs, batch), self.module)
        self.canon = {v: v for v in self.ref}
        for op in graph.nodes:
            if op.kind == "alias":
                self.canon[op.output] = self.canon[op.inputs[0]]
        self.users: dict[str, list[int]] = {}
        for i, op in enumerate(graph.nodes):
            if op.kind == "alias":
                continue
            for a in op.inputs:
                if a:
                    self.users.setdefault(self.canon[a], []).append(i)
        self.output = self.canon[graph.output]
        # channel slices of a concatenated buffer: value -> (buffer value, first, end channel)
        self.parts: dict[str, tuple[str, int, int]] = {}

    def shape(self, v: str) -> tuple[int, ...]:
        r = self.ref[v]
        return tuple(r.shape) if isinstance(r, torch.Tensor) else ()

    def is_buffer(self, v: str) -> bool:
        r = self.ref[v]
        return (isinstance(r, torch.Tensor) and r.dtype == torch.float32
                and v not in self.g.consts)

    def is_view(self, op: Node, args: tuple[str, ...]) -> bool:
        """A flatten, or a reshape of a float buffer into one of as many elements (every
        reshape kind keeps the C order: view, reshape, squeeze, unsqueeze, unflatten, ONNX
        Reshape/Flatten/Squeeze/Unsqueeze): the same memory, no step at run time."""
        if op.kind == "flatten":
            return self.is_buffer(args[0])
        return (op.kind == "reshape" and bool(args) and self.is_buffer(args[0])
                and self.is_buffer(op.output)
                and self.ref[args[0]].numel() == self.ref[op.output].numel())

    def scale(self, op: Node) -> tuple[str, torch.Tensor] | None:
        """(x, per-channel vector) of a ``mul`` by a constant channel vector, else None."""
        if op.kind != "mul" or len(op.inputs) != 2:
            return None
        a, c = op.inputs
        if a in self.g.consts:
            a, c = c, a
        vec = _scale_vector(self.g.consts.get(c))
        return None if vec is None or a in self.g.consts else (a, vec)

    def sole_user(self, v: str, consumed: set[int]) -> tuple[int, Node] | None:
        """The one op reading ``v`` (not the output, not taken by another chain), else None."""
        users = self.users.get(v, [])
        if v == self.output or len(users) != 1 or users[0] in consumed:
            return None
        return users[0], self.g.nodes[users[0]]

    # ------------------------------------------------------------------ fusion

    def steps(self) -> list[_Step]:
        steps: list[_Step] = []
        consumed: set[int] = set()
        for b in plan_blocks.find(self, consumed):
            steps.append(_Step(b.kind, b.pos, b.out, b.ins, b.op, label=b.label,
                               params=b.params))
        for i, op in enumerate(self.g.nodes):
            if i in consumed or op.kind == "alias":
                continue
            args = tuple(self.canon[a] if a else a for a in op.inputs)
            layer = op.kind in ("conv", "linear")
            sw = self.cv.layers.get(op.module or "") if layer else None
            dense = self.dense_density(sw, args[0]) if sw is not None else None
            if sw is not None and dense is None and self.native_layer(sw, args[0]):
                steps.append(self.fuse(i, op, sw, args[0], consumed))
            elif self.is_view(op, args):
                steps.append(_Step("view", i, op.output, args, op))
            elif op.kind == "maxpool" and self.native_pool(op, args[0]):
                steps.append(_Step("pool", i, op.output, args, op, label="maxpool"))
            elif (b := plan_blocks.eltwise(self, i, op, args)) is not None:
                steps.append(_Step(b.kind, b.pos, b.out, b.ins, op, label=b.label,
                                   params=b.params))
            else:
                label = _KIND_LABELS.get(op.kind) or op.label
                if dense is not None:
                    label = f"{op.module} (dense: {dense:.0%} nonzero)"
                elif layer:
                    label = f"{op.module} (dense layer)"
                elif self.scale(op) is not None:
                    label = "scale"
                steps.append(_Step("torch", i, op.output, args, op, label=label))
        steps.sort(key=lambda s: s.pos)
        return self.merge_projections(steps)

    def merge_projections(self, steps: list[_Step]) -> list[_Step]:
        """A ResNet block's projection shortcut merged into the convolution that adds it: when
        ``y = act(conv_a(b) + conv_p(x0))`` with both convs 1x1 CSR of stride 1 or 2 and the
        same output map, at batch 1, the two inputs (one of stride 2 subsampled,
        ``x[:, :, ::2, ::2]``, by a step writing it there) are placed as channel slices of one
        buffer and the step becomes one stride-1 conv with the weights side by side
        (``[W_a | W_p]``, biases summed): the shortcut's output (ResNet-50: 3.2 MB at stage 1)
        is never stored. Only when that output has no other reader (``MERGE_PROJECTIONS``
        False: never, for A/B runs)."""
        if self.batch != 1 or not MERGE_PROJECTIONS:
            return steps
        made = {s.out: s for s in steps}
        viewed = {v for s in steps if s.kind == "view" for v in (s.out, *s.ins)}
        inputs = {self.canon[v] for v in self.g.inputs}

        def fits(w: SparseWeight, st: tuple[int, int], x: str, size: tuple[int, ...]) -> bool:
            """A 1x1 CSR conv of stride 1 or 2 whose input x (made by a step) gives ``size``."""
            return (w.kind == "csr" and w.kernel_size == (1, 1) and w.padding == (0, 0)
                    and st in ((1, 1), (2, 2)) and x in made and len(self.shape(x)) == 4
                    and tuple(self.ref[x][:, :, ::st[0], ::st[1]].shape[2:]) == size)
        for s in list(steps):
            proj = made.get(s.residual) if s.kind == "conv" and s.residual else None
            if proj is None or proj.kind != "conv" or proj.act or proj.residual \
                    or proj.scale is not None or proj.pool != 1 or proj.weight is not None \
                    or sum(s.residual in t.ins for t in steps) != 1 or s.residual == self.output:
                continue
            (main, short), xs_in = ([self.cv.layers[t.op.module or ""] for t in (s, proj)],
                                    [t.ins[0] for t in (s, proj)])
            strides = [w.stride or (1, 1) for w in (main, short)]
            size = self.shape(s.residual)[2:]
            if not all(fits(w, st, x, size) for w, st, x in zip((main, short), strides, xs_in)) \
                    or main.out_channels != short.out_channels or xs_in[0] == xs_in[1] \
                    or set(xs_in) & (viewed | inputs | set(self.parts) | {self.output}):
                continue
            ins = []
            for st, x in zip(strides, xs_in):
                if st != (1, 1):  # subsampled into the buffer first
                    xs = f"{x}[::2]"
                    self.ref[xs] = self.ref[x][:, :, ::2, ::2].contiguous()
                    self.canon[xs] = xs
                    prod = made[x]
                    if prod.kind == "conv" and prod.maxpool is None and prod.pool == 1 \
                            and prod.sub is None and SUBSAMPLE_IN_PRODUCER:
                        prod.sub = xs  # written by x's conv beside x (else: _make adds a step)
                    else:
                        steps.insert(steps.index(s), _subsample_step(x, xs, s.pos))
                    x = xs
                ins.append(x)
            b, x0 = ins
            cb, cx = self.shape(b)[1], self.shape(x0)[1]
            cat = f"{b}|{x0}"
            self.ref[cat] = torch.cat([self.ref[b], self.ref[x0]], 1)
            self.canon[cat] = cat
            self.parts[b], self.parts[x0] = (cat, 0, cb), (cat, cb, cb + cx)
            dense = np.concatenate([main.to_dense(), short.to_dense()], axis=1)
            dtype = np.int16 if cb + cx <= np.iinfo(np.int16).max else np.int32
            values, cols, ptr = native.csr_from_dense(dense, dtype)
            bias = None if main.bias is None and short.bias is None else (
                (main.bias if main.bias is not None else 0) +
                (short.bias if short.bias is not None else 0)).astype(np.float32)
            s.weight = dataclasses.replace(main, values=values, indices=cols, indptr=ptr,
                                           bias=bias, shape=(main.shape[0], cb + cx),
                                           in_channels=cb + cx, stride=(1, 1))
            s.merged, s.ins, s.residual = proj.op.module, (cat,), None
            steps.remove(proj)
        return steps

    def static_values(self) -> set[str]:
        """Values that are the same on every call of this plan: constants, the shapes of
        tensors (every shape is fixed once the batch is) and what is computed from those
        alone (a dynamic-batch export's Shape/Gather/Concat/Range chains), when they are not
        float buffers. The plan stores them once instead of running their torch steps."""
        static = set(self.g.consts)
        for op in self.g.nodes:
            args = [self.canon.get(a, a) for a in op.inputs if a]
            if self.is_buffer(self.canon[op.output]) or op.output == self.output:
                continue
            if op.label == "Shape" or (args and all(a in static for a in args)):
                static.add(op.output)
                static.add(self.canon[op.output])
        return static

    def dense_density(self, sw: SparseWeight, x: str) -> float | None:
        """The nonzero fraction of a CSR Linear dense enough for torch's GEMM to win
        (``DENSE_WINS``, ``DENSE_WINS_PANELS`` where the K-panel path runs), else None (the
        kernel runs it)."""
        if not (self.dense_choice and sw.layer == "linear" and sw.kind == "csr"
                and self.is_buffer(x) and len(self.shape(x)) >= 2):
            return None
        rows = int(np.prod(self.shape(x)[:-1]))  # batch x tokens: the plan's own shapes
        if rows * sw.shape[0] * sw.shape[1] < DENSE_MIN_MACS:
            return None
        density = sw.nnz / max(1, sw.shape[0] * sw.shape[1])
        wins = DENSE_WINS_PANELS if native.ops.panel_path(rows, sw.shape[1]) else DENSE_WINS
        return density if density > wins else None

    def native_pool(self, op: Node, x: str) -> bool:
        """A max-pool the native pool kernel runs (4-D float map, no dilation, padding at
        most half the window)."""
        at = op.attrs
        return (self.is_buffer(x) and self.is_buffer(op.output) and len(self.shape(x)) == 4
                and tuple(at["dilation"]) == (1, 1)
                and all(2 * p <= k for p, k in zip(at["padding"], at["kernel"])))

    def is_global_pool(self, op: Node, x: str) -> bool:
        """An average pool whose window is the whole (unpadded) map: a global average."""
        at, shape = op.attrs, self.shape(x)
        return (op.kind == "avgpool" and len(shape) == 4 and tuple(at["kernel"]) == shape[2:]
                and tuple(at["padding"]) == (0, 0))

    def native_layer(self, sw: SparseWeight, x: str) -> bool:
        if not self.is_buffer(x):
            return False
        if sw.layer == "linear":  # (rows, features); leading dims (batch, tokens) flattened
            return len(self.shape(x)) >= 2
        return (len(self.shape(x)) == 4 and tuple(sw.dilation or (1, 1)) == (1, 1)
                and (sw.groups or 1) == 1)

    def fuse(self, i: int, op: Node, sw: SparseWeight, x: str, consumed: set[int]) -> _Step:
        """The layer plus the epilogue ops that follow it as sole consumers: for a conv
        ``add`` (residual), activation, channel ``scale``, ``maxpool``; for a linear the
        activation. The fused step runs where the last fused op was."""
        step = _Step("linear" if sw.layer == "linear" else "conv", i, op.output, (x,), op)

        where: dict[int, int] = {}  # id(op) -> index of the ops found below

        def take(kinds: tuple[str, ...]) -> Node | None:
            found = self.sole_user(step.out, consumed)
            if found is None or found[1].kind not in kinds:
                return None
            where[id(found[1])] = found[0]
            return found[1]

        def absorb(nxt: Node) -> None:
            consumed.add(where[id(nxt)])
            step.pos, step.out = where[id(nxt)], nxt.output

        conv = step.kind == "conv"
        nxt = take(("add",)) if conv else None
        if nxt is not None and len(nxt.inputs) == 2:
            a, b = (self.canon[v] for v in nxt.inputs)
            other = b if a == step.out else a
            if other != step.out and self.is_buffer(other) \
                    and self.shape(other) == self.shape(step.out):
                step.residual, step.ins = other, (x, other)
                absorb(nxt)
        nxt = take(_ACTS)
        if nxt is not None:
            step.act = nxt.kind
            absorb(nxt)
        nxt = take(("mul",)) if conv else None
        scaled = self.scale(nxt) if nxt is not None else None
        if scaled is not None and scaled[1].numel() == (sw.out_channels or 0):
            step.scale = scaled[1]
            absorb(nxt)  # type: ignore[arg-type]
        nxt = take(("maxpool", "global_avgpool", "avgpool")) if conv else None
        if nxt is not None and len(self.shape(step.out)) == 4 and (
                nxt.kind == "global_avgpool" or self.is_global_pool(nxt, step.out)):
            step.pool = _GLOBAL_AVG
            absorb(nxt)
        elif nxt is not None and nxt.kind == "maxpool" \
                and _pool_size(nxt.attrs, self.shape(step.out)):
            step.pool = _pool_size(nxt.attrs, self.shape(step.out))
            absorb(nxt)
        elif nxt is not None and nxt.kind == "maxpool" and self.stem_conv(step, sw) \
                and self.native_pool(nxt, step.out) and nxt.attrs["kernel"][0] <= 16:
            step.maxpool = dict(nxt.attrs)
            absorb(nxt)
        return step

    def stem_conv(self, step: _Step, sw: SparseWeight) -> bool:
        """A conv that ``DenseConv2d`` runs with the max-pool after it fused: few input
        channels (an image model's stem), output channels in vectors of 16, mostly nonzero,
        no residual or channel scale, ReLU or no activation."""
        taps = (sw.in_channels or 0) * int(np.prod(sw.kernel_size or (1, 1)))
        return (STEM_POOL and sw.layer == "conv" and step.residual is None
                and step.scale is None and step.act in (None, "relu")
                and 0 < (sw.in_channels or 0) <= native.DenseConv2d.MAX_IN_CHANNELS
                and (sw.out_channels or 0) % 16 == 0 and sw.kind in ("csr", "bsr")
                and sw.nnz >= STEM_MIN_DENSITY * (sw.out_channels or 0) * taps)

    # ------------------------------------------------------------------ buffers

    def buffers(self, steps: list[_Step], arena: HugePageArena) -> dict[str, np.ndarray]:
        """A float32 buffer (or a view of one) per tensor value, reused once dead; new ones
        from ``arena``."""
        storage: dict[str, str] = {v: cat for v, (cat, _, _) in self.parts.items()}
        last: dict[str, int] = {}
        for n, s in enumerate(steps):
            if s.kind == "view":
                storage[s.out] = storage.get(s.ins[0], s.ins[0])
            for v in s.ins:
                if v and self.is_buffer(v):
                    st = storage.get(v, v)
                    last[st] = max(last.get(st, -1), n)
        out_store = storage.get(self.output, self.output)
        last[out_store] = len(steps)
        inputs = [self.canon[v] for v in self.g.inputs if self.is_buffer(self.canon[v])]
        bufs: dict[str, np.ndarray] = {}
        for inp in inputs:  # input buffers are written by run(): never reused
            last[inp] = len(steps)
            bufs[inp] = arena.zeros(self.shape(inp))
        free: dict[tuple[int, ...], list[np.ndarray]] = {}

        def new(v: str) -> np.ndarray:  # a dead buffer of v's shape, or a new one
            pool = free.get(self.shape(v))
            return pool.pop() if pool else arena.zeros(self.shape(v))

        def part(v: str) -> np.ndarray:  # a channel slice (batch 1: contiguous) of its buffer
            cat, c0, c1 = self.parts[v]
            if cat not in bufs:
                bufs[cat] = new(cat)
            return bufs[cat][:, c0:c1]
        for n, s in enumerate(steps):
            if s.kind == "view":
                bufs[s.out] = bufs[s.ins[0]].reshape(self.shape(s.out))
            elif s.out in self.parts:
                bufs[s.out] = part(s.out)
            elif self.is_buffer(s.out) and s.out not in bufs:
                bufs[s.out] = new(s.out)
            if s.sub is not None:  # the subsample a conv writes beside its output
                bufs[s.sub] = part(s.sub)
            for st, end in list(last.items()):
                if end == n and st in bufs and st != out_store and st not in inputs:
                    free.setdefault(bufs[st].shape, []).append(bufs[st])
                    del last[st]
        return bufs


class NativePrepared(Prepared):
    """A model compiled into a flat list of native kernel calls and torch steps."""

    def __init__(self, converted: ConvertedModel, graph: Graph, threads: int, batch: int,
                 label: str) -> None:
        self.converted, self.graph, self.threads, self.label = converted, graph, threads, label
        self._plans: dict[int, tuple[Any, ...]] = {}
        self._names: dict[int, list[str]] = {}
        self._native_layers: set[str] = set()   # layers a native kernel runs, in every plan
        self._torch_layers: set[str] = set()    # layers torch runs (they keep their weights)
        self._per_sample: set[int] = set()  # batch sizes run as one batch-1 plan per sample
        # per-sample batches split across `threads` 1-thread batch-1 plans run concurrently
        self._lanes: list[NativePrepared] = []
        self._lane_pool: concurrent.futures.ThreadPoolExecutor | None = None
        # buffers and K-panel copies on transparent huge pages (native.memory)
        self._arena = HugePageArena(huge=HUGE_PAGES)
        self.kernels, self.torch_ops, self.traffic_bytes = self._build(batch)
        self.impl = _impl(label, self.kernels, threads, self.torch_ops, self.blocks)
        if batch > 1 and self._choose_per_sample(batch):  # before the +native/+torch parts
            mode = "sample-parallel" if self._lanes else "per-sample"
            self.impl = self.impl.replace(f"-t{threads}", f"-t{threads}-{mode}", 1)

    def _build(self, batch: int) -> tuple[list[Any], list[str], int]:
        """Plan the model for one batch size: (kernels, torch op labels, bytes per call)."""
        try:
            return self._make(batch)
        except SparsebenchError as exc:
            raise Unsupported(f"native: {exc}") from exc

    def _make(self, batch: int) -> tuple[list[Any], list[str], int]:
        planner = _Planner(self.graph, self.converted, self.threads, batch,
                           dense_choice=self.label == "csr")
        steps = planner.steps()
        bufs = planner.buffers(steps, self._arena)
        env: dict[str, Any] = dict(self.graph.consts)
        tviews = {v: torch.from_numpy(b) for v, b in bufs.items()}
        env.update(tviews)
        for v, c in planner.canon.items():  # aliases (dropout, folded BN) share the tensor
            if c != v and c in tviews:
                env[v] = tviews[c]
        calls: list[Callable[[], Any]] = []
        names: list[str] = []
        linears: dict[int, tuple[Any, np.ndarray, np.ndarray]] = {}  # call index: op, x, y
        sole: set[int] = set()  # linears (call index) whose output only the next step reads
        readers = collections.Counter(v for s in steps for v in (*s.ins, s.residual) if v)
        viewed = {s.ins[0] for s in steps if s.kind == "view"}
        kernels, torch_ops, traffic = [], [], 0
        self.blocks: list[str] = []  # the plan_blocks steps' labels (the impl names them)
        static = planner.static_values()
        for s in steps:
            if s.kind == "view":
                continue
            if s.kind == "torch" and s.op.output in static:  # fixed for this plan: computed once
                env[s.op.output] = planner.ref[s.op.output]
                continue
            names.append(s.name() if s.kind != "torch" else f"{s.label} (torch)")
            if s.kind == "pool":
                at = s.op.attrs
                pool = native.MaxPool2d(bufs[s.ins[0]], bufs[s.out], at["kernel"], at["stride"],
                                        at["padding"], at["ceil_mode"], self.threads)
                calls.append(pool.run)
                traffic += bufs[s.ins[0]].nbytes + bufs[s.out].nbytes
                continue
            if s.kind in plan_blocks.KINDS:
                ins = [bufs.get(v) for v in s.ins]
                calls.append(plan_blocks.bind(s.kind, s.params or {}, ins, bufs[s.out],
                                              self.threads, env))
                self.blocks.append(s.kind)
                traffic += sum(a.nbytes for a in ins if a is not None) + bufs[s.out].nbytes
                continue
            if s.kind == "torch":
                if s.op.kind in ("conv", "linear"):
                    self._torch_layers.add(s.op.module or "")
                calls.append(_torch_step(s, planner, env, tviews.get(s.out)))
                torch_ops.append(s.label)
                continue
            sw = s.weight or self.converted.layers[s.op.module or ""]
            self._native_layers.add(s.op.module or "")
            if s.merged:
                self._native_layers.add(s.merged)
            op = _kernel(sw, s, self.threads)
            if isinstance(op, native.CSRLinear):
                op.arena = self._arena  # its K-panel copy, if any, on the plan's huge pages
            x, y = bufs[s.ins[0]], bufs[s.out]
            if sw.layer == "linear" and x.ndim > 2:  # a transformer Linear: (B*T, features)
                x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
            if s.pool == _GLOBAL_AVG and y.ndim != 4:  # mean without keepdim: same memory
                y = y.reshape(*y.shape, 1, 1)
            res = bufs[s.residual] if s.residual is not None else None
            if isinstance(op, native.CSRLinear) and res is None:
                linears[len(calls)] = (op, x, y)
                if readers[s.out] == 1 and s.out not in viewed and s.out != planner.output:
                    sole.add(len(calls))
            sub = bufs[s.sub] if s.sub is not None else None
            own_step = sub is not None and not op.writes_subsample(x.shape)
            calls.append(_bind(op, sw, x, y, res, None if own_step else sub))
            kernels.append(op)
            if own_step:  # this plan cannot write it from its registers: a pool step after it
                names[-1] = names[-1].removesuffix("+subsample")
                names.append("subsample")
                pool = native.MaxPool2d(y, sub, threads=self.threads, **_SUBSAMPLE)
                calls.append(pool.run)
                traffic += y.nbytes + sub.nbytes
            if isinstance(op, native.DenseConv2d):
                self.blocks.append("denseconv")  # the impl says a dense kernel ran it
                traffic += op.weight_bytes + x.nbytes + y.nbytes
                continue
            traffic += (op.values.nbytes + op.col_idx.nbytes + op.row_ptr.nbytes
                        + (op.bias.nbytes if op.bias is not None else 0)
                        + x.nbytes + y.nbytes + (res.nbytes if res is not None else 0)
                        + (sub.nbytes if sub is not None and not own_step else 0))
        calls, names, linears = _chain_linears(calls, names, linears, sole)
        calls, names = _group_linears(calls, names, linears)
        out_t = tviews[planner.output] if planner.output in tviews else None
        if out_t is None:
            raise SparsebenchError("the model's output is not a float32 tensor")
        # (value, buffer or None): float inputs are copied into their buffer
        feeds = tuple((v, tviews.get(planner.canon[v])) for v in self.graph.inputs)
        self._plans[batch] = (feeds, tuple(calls), out_t, env)
        self._names[batch] = names
        return kernels, torch_ops, traffic

    def release_setup(self) -> None:
        """Drop the dense weights of the layers the kernels run (planning a new batch size
        needed them; the plans made so far do not)."""
        released = self._native_layers - self._torch_layers
        for name in released:
            layer = self.converted.module.get_submodule(name)
            for pname in ("weight", "bias"):
                if getattr(layer, pname, None) is not None:
                    setattr(layer, pname, nn.Parameter(torch.empty(0), requires_grad=False))
        for node in self.graph.nodes:  # the graph's views of those weights go too
            if node.module in released:
                node.weights = {}
        self._released = True

    def _choose_per_sample(self, batch: int) -> bool:
        """For a model at batch > 1: time the batch plan against the batch-1 plan run once per
        sample and, with several threads, against `threads` 1-thread batch-1 plans each running
        a share of the samples at the same time (no synchronisation inside a sample); keep the
        fastest. A CNN's activations at batch 8 overflow the caches (ResNet-50 stacks 25 MB per
        tensor); BERT-base at batch 8 on a Zen 4 VM: 374 ms per sample against 400 ms as one
        batch at 1 thread, 236 ms on two lanes against 265 ms at 2. True when a per-sample mode
        won (``self._lanes`` set when it was the concurrent one)."""
        if not self.kernels:  # nothing native: torch runs the batch either way
            return False
        xs = make_inputs(self.converted.inputs, batch)
        try:  # a graph with the batch size built in has no batch-1 plan: keep the batch plan
            self._build(1)
        except Unsupported:
            return False
        modes = ["batch", "per-sample"]
        lanes = []
        if self.threads > 1 and batch >= 2:
            lanes = [NativePrepared(self.converted, self.graph, 1, 1, self.label)
                     for _ in range(min(self.threads, batch))]
            modes.append("sample-parallel")

        def use(mode: str) -> None:
            self._per_sample = set() if mode == "batch" else {batch}
            self._lanes = lanes if mode == "sample-parallel" else []
        use("batch")
        want, valid = self.run(*xs), ["batch"]
        for mode in modes[1:]:
            use(mode)
            try:  # the batch plan's output, or the samples are not independent
                same = compare(self.run(*xs), want)[1] <= 1e-4
            except (RuntimeError, SparsebenchError):  # an output that is not batch-major
                same = False
            if same:
                valid.append(mode)
        # the modes in turn, twice: a burst of a noisy machine then hits one round, not one mode
        timings = {m: float("inf") for m in valid}
        for _ in range(PER_SAMPLE_ROUNDS):
            for mode in valid:
                use(mode)
                timings[mode] = min(timings[mode], fastest_seconds(lambda: self.run(*xs), 1))
        best = min(valid, key=lambda m: timings[m])
        self._lanes = lanes if best == "sample-parallel" else []
        if best == "batch":
            self._per_sample = set()
            return False
        self._plans.pop(batch, None)
        self._per_sample = {batch}
        return True

    def _plan(self, batch: int) -> tuple[Any, ...]:
        plan = self._plans.get(batch)
        if plan is None:
            if getattr(self, "_released", False):
                raise SparsebenchError(f"native: batch {batch} was not planned before "
                                       "release_setup()")
            self._build(batch)
            plan = self._plans[batch]
        return plan

    @staticmethod
    def _feed(feeds: tuple[Any, ...], env: dict[str, Any], xs: tuple[torch.Tensor, ...]) -> None:
        for (name, buf), x in zip(feeds, xs):
            if buf is None:   # token ids, masks: read by torch steps from the environment
                env[name] = x
            else:
                copy_into(buf, x)

    def run(self, *xs: torch.Tensor) -> torch.Tensor:
        if self.torch_ops and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        batch = int(xs[0].shape[0])
        if batch in self._per_sample:
            if self._lanes:
                return self._run_sample_parallel(batch, xs)
            return self._run_per_sample(batch, xs)
        feeds, calls, out, env = self._plan(batch)
        self._feed(feeds, env, xs)
        with native.pool_held(self.threads):
            for call in calls:
                call()
        return copied(out)

    def _run_per_sample(self, batch: int, xs: tuple[torch.Tensor, ...],
                        result: torch.Tensor | None = None) -> torch.Tensor:
        """The batch-1 plan on each sample in turn, into ``result`` (made when None)."""
        feeds, calls, out, env = self._plan(1)
        if result is None:
            result = torch.empty((batch, *out.shape[1:]), dtype=out.dtype)
        with native.pool_held(self.threads):
            for i in range(batch):
                self._feed(feeds, env, tuple(x[i:i + 1] for x in xs))
                for call in calls:
                    call()
                copy_into(result[i], out[0])
        return result

    def _run_sample_parallel(self, batch: int, xs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Samples [j * batch / L, (j + 1) * batch / L) on lane j; lane 0 on this thread. The
        kernels release the GIL, so the lanes run on separate cores."""
        lanes = self._lanes
        if self._lane_pool is None:
            self._lane_pool = concurrent.futures.ThreadPoolExecutor(len(lanes) - 1)
        bounds = [batch * j // len(lanes) for j in range(len(lanes) + 1)]
        out = lanes[0]._plan(1)[2]
        result = torch.empty((batch, *out.shape[1:]), dtype=out.dtype)

        def lane(j: int) -> None:  # into its rows of result (no torch.cat: see copy_into)
            lo, hi = bounds[j], bounds[j + 1]
            lanes[j]._run_per_sample(hi - lo, tuple(x[lo:hi] for x in xs), result[lo:hi])
        futures = [self._lane_pool.submit(lane, j) for j in range(1, len(lanes))]
        lane(0)
        for f in futures:
            f.result()
        return result

    def steps(self, *xs: torch.Tensor) -> tuple[list[str], tuple[Callable[[], Any], ...],
                                                Callable[[], Any]]:
        """(names, step callables, input reset) of the plan for this batch, for per-layer
        timing by ``measure.timing.time_steps`` (the sum of the steps exceeds one ``run``)."""
        self.run(*xs)
        batch = int(xs[0].shape[0])
        if batch in self._per_sample:  # each step once per sample, on the first sample
            feeds, one, _, env = self._plans[1]
            steps = tuple(functools.partial(_repeat, c, batch) for c in one)
            first = tuple(x[:1] for x in xs)
            return self._names[1], steps, lambda: self._feed(feeds, env, first)
        feeds, steps, _, env = self._plans[batch]
        return self._names[batch], steps, lambda: self._feed(feeds, env, xs)


def copy_into(dst: torch.Tensor, src: torch.Tensor) -> None:
    """``dst[...] = src``: a raw memmove when both are contiguous CPU float32 of one shape,
    else torch's ``copy_``. Not torch's copy because on 2+ threads it runs as an OpenMP
    region whose threads then spin for milliseconds against the kernels' own pool (BERT-base
    at 2 threads: 33.4 -> 28.7 ms for the output copy alone), and its dispatcher is cold after
    the kernels (~70 us)."""
    if (src.dtype is torch.float32 and dst.dtype is torch.float32 and src.shape == dst.shape
            and src.is_contiguous() and dst.is_contiguous() and src.device.type == "cpu"
            and dst.device.type == "cpu"):
        if src.numel():
            ctypes.memmove(dst.data_ptr(), src.data_ptr(), src.numel() * 4)
    else:
        dst.copy_(src)


def copied(t: torch.Tensor) -> torch.Tensor:
    """A fresh copy of ``t`` made by ``copy_into`` (not ``clone``: see there)."""
    out = torch.empty(t.shape, dtype=t.dtype)
    copy_into(out, t)
    return out


def _repeat(call: Callable[[], Any], times: int) -> None:
    for _ in range(times):
        call()


def _impl(label: str, kernels: list[Any], threads: int, torch_ops: list[str],
          blocks: list[str] | tuple[str, ...] = ()) -> str:
    bits = sorted({k.index_bits for k in kernels if hasattr(k, "index_bits")})
    idx = "+".join(f"i{b}" for b in bits) or "i32"
    impl = f"native-{label}-{native.isa()}-{idx}-t{threads}"
    if blocks:
        impl += "+native(" + ",".join(sorted(set(blocks))) + ")"
    if torch_ops:
        impl += "+torch(" + ",".join(dict.fromkeys(torch_ops)) + ")"
    return impl


def _kernel(sw: SparseWeight, s: _Step, threads: int) -> Any:
    """The prepared native op for one fused step."""
    if s.maxpool is not None:  # a dense stem and its pool (_Planner.stem_conv)
        kh, kw = sw.kernel_size
        dense = sw.to_dense()[: sw.out_channels, : sw.in_channels * kh * kw]
        return native.DenseConv2d(dense.reshape(sw.out_channels, sw.in_channels, kh, kw),
                                  sw.stride, sw.padding, bias=sw.bias, act=s.act,
                                  pool=s.maxpool, threads=threads)
    if sw.layer == "linear":
        if sw.kind == "csr":
            return native.CSRLinear(sw.values, sw.indices, sw.indptr, sw.shape, bias=sw.bias,
                                    act=s.act, threads=threads, index_dtype=sw.indices.dtype)
        prows = sw.stored_shape[0]
        bias = None
        if sw.bias is not None:
            bias = np.zeros(prows, np.float32)
            bias[: sw.shape[0]] = sw.bias
        return native.BSRLinear(sw.values, sw.indices, sw.indptr, sw.stored_shape,
                                blocksize=sw.block, bias=bias, act=s.act, threads=threads,
                                index_dtype=sw.indices.dtype)
    if sw.kind == "csr":
        values, cols, ptr = sw.values, sw.indices, sw.indptr
    else:  # BSR convolution weights run on the CSR conv kernel (explicit zeros dropped)
        values, cols, ptr = native.csr_from_dense(sw.to_dense(), sw.indices.dtype)
    return native.CSRConv2d(values, cols, ptr, sw.in_channels, sw.out_channels, sw.kernel_size,
                            sw.stride, sw.padding, bias=sw.bias, act=s.act, threads=threads,
                            index_dtype=cols.dtype,
                            scale=None if s.scale is None else s.scale.numpy(),
                            pool="avg" if s.pool == _GLOBAL_AVG else s.pool)


def _bind(op: Any, sw: SparseWeight, x: np.ndarray, y: np.ndarray,
          res: np.ndarray | None, sub: np.ndarray | None = None) -> Callable[[], Any]:
    """The step callable; BSR linears with padded shapes pad the input / drop padded rows."""
    if sw.kind == "bsr" and sw.layer == "linear" and sw.stored_shape != sw.shape:
        (rows, cols), (prows, pcols) = sw.shape, sw.stored_shape
        xp = np.zeros((x.shape[0], pcols), np.float32)
        yp = np.zeros((x.shape[0], prows), np.float32)

        def padded() -> None:
            xp[:, :cols] = x
            op.run(xp, yp)
            y[...] = yp[:, :rows]
        return padded
    if sub is not None:
        return functools.partial(op.run, x, y, res, sub)
    if res is not None:
        return functools.partial(op.run, x, y, res)
    return functools.partial(op.run, x, y)


def _chain_linears(calls: list[Callable[[], Any]], names: list[str],
                   linears: dict[int, tuple[Any, np.ndarray, np.ndarray]], sole: set[int]
                   ) -> tuple[list[Callable[[], Any]], list[str],
                              dict[int, tuple[Any, np.ndarray, np.ndarray]]]:
    """A CSR Linear step whose output only the next CSR Linear step reads (a transformer's
    feed-forward pair), both on their K-panel copies, becomes one ``CSRLinearChain`` call named
    by both steps joined with " -> " (the intermediate buffer is then never written). Returns
    the calls, names and the remaining linears at their new call indices."""
    out_calls: list[Callable[[], Any]] = []
    out_names: list[str] = []
    left: dict[int, tuple[Any, np.ndarray, np.ndarray]] = {}
    i = 0
    while i < len(calls):
        a, b = linears.get(i), linears.get(i + 1)
        if (CHAIN_LINEARS and a is not None and b is not None and i in sole
                and b[1].shape == a[2].shape
                and b[1].ctypes.data == a[2].ctypes.data
                and native.ops.panel_path(a[1].shape[0], a[0].shape[1])
                and native.ops.panel_path(b[1].shape[0], b[0].shape[1])):
            out_calls.append(native.CSRLinearChain(a[0], b[0]).bind(a[1], b[2]))
            out_names.append(f"{names[i]} -> {names[i + 1]}")
            i += 2
            continue
        if a is not None:
            left[len(out_calls)] = a
        out_calls.append(calls[i])
        out_names.append(names[i])
        i += 1
    return out_calls, out_names, left


def _group_linears(calls: list[Callable[[], Any]], names: list[str],
                   linears: dict[int, tuple[Any, np.ndarray, np.ndarray]]
                   ) -> tuple[list[Callable[[], Any]], list[str]]:
    """Consecutive CSR Linear steps on the same input of at least ``PANEL_BATCH`` rows (a
    transformer's Q, K, V projections) become one ``CSRLinearGroup`` call, named by its
    steps joined with " + "."""
    out_calls: list[Callable[[], Any]] = []
    out_names: list[str] = []
    i = 0
    while i < len(calls):
        j = i
        if i in linears and linears[i][1].shape[0] >= native.ops.PANEL_BATCH:
            x = linears[i][1]
            outs = {linears[i][2].ctypes.data}
            while (j + 1 in linears and j + 1 - i < native.ops.GROUP_MAX and linears[j + 1][1].shape == x.shape
                   and linears[j + 1][1].ctypes.data == x.ctypes.data
                   and linears[j + 1][2].ctypes.data not in outs):
                j += 1
                outs.add(linears[j][2].ctypes.data)
        if j > i:
            group = native.CSRLinearGroup([linears[k][0] for k in range(i, j + 1)])
            out_calls.append(group.bind(linears[i][1], [linears[k][2] for k in range(i, j + 1)]))
            out_names.append(" + ".join(names[i:j + 1]))
        else:
            out_calls.append(calls[i])
            out_names.append(names[i])
        i = j + 1
    return out_calls, out_names


def _scale_vector(c: Any) -> torch.Tensor | None:
    """A constant that multiplies an NCHW tensor channel-wise, as a (C,) vector, else None."""
    if not isinstance(c, torch.Tensor) or not c.is_floating_point() or c.dim() < 1:
        return None
    shape = list(c.shape)
    while len(shape) < 4:
        shape.insert(0, 1)
    if len(shape) != 4 or shape[0] != 1 or any(s != 1 for s in shape[2:]):
        return None
    return c.reshape(-1).float().contiguous()


def _torch_step(s: _Step, planner: _Planner, env: dict[str, Any],
                out: torch.Tensor | None) -> Callable[[], Any]:
    """A graph node executed by torch on views of the plan's buffers."""
    node_fn = bind(s.op, planner.module)
    fn: Callable[[], Any] = functools.partial(node_fn, env)
    if out is not None:
        return lambda: copy_into(out, fn())
    target = s.op.output

    def store() -> None:
        env[target] = fn()
    return store


class _NativeLayer(nn.Module):
    """One converted layer as a native call inside the original module (swap fallback)."""

    def __init__(self, sw: SparseWeight, threads: int) -> None:
        super().__init__()
        self.sw = sw
        self.op = _kernel(sw, _Step("linear" if sw.layer == "linear" else "conv", 0, "", (),
                                    Node(sw.layer, "", (), "")), threads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sw = self.sw
        xn = np.ascontiguousarray(x.detach().numpy(), dtype=np.float32)
        if sw.layer == "conv":
            return torch.from_numpy(self.op.run(xn))
        lead = xn.shape[:-1]
        xn = xn.reshape(-1, xn.shape[-1])
        (rows, cols), pcols = sw.shape, sw.stored_shape[1]
        if pcols != cols:
            xn = np.pad(xn, ((0, 0), (0, pcols - cols)))
        y = self.op.run(xn)[:, :rows]
        return torch.from_numpy(np.ascontiguousarray(y)).reshape(*lead, rows)


class SwappedPrepared(Prepared):
    """The original module with native layers swapped in (models the plan cannot express)."""

    def __init__(self, converted: ConvertedModel, threads: int, label: str, why: str) -> None:
        self.threads = threads
        self.module = swap_layers(converted, lambda sw: _NativeLayer(sw, threads))  # type: ignore
        self.kernels = [m.op for m in self.module.modules() if isinstance(m, _NativeLayer)]
        self.traffic_bytes = None
        self.impl = _impl(label, self.kernels, threads, []) + "-swapped-modules"
        self.why = why

    def run(self, *xs: torch.Tensor) -> Any:
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            return self.module(*xs)


class NativeBackend(Backend):
    """csr, bsr-RxC and structured formats on the compiled kernels (see the module docstring)."""

    name = "native"
    families = ("csr", "bsr", "structured")

    def unavailable(self) -> str | None:
        return native.available()

    def prepare(self, converted: ConvertedModel, *, threads: int = 1,
                batch: int = 1) -> Prepared:
        self.check(converted, threads, batch)
        torch.set_num_threads(threads)
        fam = format_family(converted.format)
        target = "csr" if fam == "structured" else converted.format
        block = converted.block if converted.format == "bsr" else None
        example = torch.zeros(1, *converted.input_shape)
        try:
            folded = convert(fold_batchnorm(converted.module, converted.input_shape), target,
                             index_dtype=converted.index_dtype, block=block, example=example)
        except SparsebenchError as exc:
            raise Unsupported(f"native: cannot convert the folded model: {exc}") from exc
        label = {"csr": "csr", "structured": "structured-csr"}.get(fam)
        if label is None:
            r, c = folded.block or (4, 4)
            label = f"bsr{r}x{c}"
            if any(sw.layer == "conv" for sw in folded.layers.values()):
                label += "(convs:csr)"
        graph: Graph | None
        try:
            graph = from_module(folded.module, converted.input_shape)
        except SparsebenchError as exc:
            prepared: Prepared = SwappedPrepared(folded, threads, label, str(exc))
            graph = None
        hidden = sorted(set(folded.layers) - {n.module for n in graph.nodes
                                              if n.kind in ("conv", "linear")}) if graph else []
        if hidden:  # inside a module the graph keeps whole (e.g. nn.TransformerEncoderLayer)
            prepared = SwappedPrepared(folded, threads, label,
                                       f"layers inside modules the graph does not open: "
                                       f"{', '.join(hidden[:3])}")
        elif graph is not None:
            try:
                prepared = NativePrepared(folded, graph, threads, batch, label)
            except SparsebenchError as exc:
                raise Unsupported(f"native: {exc}") from exc
        validate(prepared, converted, batch, "native")
        return prepared
