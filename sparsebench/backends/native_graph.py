"""A model as a flat list of ops, for the native backend's execution plan.

``extract(module)`` turns a torch module (traced with torch.fx) or an ONNX-imported
``OnnxGraphModule`` (its step list) into a :class:`Graph`: ops in execution order over numbered
values. The op kinds the planner fuses or runs natively are ``layer`` (a Conv2d/Linear by
module name), ``relu``, ``gelu``, ``maxpool``, ``gap`` (global average pool), ``flatten``,
``add``, ``scale`` (a multiply by a constant per-channel vector) and ``alias`` (dropout,
identity); everything else is a ``call``
run by torch. Parts of the graph that do not depend on the input are folded into constants.
``evaluate`` runs a graph with torch: the reference the plan is built and checked against.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.errors import SparsebenchError


@dataclass
class Op:
    """One operation: ``out = kind(args...)``; ``call`` ops compute ``fn(env)``."""

    kind: str
    out: int
    args: tuple[int, ...] = ()
    module: str | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    fn: Callable[[list[Any]], Any] | None = None
    label: str = ""


@dataclass
class Graph:
    ops: list[Op]
    input: int
    output: int
    nvalues: int
    consts: dict[int, Any]


_RELU = {torch.relu, F.relu, torch.relu_}
_MAXPOOL = {torch.max_pool2d, F.max_pool2d}
_ADD = {operator.add, torch.add, operator.iadd}
_MUL = {operator.mul, torch.mul, operator.imul}
_ALIAS_MODULES = (nn.Dropout, nn.Identity)
_GAP = {F.adaptive_avg_pool2d, getattr(torch._C._nn, "adaptive_avg_pool2d", F.adaptive_avg_pool2d)}


def _is_one(size: Any) -> bool:
    return size == 1 or (isinstance(size, (tuple, list)) and tuple(size) == (1, 1))


def _mean_hw(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """x.mean over dims (2, 3) (or (-2, -1)), the global average pool of an NCHW tensor."""
    dims = args[1] if len(args) > 1 else kwargs.get("dim")
    ok = isinstance(dims, (tuple, list)) and sorted(d % 4 for d in dims) == [2, 3]
    return ok and "dtype" not in kwargs


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _pool_attrs(kernel: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
                ceil_mode: bool = False) -> dict[str, Any]:
    k = _pair(kernel)
    return {"kernel": k, "stride": _pair(stride) if stride not in (None, [], ()) else k,
            "padding": _pair(padding), "dilation": _pair(dilation), "ceil_mode": bool(ceil_mode)}


class _Builder:
    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.consts: dict[int, Any] = {}
        self.n = 0

    def value(self) -> int:
        self.n += 1
        return self.n - 1

    def const(self, v: Any) -> int:
        i = self.value()
        self.consts[i] = v
        return i

    def add(self, kind: str, args: tuple[int, ...], **kw: Any) -> int:
        out = self.value()
        self.ops.append(Op(kind, out, args, **kw))
        return out


def _scale_vector(c: Any, like_rank: int = 4) -> torch.Tensor | None:
    """A constant that multiplies an NCHW tensor channel-wise, as a (C,) vector, else None."""
    if not isinstance(c, torch.Tensor) or not c.is_floating_point() or c.dim() < 1:
        return None
    shape = list(c.shape)
    while len(shape) < like_rank:
        shape.insert(0, 1)
    if len(shape) != like_rank or shape[0] != 1 or any(s != 1 for s in shape[2:]):
        return None
    return c.reshape(-1).float().contiguous()


# ----------------------------------------------------------------------------- torch.fx


def _from_fx(module: nn.Module) -> Graph:
    from torch import fx

    try:
        gm = fx.symbolic_trace(module)
    except Exception as exc:  # noqa: BLE001 - reported: the caller falls back to swapping
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SparsebenchError(f"model cannot be traced with torch.fx: {first}") from exc
    b = _Builder()
    ids: dict[Any, int] = {}
    inp = out = None
    mods = dict(module.named_modules())

    def is_const(a: Any) -> bool:
        return all(ids[n] in b.consts for n in _nodes(a))

    def val(n: Any) -> Any:
        return fx.node.map_arg(n, lambda m: b.consts[ids[m]])

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if inp is not None:
                raise SparsebenchError("the native plan supports models with one input")
            inp = ids[node] = b.value()
            continue
        if node.op == "get_attr":
            obj: Any = gm
            for part in str(node.target).split("."):
                obj = getattr(obj, part)
            ids[node] = b.const(obj.detach() if isinstance(obj, torch.Tensor) else obj)
            continue
        if node.op == "output":
            res = node.args[0]
            if not isinstance(res, fx.Node):
                raise SparsebenchError("the native plan supports models with one tensor output")
            out = ids[res]
            continue
        args, kwargs = node.args, node.kwargs
        if is_const((args, kwargs)):  # no dependence on the input: fold now
            ids[node] = b.const(_run_node(gm, node, val(args), val(kwargs)))
            continue
        tensors = [a for a in args if isinstance(a, fx.Node)]
        x = ids[args[0]] if args and isinstance(args[0], fx.Node) else None
        kind, attrs, mod_name = None, {}, None
        if node.op == "call_module":
            mod = mods[str(node.target)]
            if len(args) == 1 and not kwargs:
                if isinstance(mod, (nn.Conv2d, nn.Linear)):
                    kind, mod_name = "layer", str(node.target)
                elif isinstance(mod, nn.ReLU):
                    kind = "relu"
                elif isinstance(mod, nn.GELU) and mod.approximate == "none":
                    kind = "gelu"
                elif isinstance(mod, nn.MaxPool2d) and not mod.return_indices:
                    kind = "maxpool"
                    attrs = _pool_attrs(mod.kernel_size, mod.stride, mod.padding, mod.dilation,
                                        mod.ceil_mode)
                elif isinstance(mod, nn.AdaptiveAvgPool2d) and _is_one(mod.output_size):
                    kind, attrs = "gap", {"keepdim": True}
                elif isinstance(mod, nn.Flatten) and mod.start_dim == 1 and mod.end_dim == -1:
                    kind = "flatten"
                elif isinstance(mod, _ALIAS_MODULES):
                    kind = "alias"
        elif node.op == "call_function":
            t = node.target
            if t in _RELU and len(args) == 1:
                kind = "relu"
            elif t is F.gelu and len(args) == 1 and kwargs.get("approximate", "none") == "none":
                kind = "gelu"
            elif t in _MAXPOOL and not kwargs.get("return_indices", False):
                kind = "maxpool"
                attrs = _pool_attrs(*args[1:], **{k: v for k, v in kwargs.items()
                                                  if k != "return_indices"})
            elif t in _GAP and len(args) == 2 and _is_one(args[1]) and not kwargs:
                kind, attrs = "gap", {"keepdim": True}
            elif t is torch.mean and _mean_hw(args, kwargs):
                kind = "gap"
                attrs = {"keepdim": bool(args[2] if len(args) > 2 else kwargs.get("keepdim"))}
            elif t is torch.flatten and _flatten_from_1(args, kwargs):
                kind = "flatten"
            elif t in _ADD and len(args) == 2 and len(tensors) == 2 and not kwargs:
                kind = "add"
            elif t in _MUL and len(args) == 2 and len(tensors) == 2 and not kwargs:
                kind = "mul"
        elif node.op == "call_method":
            if node.target == "relu" and len(args) == 1:
                kind = "relu"
            elif node.target == "flatten" and _flatten_from_1(args, kwargs):
                kind = "flatten"
            elif node.target == "mean" and _mean_hw(args, kwargs):
                kind = "gap"
                attrs = {"keepdim": bool(args[2] if len(args) > 2 else kwargs.get("keepdim"))}
        if kind == "mul":
            a, c = ids[args[0]], ids[args[1]]
            if a in b.consts:
                a, c = c, a
            vec = _scale_vector(b.consts.get(c))
            if vec is not None and a not in b.consts:
                ids[node] = b.add("scale", (a,), attrs={"scale": vec})
                continue
            kind = None
        if kind == "add":
            ids[node] = b.add("add", (ids[args[0]], ids[args[1]]))
        elif kind is not None:
            ids[node] = b.add(kind, (x,), module=mod_name, attrs=attrs)
        else:
            ids[node] = _fx_call(b, gm, node, ids)
    if inp is None or out is None:
        raise SparsebenchError("traced model has no input or output")
    return Graph(b.ops, inp, out, b.n, b.consts)


def _nodes(a: Any) -> list[Any]:
    from torch import fx

    found: list[Any] = []
    fx.node.map_arg(a, lambda n: found.append(n) or n)
    return found


def _flatten_from_1(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
    end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
    return start == 1 and end == -1


def _run_node(gm: nn.Module, node: Any, args: Any, kwargs: Any) -> Any:
    if node.op == "call_module":
        return gm.get_submodule(str(node.target))(*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    return getattr(args[0], node.target)(*args[1:], **kwargs)


def _fx_call(b: _Builder, gm: nn.Module, node: Any, ids: dict[Any, int]) -> int:
    from torch import fx

    deps = tuple(dict.fromkeys(ids[n] for n in _nodes((node.args, node.kwargs))))
    index = {n: ids[n] for n in _nodes((node.args, node.kwargs))}
    consts = b.consts

    def fn(env: list[Any], node: Any = node) -> Any:
        def get(n: Any) -> Any:
            i = index[n]
            return consts[i] if i in consts else env[i]
        return _run_node(gm, node, fx.node.map_arg(node.args, get),
                         fx.node.map_arg(node.kwargs, get))

    label = node.target if isinstance(node.target, str) else getattr(
        node.target, "__name__", str(node.target))
    if node.op == "call_module":
        label = type(gm.get_submodule(str(node.target))).__name__
    return b.add("call", tuple(d for d in deps if d not in consts), fn=fn, label=str(label))


# ----------------------------------------------------------------------------- ONNX import


def _from_onnx(module: nn.Module) -> Graph:
    from sparsebench.onnx_import import _OPS

    b = _Builder()
    names: dict[str, int] = {}
    inp = names[module._input_name] = b.value()

    def ref(name: str) -> int | None:
        if name == "":
            return None
        if name not in names:
            names[name] = b.const(module._value({}, name))
        return names[name]

    for step in module._steps:
        args = tuple(ref(n) for n in step.inputs)
        tensors = tuple(a for a in args if a is not None)
        x = args[0] if args else None
        mod = module._modules.get(step.module) if step.module else None
        a = step.attrs
        out: int | None = None
        if step.op in ("conv", "linear") and not a.get("pad") and not a.get("transA"):
            out = b.add("layer", (x,), module=step.module)
        elif step.op == "batchnorm" and isinstance(mod, nn.Identity):
            out = b.add("alias", (x,))  # folded into its conv
        elif step.op == "Relu":
            out = b.add("relu", (x,))
        elif step.op == "Gelu" and a.get("approximate", "none") == "none":
            out = b.add("gelu", (x,))
        elif step.op in ("Dropout", "Identity"):
            out = b.add("alias", (x,))
        elif step.op == "GlobalAveragePool":
            out = b.add("gap", (x,), attrs={"keepdim": True})
        elif step.op == "Flatten" and a.get("axis", 1) == 1:
            out = b.add("flatten", (x,))
        elif step.op == "MaxPool" and len(a["kernel"]) == 2:
            out = b.add("maxpool", (x,), attrs=_pool_attrs(a["kernel"], a["strides"], a["pads"],
                                                           a["dilations"], a["ceil_mode"]))
        elif step.op == "Add" and len(tensors) == 2 and all(t not in b.consts for t in tensors):
            out = b.add("add", tensors)
        elif step.op == "Mul" and len(tensors) == 2:
            lhs, rhs = tensors if tensors[1] in b.consts else tensors[::-1]
            vec = _scale_vector(b.consts.get(rhs))
            if vec is not None and lhs not in b.consts:
                out = b.add("scale", (lhs,), attrs={"scale": vec})
        if out is None:
            fn_op = _OPS[step.op]
            consts = b.consts

            def fn(env: list[Any], step: Any = step, args: tuple[Any, ...] = args,
                   fn_op: Any = fn_op) -> Any:
                vals = [None if i is None else consts[i] if i in consts else env[i]
                        for i in args]
                return fn_op(module, step, *vals)

            out = b.add("call", tuple(t for t in tensors if t not in b.consts), fn=fn,
                        label=step.op)
        names[step.outputs[0]] = out
    if len(module._output_names) != 1:
        raise SparsebenchError("the native plan supports models with one output")
    return Graph(b.ops, inp, names[module._output_names[0]], b.n, b.consts)


def extract(module: nn.Module) -> Graph:
    """The model as a :class:`Graph` (SparsebenchError when it cannot be expressed)."""
    if hasattr(module, "_steps") and hasattr(module, "_input_name"):
        return _from_onnx(module)
    return _from_fx(module)


def evaluate(graph: Graph, module: nn.Module, x: torch.Tensor) -> list[Any]:
    """Every value of the graph on input ``x``, computed with torch (the reference)."""
    env: list[Any] = [None] * graph.nvalues
    for i, c in graph.consts.items():
        env[i] = c
    env[graph.input] = x
    for op in graph.ops:
        a = [env[i] for i in op.args]
        if op.kind == "layer":
            v = module.get_submodule(op.module)(a[0])
        elif op.kind == "relu":
            v = torch.relu(a[0])
        elif op.kind == "gelu":
            v = F.gelu(a[0])
        elif op.kind == "maxpool":
            at = op.attrs
            v = F.max_pool2d(a[0], at["kernel"], at["stride"], at["padding"], at["dilation"],
                             at["ceil_mode"])
        elif op.kind == "gap":
            v = a[0].mean((2, 3), keepdim=op.attrs["keepdim"])
        elif op.kind == "flatten":
            v = torch.flatten(a[0], 1)
        elif op.kind == "add":
            v = a[0] + a[1]
        elif op.kind == "scale":
            s = op.attrs["scale"]
            v = a[0] * s.view(1, -1, *([1] * (a[0].dim() - 2)))
        elif op.kind == "alias":
            v = a[0]
        else:
            v = op.fn(env)  # type: ignore[misc]
        env[op.out] = v
    return env
