"""ONNX -> :class:`~sparsebench.graph.ir.Graph`.

An ONNX file is first converted to a torch module (``onnx_torch.to_torch``: real Conv2d/Linear/
BatchNorm submodules, constants folded, small integer values as Python tuples) so that formats
can swap its layers; ``from_onnx`` reads that module's step list, so both views share the
layers. Steps the IR names get their kind; the rest are ``call`` nodes running the step (with
the ONNX attributes in ``attrs``, e.g. a Transpose's ``perm``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from sparsebench.errors import SparsebenchError
from sparsebench.graph.from_fx import layer_node, pool_attrs
from sparsebench.graph.ir import Graph, Node
from sparsebench.graph.onnx_torch import _OPS, OnnxGraphModule, _Step

_SIMPLE = {"Relu": "relu", "Dropout": "alias", "Identity": "alias"}


def is_onnx_module(module: Any) -> bool:
    return isinstance(module, OnnxGraphModule)


def _call(module: OnnxGraphModule, step: _Step) -> Any:
    fn_op = _OPS[step.op]
    names = step.inputs

    def fn(env: dict[str, Any]) -> Any:
        return fn_op(module, step, *(env[n] if n else None for n in names))
    return fn


def _node(module: OnnxGraphModule, step: _Step, consts: dict[str, Any]) -> Node:
    a, out = step.attrs, step.outputs[0]
    x = step.inputs[0] if step.inputs else ""
    mod = module._modules.get(step.module) if step.module else None
    tensors = [n for n in step.inputs if n and n not in consts]

    def make(kind: str, **attrs: Any) -> Node:
        return Node(kind, step.node, (x,), out, attrs, step.module, step.op)

    if step.op in ("conv", "linear", "batchnorm") and mod is not None:
        if isinstance(mod, nn.Identity):
            return make("alias")                # a BatchNorm folded into its conv
        if not a.get("pad") and not a.get("transA"):
            found = layer_node(mod, step.node, x, out, step.module or "")
            if found is not None:
                return found
    elif step.op in _SIMPLE:
        return make(_SIMPLE[step.op])
    elif step.op == "Gelu" and a.get("approximate", "none") == "none":
        return make("gelu")
    elif step.op == "GlobalAveragePool":
        return make("global_avgpool", keepdim=True)
    elif step.op == "Flatten" and a.get("axis", 1) == 1:
        return make("flatten")
    elif step.op in ("MaxPool", "AveragePool") and len(a["kernel"]) == 2:
        kind = "maxpool" if step.op == "MaxPool" else "avgpool"
        return make(kind, **pool_attrs(a["kernel"], a["strides"], a["pads"], a["dilations"],
                                       a["ceil_mode"], a["count_include_pad"]))
    elif step.op in ("Add", "Mul", "Sum") and len(step.inputs) == 2 and tensors:
        kind = "mul" if step.op == "Mul" else "add"  # Sum of two: a residual add (ResNet)
        return Node(kind, step.node, tuple(step.inputs), out, source=step.op,
                    fn=_call(module, step))  # fn: the op on sizes (tuples) as well
    kind = "reshape" if step.op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze") and x \
        and x not in consts else "call"
    return Node(kind, step.node, tuple(n for n in step.inputs), out, dict(step.attrs),
                module=step.module, source=step.op, fn=_call(module, step))


def from_onnx(module: OnnxGraphModule) -> Graph:
    """The graph of an ONNX-imported module (no shapes yet: see ``execute.infer``)."""
    outputs = list(getattr(module, "output_names", module._output_names))
    inputs = list(getattr(module, "input_names", [module._input_name]))
    if len(outputs) != 1:
        raise SparsebenchError("sparsebench reads graphs with one output (this one has "
                               f"{len(outputs)})")
    produced = set(inputs) | {o for s in module._steps for o in s.outputs}
    consts: dict[str, Any] = {}
    for step in module._steps:
        for name in step.inputs:
            if name and name not in produced and name not in consts:
                consts[name] = module._value({}, name)
    nodes = [_node(module, step, consts) for step in module._steps]
    return Graph(nodes, inputs, outputs[0], {}, consts, module)
