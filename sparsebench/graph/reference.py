"""The reference evaluator: every node kind in plain numpy (float64), the oracle the native
plan, export-c and the tests are checked against.

It reads only the graph (weights from the nodes, so a folded graph is evaluated as folded);
``call`` and ``reshape`` nodes, and variants numpy does not implement here (ceil-mode or
padded average pools, non-zero padding modes), run their torch implementation on the same
values, so the oracle covers every graph the importers produce.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.special import erf

from sparsebench.graph.execute import bind, feed
from sparsebench.graph.ir import Graph, Node


def _np(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu()
        return v.double().numpy() if v.is_floating_point() else v.numpy()
    return v


def _windows(x: np.ndarray, k: tuple[int, int], s: tuple[int, int], d: tuple[int, int],
             out: tuple[int, int]) -> np.ndarray:
    """(N, C, kh, kw, Ho, Wo) strided windows of a padded NCHW array."""
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = k, s, d, out
    return np.stack([np.stack([x[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh,
                                 j * dw: j * dw + sw * (wo - 1) + 1: sw]
                               for j in range(kw)], 2) for i in range(kh)], 2)


def _out(size: int, k: int, s: int, p: int, d: int, ceil: bool = False) -> int:
    span = size + 2 * p - d * (k - 1) - 1
    n = (-(-span // s) if ceil else span // s) + 1
    if ceil and (n - 1) * s >= size + p:   # the last window must start inside the input
        n -= 1
    return n


def _conv(x: np.ndarray, node: Node) -> np.ndarray | None:
    at = node.attrs
    if isinstance(at["padding"], str) or at.get("padding_mode", "zeros") != "zeros":
        return None
    w, b = _np(node.weights["weight"]), node.weights.get("bias")
    (ph, pw), g = at["padding"], at["groups"]
    n, c, h, wd = x.shape
    co, cg, kh, kw = w.shape
    ho = _out(h, kh, at["stride"][0], ph, at["dilation"][0])
    wo = _out(wd, kw, at["stride"][1], pw, at["dilation"][1])
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols = _windows(xp, (kh, kw), at["stride"], at["dilation"], (ho, wo))
    og = co // g
    y = np.concatenate([np.einsum("ncijhw,ocij->nohw", cols[:, i * cg:(i + 1) * cg],
                                  w[i * og:(i + 1) * og]) for i in range(g)], 1)
    return y if b is None else y + _np(b).reshape(1, -1, 1, 1)


def _maxpool(x: np.ndarray, at: dict[str, Any]) -> np.ndarray:
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (at["kernel"], at["stride"], at["padding"],
                                              at["dilation"])
    ho = _out(x.shape[2], kh, sh, ph, dh, at["ceil_mode"])
    wo = _out(x.shape[3], kw, sw, pw, dw, at["ceil_mode"])
    extra_h = max(0, (ho - 1) * sh + dh * (kh - 1) + 1 - x.shape[2] - 2 * ph)
    extra_w = max(0, (wo - 1) * sw + dw * (kw - 1) + 1 - x.shape[3] - 2 * pw)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph + extra_h), (pw, pw + extra_w)),
                constant_values=-np.inf)
    return _windows(xp, (kh, kw), (sh, sw), (dh, dw), (ho, wo)).max((2, 3))


def _avgpool(x: np.ndarray, at: dict[str, Any]) -> np.ndarray | None:
    if at["ceil_mode"] or at["divisor_override"] or (at["padding"] != (0, 0)
                                                     and not at["count_include_pad"]):
        return None
    (kh, kw), (sh, sw), (ph, pw) = at["kernel"], at["stride"], at["padding"]
    ho, wo = _out(x.shape[2], kh, sh, ph, 1), _out(x.shape[3], kw, sw, pw, 1)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    return _windows(xp, (kh, kw), (sh, sw), (1, 1), (ho, wo)).mean((2, 3))


def _adaptive(x: np.ndarray, size: Any) -> np.ndarray | None:
    ho, wo = (size, size) if isinstance(size, int) else size
    ho, wo = ho or x.shape[2], wo or x.shape[3]
    if x.shape[2] % ho or x.shape[3] % wo:
        return None
    n, c, h, w = x.shape
    return x.reshape(n, c, ho, h // ho, wo, w // wo).mean((3, 5))


def _eval(node: Node, a: list[Any]) -> Any:
    """The numpy value of ``node`` on inputs ``a``, or None when numpy does not cover it."""
    k, at, x = node.kind, node.attrs, a[0] if a else None
    if k == "conv":
        return _conv(x, node)
    if k == "linear":
        b = node.weights.get("bias")
        y = x @ _np(node.weights["weight"]).T
        return y if b is None else y + _np(b)
    if k == "batchnorm":
        w = {n: _np(t) for n, t in node.weights.items() if t is not None}
        shape = (1, -1) + (1,) * (x.ndim - 2)
        y = (x - w["mean"].reshape(shape)) / np.sqrt(w["var"].reshape(shape) + at["eps"])
        y = y * w["gamma"].reshape(shape) if "gamma" in w else y
        return y + w["beta"].reshape(shape) if "beta" in w else y
    if k == "relu":
        return np.maximum(x, 0.0)
    if k == "gelu":
        return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))
    if k == "maxpool":
        return _maxpool(x, at)
    if k == "avgpool":
        return _avgpool(x, at)
    if k == "global_avgpool":
        return x.mean((2, 3), keepdims=at["keepdim"])
    if k == "adaptive_avgpool":
        return _adaptive(x, at["output_size"])
    if k == "flatten":
        return x.reshape(x.shape[0], -1)
    if k == "alias":
        return x
    if k == "add":
        return a[0] + a[1]
    if k == "mul":
        return a[0] * a[1]
    return None


def _torch(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(v))
        return t.float() if t.is_floating_point() else t
    return v


def evaluate(graph: Graph, x: Any) -> dict[str, Any]:
    """Every value of ``graph`` on input ``x`` (an array, or a tuple with one per input;
    float64 numpy arrays for float tensors)."""
    env: dict[str, Any] = {k: _np(v) for k, v in graph.consts.items()}
    env.update({k: _np(torch.as_tensor(v)) for k, v in feed(graph, x).items()})
    for node in graph.nodes:
        args = [env[v] if v else None for v in node.inputs]
        sizes = any(isinstance(v, (tuple, list, int)) for v in args)  # ONNX size arithmetic
        value = None if node.kind in ("call", "reshape") or sizes else _eval(node, args)
        if value is None:   # torch on the same values (own weights: see execute.bind)
            tenv = {v: _torch(env[v]) for v in node.inputs if v}
            with torch.inference_mode():
                value = _np(bind(node, graph.module)(tenv))
        elif node.act == "relu":
            value = np.maximum(value, 0.0)
        elif node.act == "gelu":
            value = 0.5 * value * (1.0 + erf(value / math.sqrt(2.0)))
        env[node.output] = value
    return env


def output(graph: Graph, x: Any) -> np.ndarray:
    return np.asarray(evaluate(graph, x)[graph.output])
