"""One model graph for every stage (see ``ir``): importers, passes, executors.

``from_module(module, input_shape)`` is the entry point: a torch module traced with torch.fx,
an ONNX-imported module (``onnx_torch``) read from its step list, or a TorchScript module
(exported to ONNX first); constants folded, aliases and dead nodes removed, the exporters'
erf GELU as one node (``passes.fuse_gelu``), every value's shape and dtype inferred. ``passes``
fold BatchNorm and fuse activations for the consumers that want it;
``reference.evaluate`` is the numpy oracle; ``execute`` runs a graph with torch.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import torch

from sparsebench.errors import SparsebenchError
from sparsebench.graph.execute import infer, run
from sparsebench.graph.from_fx import from_fx
from sparsebench.graph.from_onnx import from_onnx, is_onnx_module
from sparsebench.graph.ir import KINDS, Graph, Node, Value
from sparsebench.graph.passes import fold_constants, fuse_gelu, remove_aliases, remove_dead

__all__ = ["KINDS", "Graph", "Node", "Value", "from_module", "from_torchscript", "run"]


def from_torchscript(module: torch.jit.ScriptModule, input_shape: tuple[int, ...]) -> Any:
    """A TorchScript module as an ONNX-imported torch module (TorchScript-based exporter)."""
    import onnx

    from sparsebench.graph.onnx_torch import to_torch

    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (torch.zeros(1, *input_shape),), buf, dynamo=False,
                              opset_version=17, input_names=["input"], output_names=["output"])
        return to_torch(onnx.load_from_string(buf.getvalue()))
    except SparsebenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise SparsebenchError(f"the TorchScript model cannot be read as a graph (exporting "
                               f"it to ONNX failed: {first})") from None


def from_module(module: Any, input_shape: tuple[int, ...] | None) -> Graph:
    """The graph of ``module`` with shapes for one sample of ``input_shape`` (None: no
    shapes). A module recording several inputs (``input_specs``, see ``sparsebench.model_io``)
    is inferred on its example inputs; ``input_shape`` is then the first input's."""
    if isinstance(module, torch.jit.ScriptModule):
        if input_shape is None:
            raise SparsebenchError("reading a TorchScript model needs its input shape")
        module = from_torchscript(module, input_shape)
    graph = from_onnx(module) if is_onnx_module(module) else from_fx(module)
    fold_constants(graph)
    remove_aliases(graph)
    remove_dead(graph)
    fuse_gelu(graph)
    if input_shape is None:
        return graph
    from sparsebench.model_io import example_inputs, is_single_float, specs_of

    specs = specs_of(module, input_shape)
    if is_single_float(specs):
        infer(graph, tuple(input_shape))
    else:
        infer(graph, example_inputs(module, 1, input_shape))
    if graph.output in graph.inputs:
        raise SparsebenchError("the model's output is its input")
    if graph.output in graph.consts:
        raise SparsebenchError("the model's output is not computed from its input")
    return graph
