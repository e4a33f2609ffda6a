"""torch.fx -> :class:`~sparsebench.graph.ir.Graph`.

The module is traced symbolically; each fx node becomes one IR node: modules and functions the
IR names (Conv2d, Linear, BatchNorm, ReLU, GELU, pools, flatten, views, dropout, add, mul) get
their kind and attributes, everything else is a ``call`` that re-runs the fx node. ``get_attr``
tensors are constants; nodes on constants only are folded later (``passes.fold_constants``).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.errors import SparsebenchError
from sparsebench.graph.ir import Graph, Node

ALIAS_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                 nn.AlphaDropout)
RESHAPE_FUNCTIONS = {torch.reshape, torch.squeeze, torch.unsqueeze}
RESHAPE_METHODS = {"view", "reshape", "contiguous", "squeeze", "unsqueeze"}
RELU_FUNCTIONS = {torch.relu, F.relu, torch.relu_}
MAXPOOL_FUNCTIONS = {torch.max_pool2d, F.max_pool2d}
AVGPOOL_FUNCTIONS = {F.avg_pool2d, torch._C._nn.avg_pool2d}
ADAPTIVE_FUNCTIONS = {F.adaptive_avg_pool2d, torch._C._nn.adaptive_avg_pool2d}
ADD_FUNCTIONS = {operator.add, torch.add, operator.iadd}
MUL_FUNCTIONS = {operator.mul, torch.mul, operator.imul}


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        if len(v) == 0:
            raise ValueError("empty")
        return (int(v[0]), int(v[-1])) if len(v) in (1, 2) else (int(v[0]), int(v[1]))
    return int(v), int(v)


def pool_attrs(kernel: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
               ceil_mode: bool = False, count_include_pad: bool = True,
               divisor_override: Any = None) -> dict[str, Any]:
    """Normalised 2-D pool attributes (pairs; stride defaults to the kernel)."""
    k = _pair(kernel)
    return {"kernel": k, "stride": _pair(stride) if stride not in (None, [], ()) else k,
            "padding": _pair(padding), "dilation": _pair(dilation),
            "ceil_mode": bool(ceil_mode), "count_include_pad": bool(count_include_pad),
            "divisor_override": divisor_override}


def conv_attrs(mod: nn.Conv2d) -> dict[str, Any]:
    return {"in_channels": mod.in_channels, "out_channels": mod.out_channels,
            "kernel": tuple(mod.kernel_size), "stride": tuple(mod.stride),
            "padding": mod.padding if isinstance(mod.padding, str) else tuple(mod.padding),
            "dilation": tuple(mod.dilation), "groups": mod.groups,
            "padding_mode": mod.padding_mode}


def layer_node(mod: nn.Module, name: str, x: str, out: str, module: str) -> Node | None:
    """The IR node of a Conv2d, Linear or BatchNorm submodule applied to ``x``, else None."""
    def t(p: Any) -> torch.Tensor | None:
        return None if p is None else p.detach()

    if isinstance(mod, nn.Conv2d):
        return Node("conv", name, (x,), out, conv_attrs(mod), module, type(mod).__name__,
                    weights={"weight": mod.weight.detach(), "bias": t(mod.bias)},
                    weight_key=module)
    if isinstance(mod, nn.Linear):
        return Node("linear", name, (x,), out, {"in_features": mod.in_features,
                                                "out_features": mod.out_features},
                    module, type(mod).__name__,
                    weights={"weight": mod.weight.detach(), "bias": t(mod.bias)},
                    weight_key=module)
    if isinstance(mod, nn.modules.batchnorm._BatchNorm) and not isinstance(
            mod, nn.BatchNorm3d) and mod.running_mean is not None \
            and mod.running_var is not None:
        return Node("batchnorm", name, (x,), out, {"eps": float(mod.eps)}, module,
                    type(mod).__name__, weights={
                        "mean": t(mod.running_mean), "var": t(mod.running_var),
                        "gamma": t(mod.weight) if mod.affine else None,
                        "beta": t(mod.bias) if mod.affine else None})
    return None


def _fn_name(fn: Any) -> str:
    mod = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__name__", str(fn))
    if fn in ADD_FUNCTIONS or fn in MUL_FUNCTIONS:
        return f"operator.{name}" if mod in ("_operator", "operator") else f"torch.{name}"
    return f"{'F' if 'functional' in mod or '_nn' in mod else 'torch'}.{name}"


def _is_one(size: Any) -> bool:
    return size == 1 or (isinstance(size, (tuple, list)) and tuple(size) == (1, 1))


def _mean_hw(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """x.mean over dims (2, 3) (or (-2, -1)), the global average pool of an NCHW tensor."""
    dims = args[1] if len(args) > 1 else kwargs.get("dim")
    ok = isinstance(dims, (tuple, list)) and sorted(d % 4 for d in dims) == [2, 3]
    return ok and "dtype" not in kwargs


def _flatten_from_1(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
    end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
    return start == 1 and end == -1


def _bind(names: list[str], args: tuple, kwargs: dict) -> dict[str, Any]:
    bound = dict(zip(names, args))
    bound.update(kwargs)
    return bound


def _run_node(gm: nn.Module, node: Any, args: Any, kwargs: Any) -> Any:
    if node.op == "call_module":
        return gm.get_submodule(str(node.target))(*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    return getattr(args[0], node.target)(*args[1:], **kwargs)


def _nodes(a: Any) -> list[Any]:
    from torch import fx

    found: list[Any] = []
    fx.node.map_arg(a, lambda n: found.append(n) or n)
    return found


def _call_fn(gm: nn.Module, node: Any) -> Any:
    from torch import fx

    def fn(env: dict[str, Any]) -> Any:
        def get(n: Any) -> Any:
            return env[n.name]
        return _run_node(gm, node, fx.node.map_arg(node.args, get),
                         fx.node.map_arg(node.kwargs, get))
    return fn


def _classify(gm: nn.Module, node: Any) -> Node:
    """The IR node of one fx call node (a module call names its submodule)."""
    found = _kind(gm, node)
    if node.op == "call_module":
        found.module = str(node.target)
    return found


def _kind(gm: nn.Module, node: Any) -> Node:
    from torch import fx

    args, kwargs = node.args, node.kwargs
    deps = tuple(dict.fromkeys(n.name for n in _nodes((args, kwargs))))
    x = args[0].name if args and isinstance(args[0], fx.Node) else ""
    one = len(args) == 1 and not kwargs and bool(x)

    def make(kind: str, inputs: tuple[str, ...] = (x,), **attrs: Any) -> Node:
        return Node(kind, node.name, inputs, node.name, attrs, source=source)

    if node.op == "call_module":
        mod = gm.get_submodule(str(node.target))
        source = type(mod).__name__
        if one:
            found = layer_node(mod, node.name, x, node.name, str(node.target))
            if found is not None:
                return found
            if isinstance(mod, nn.ReLU):
                return make("relu")
            if isinstance(mod, nn.GELU) and mod.approximate == "none":
                return make("gelu")
            if isinstance(mod, nn.MaxPool2d) and not mod.return_indices:
                return make("maxpool", **pool_attrs(mod.kernel_size, mod.stride, mod.padding,
                                                    mod.dilation, mod.ceil_mode))
            if isinstance(mod, nn.AvgPool2d):
                return make("avgpool", **pool_attrs(mod.kernel_size, mod.stride, mod.padding, 1,
                                                    mod.ceil_mode, mod.count_include_pad,
                                                    mod.divisor_override))
            if isinstance(mod, nn.AdaptiveAvgPool2d):
                if _is_one(mod.output_size):
                    return make("global_avgpool", keepdim=True)
                return make("adaptive_avgpool", output_size=mod.output_size)
            if isinstance(mod, nn.Flatten):
                if mod.start_dim == 1 and mod.end_dim == -1:
                    return make("flatten")
                return Node("reshape", node.name, deps, node.name, source=source,
                            fn=_call_fn(gm, node))
            if isinstance(mod, nn.Unflatten):
                return Node("reshape", node.name, deps, node.name, source=source,
                            fn=_call_fn(gm, node))
            if isinstance(mod, ALIAS_MODULES):
                return make("alias")
    elif node.op == "call_method":
        source = f"Tensor.{node.target}"
        if node.target in ("relu", "relu_") and len(args) == 1 and not kwargs:
            return make("relu")
        if node.target == "flatten" and _flatten_from_1(args, kwargs):
            return make("flatten")
        if node.target == "mean" and _mean_hw(args, kwargs):
            return make("global_avgpool",
                        keepdim=bool(args[2] if len(args) > 2 else kwargs.get("keepdim")))
        if node.target in RESHAPE_METHODS or node.target == "flatten":
            return Node("reshape", node.name, deps, node.name, source=source,
                        fn=_call_fn(gm, node))
    else:
        fn = node.target
        source = _fn_name(fn)
        tensors = [a for a in args if isinstance(a, fx.Node)]
        try:
            if fn in RELU_FUNCTIONS and len(args) == 1:
                return make("relu")
            if fn is F.gelu and len(args) == 1 and kwargs.get("approximate", "none") == "none":
                return make("gelu")
            if fn in MAXPOOL_FUNCTIONS:
                b = _bind(["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode",
                           "return_indices"], args, kwargs)
                if not b.get("return_indices"):
                    return make("maxpool", **pool_attrs(
                        b["kernel_size"], b.get("stride"), b.get("padding", 0),
                        b.get("dilation", 1), b.get("ceil_mode", False)))
            if fn in AVGPOOL_FUNCTIONS:
                b = _bind(["input", "kernel_size", "stride", "padding", "ceil_mode",
                           "count_include_pad", "divisor_override"], args, kwargs)
                return make("avgpool", **pool_attrs(
                    b["kernel_size"], b.get("stride"), b.get("padding", 0), 1,
                    b.get("ceil_mode", False), b.get("count_include_pad", True),
                    b.get("divisor_override")))
        except (TypeError, ValueError, KeyError):
            pass
        if fn in ADAPTIVE_FUNCTIONS and len(args) == 2 and not kwargs and x:
            if _is_one(args[1]):
                return make("global_avgpool", keepdim=True)
            if not isinstance(args[1], fx.Node):
                return make("adaptive_avgpool", output_size=args[1])
        if fn is torch.mean and _mean_hw(args, kwargs):
            return make("global_avgpool",
                        keepdim=bool(args[2] if len(args) > 2 else kwargs.get("keepdim")))
        if fn is torch.flatten and _flatten_from_1(args, kwargs):
            return make("flatten")
        if fn is F.dropout:
            return make("alias")
        if (fn in RESHAPE_FUNCTIONS or fn is torch.flatten) and x:
            return Node("reshape", node.name, deps, node.name, source=source,
                        fn=_call_fn(gm, node))
        if (fn in ADD_FUNCTIONS or fn in MUL_FUNCTIONS) and len(args) == 2 and not kwargs \
                and tensors:
            kind = "add" if fn in ADD_FUNCTIONS else "mul"
            return Node(kind, node.name, tuple(_operand(a, node, i) for i, a in
                                                enumerate(args)), node.name, source=source)
    return Node("call", node.name, deps, node.name, source=source, fn=_call_fn(gm, node))


def _operand(a: Any, node: Any, i: int) -> str:
    """An fx node's name, or the name of the constant a Python number becomes."""
    return a.name if hasattr(a, "name") and hasattr(a, "op") else f"{node.name}::arg{i}"


