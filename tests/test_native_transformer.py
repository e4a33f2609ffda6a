"""Transformer blocks in the native plan: the exporters' erf GELU as one fused activation, the
add + LayerNorm and attention kernels against numpy/torch references, and tiny BERT exports
(TorchScript and dynamo exporters) running with (almost) no torch steps."""

from __future__ import annotations

import io
import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch

from conftest import needs_kernels, rel_err
from sparsebench.graph import from_module, run

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from sparsebench.graph.onnx_torch import to_torch  # noqa: E402

RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------- GELU pass

def _const(name: str, value: float) -> Any:
    return numpy_helper.from_array(np.array([value], np.float32), name)


def _gelu_onnx(variant: str, sqrt2: float = math.sqrt(2.0), half: float = 0.5) -> Any:
    """x (1, 4, 16) -> MatMul(W) + b -> GELU written as the exporters write it."""
    w = RNG.standard_normal((16, 24)).astype(np.float32)
    b = RNG.standard_normal(24).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]),
             helper.make_node("Add", ["mm", "b"], ["h"])]
    mk = helper.make_node
    if variant.startswith("mul-"):   # x * (1/sqrt 2)
        nodes.append(mk("Mul", ["h", "inv_sqrt2"], ["d"]))
    else:                            # x / sqrt 2
        nodes.append(mk("Div", ["h", "sqrt2"], ["d"]))
    nodes += [mk("Erf", ["d"], ["e"]), mk("Add", ["e", "one"], ["a"])]
    tail = variant.split("-", 1)[1] if "-" in variant else variant
    if tail == "ts":            # (x * (1 + erf)) * 0.5
        nodes += [mk("Mul", ["h", "a"], ["m"]), mk("Mul", ["m", "half"], ["y"])]
    elif tail == "dynamo":      # x * (0.5 * (1 + erf))
        nodes += [mk("Mul", ["half", "a"], ["m"]), mk("Mul", ["h", "m"], ["y"])]
    else:                       # (x * 0.5) * (1 + erf)
        nodes += [mk("Mul", ["h", "half"], ["m"]), mk("Mul", ["a", "m"], ["y"])]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
             _const("sqrt2", sqrt2), _const("inv_sqrt2", 1 / sqrt2), _const("one", 1.0),
             _const("half", half)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, (1, 4, 16))], [helper.make_empty_tensor_value_info("y")], inits)
    return to_torch(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.parametrize("variant", ["ts", "dynamo", "halfx", "mul-ts", "mul-dynamo",
                                     "mul-halfx"])
def test_exported_gelu_becomes_one_gelu_node(variant: str) -> None:
    module = _gelu_onnx(variant)
    graph = from_module(module, (4, 16))
    assert [n.kind for n in graph.nodes] == ["linear", "gelu"]
    x = torch.randn(1, 4, 16)
    with torch.inference_mode():
        want = module(x)
        env = run(graph, x)
    assert rel_err(env[graph.output], want) < 1e-6
    pre = env[graph.nodes[0].output]  # the Linear's output: the matched x really was x
    assert rel_err(env[graph.output], torch.nn.functional.gelu(pre)) < 1e-6


@pytest.mark.parametrize("sqrt2,half", [(1.4142, 0.5), (math.sqrt(2.0), 0.5001)])
def test_gelu_near_miss_is_left_alone(sqrt2: float, half: float) -> None:
    graph = from_module(_gelu_onnx("ts", sqrt2, half), (4, 16))
    assert "gelu" not in [n.kind for n in graph.nodes]
    assert "Erf" in [n.label for n in graph.nodes]
