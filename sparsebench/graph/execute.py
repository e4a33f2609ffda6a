"""The graph executed with torch: one implementation per node kind.

``bind(node, module)`` is a node as a callable over an environment (value name -> value); the
native backend runs the ops it has no kernel for this way, on views of its buffers. ``run``
evaluates a whole graph; ``infer`` fills every value's shape and dtype from a run at batch 1.
Conv/linear/batchnorm nodes call the module's submodule by name, so swapped layers run.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.errors import SparsebenchError
from sparsebench.graph.ir import Graph, Node, Value

Env = dict[str, Any]


def _batchnorm(bn: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    if isinstance(bn, nn.Identity):
        return bn
    return lambda x: F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False,
                                  0.0, bn.eps)


def bind(node: Node, module: nn.Module | None) -> Callable[[Env], Any]:
    """``node`` as ``fn(env) -> value`` (with its fused activation, if any)."""
    fn = _bind(node, module)
    if node.act is None:
        return fn
    act = torch.relu if node.act == "relu" else F.gelu
    return lambda env: act(fn(env))


def _own_layer(node: Node) -> Callable[[torch.Tensor], torch.Tensor]:
    w, b, at = node.weights["weight"], node.weights.get("bias"), node.attrs
    if node.kind == "linear":
        return lambda x: F.linear(x, w, b)
    return lambda x: F.conv2d(x, w, b, at["stride"], at["padding"], at["dilation"], at["groups"])


def _bind(node: Node, module: nn.Module | None) -> Callable[[Env], Any]:
    k, a, at = node.kind, node.inputs, node.attrs
    if k in ("conv", "linear") and node.own_weights:
        own = _own_layer(node)
        return lambda env: own(env[a[0]])
    if k in ("conv", "linear", "batchnorm"):
        if module is None:
            raise SparsebenchError(f"node {node.name!r} needs the module holding its layer")
        layer = module.get_submodule(node.module or "")
        f = _batchnorm(layer) if k == "batchnorm" else layer
        return lambda env: f(env[a[0]])
    if k == "relu":
        return lambda env: torch.relu(env[a[0]])
    if k == "gelu":
        return lambda env: F.gelu(env[a[0]])
    if k == "maxpool":
        return lambda env: F.max_pool2d(env[a[0]], at["kernel"], at["stride"], at["padding"],
                                        at["dilation"], at["ceil_mode"])
    if k == "avgpool":
        return lambda env: F.avg_pool2d(env[a[0]], at["kernel"], at["stride"], at["padding"],
                                        at["ceil_mode"], at["count_include_pad"],
                                        at["divisor_override"])
    if k == "global_avgpool":
        keep = at["keepdim"]
        return lambda env: env[a[0]].mean((2, 3), keepdim=keep)
    if k == "adaptive_avgpool":
        return lambda env: F.adaptive_avg_pool2d(env[a[0]], at["output_size"])
    if k == "flatten":
        return lambda env: torch.flatten(env[a[0]], 1)
    if k == "alias":
        return lambda env: env[a[0]]
    if k in ("add", "mul"):
        return _arith(node)
    if node.fn is None:
        raise SparsebenchError(f"node {node.name!r} ({node.kind}) has no implementation")
    return node.fn


def feed(graph: Graph, x: Any) -> dict[str, Any]:
    """The graph inputs bound to ``x``: one tensor, or a tuple with one per input."""
    xs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    if len(xs) != len(graph.inputs):
        raise SparsebenchError(f"the graph takes {len(graph.inputs)} inputs "
                               f"({', '.join(graph.inputs)}), got {len(xs)}")
    return dict(zip(graph.inputs, xs))


def _arith(node: Node) -> Callable[[Env], Any]:
    """``add``/``mul`` on tensors; sizes (tuples of ints, from an ONNX import) go to the
    node's own ``fn``, which knows the op's arithmetic on them."""
    a, own = node.inputs, node.fn
    op = torch.add if node.kind == "add" else torch.mul

    def fn(env: Env) -> Any:
        x, y = env[a[0]], env[a[1]]
        if own is not None and (isinstance(x, (tuple, list)) or isinstance(y, (tuple, list))):
            return own(env)
        return x + y if op is torch.add else x * y
    return fn


def run(graph: Graph, x: Any, module: nn.Module | None = None) -> Env:
    """Every value of ``graph`` on input ``x`` (a tensor, or a tuple of one tensor per input;
    ``module``: where layers are looked up, by default the graph's own)."""
    module = graph.module if module is None else module
    env: Env = dict(graph.consts)
    env.update(feed(graph, x))
    for node in graph.nodes:
        env[node.output] = bind(node, module)(env)
    return env


def _dtype(v: Any) -> str:
    return str(v.dtype).replace("torch.", "")


def infer(graph: Graph, inputs: Any) -> Graph:
    """Shapes and dtypes of every value, from one run at batch 1; one-line errors. ``inputs``:
    a per-sample shape (one float input, zeros) or a tuple of example input tensors."""
    if inputs and all(isinstance(d, int) for d in inputs):
        shown = f"shape {tuple(inputs)}"
        example: Any = (torch.zeros(1, *inputs),)
    else:
        example = tuple(inputs)
        shown = "shapes " + ", ".join(str(tuple(t.shape)) for t in example)
    try:
        with torch.inference_mode():
            env = run(graph, example)
    except SparsebenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's model/input mismatch
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise SparsebenchError(f"model does not run on an input of {shown}: {first}") from None
    for name, v in env.items():
        if isinstance(v, torch.Tensor):
            graph.values[name] = Value(name, tuple(int(s) for s in v.shape), _dtype(v))
        else:
            graph.values[name] = Value(name)
    return graph