def from_fx(module: nn.Module) -> Graph:
    """The traced graph of ``module`` (no shapes yet: see ``execute.infer``)."""
    from torch import fx

    if isinstance(module, torch.jit.ScriptModule):
        raise SparsebenchError("a TorchScript model cannot be traced with torch.fx")
    try:
        gm = fx.symbolic_trace(module)
    except Exception as exc:  # noqa: BLE001 - fx raises many kinds for untraceable code
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise SparsebenchError(f"model cannot be traced with torch.fx "
                               f"({type(exc).__name__}: {first})") from None
    nodes: list[Node] = []
    consts: dict[str, Any] = {}
    inputs: list[str] = []
    out = None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            inputs.append(node.name)
        elif node.op == "get_attr":
            obj: Any = gm
            for part in str(node.target).split("."):
                obj = getattr(obj, part)
            consts[node.name] = obj.detach() if isinstance(obj, torch.Tensor) else obj
        elif node.op == "output":
            res = node.args[0]
            if isinstance(res, (tuple, list)) and len(res) == 1:
                res = res[0]
            if not isinstance(res, fx.Node):
                raise SparsebenchError("sparsebench reads models with one tensor output")
            out = res.name
        else:
            n = _classify(gm, node)
            if n.kind in ("add", "mul"):
                for i, a in enumerate(node.args):
                    if not isinstance(a, fx.Node):
                        consts[f"{node.name}::arg{i}"] = a
            nodes.append(n)
    if not inputs or out is None:
        raise SparsebenchError("the traced model has no input or no output")
    return Graph(nodes, inputs, out, {}, consts, gm)
