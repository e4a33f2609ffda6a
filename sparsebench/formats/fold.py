"""Fold inference-mode BatchNorm into the Conv2d/Linear that feeds it, in a torch module.

``fold_batchnorm(model)`` returns a copy whose foldable BatchNorms (``graph.passes``: applied
only to a layer's output, which feeds nothing else) are folded into that layer with
``graph.passes.fold_bn`` and replaced by ``nn.Identity``. Zero weights stay exactly zero, so
pruning masks survive and CSR/BSR structure is unchanged (a unit whose gamma is 0 simply
becomes all-zero). Run it before ``formats.convert``. The pairs come from the model's graph
(torch.fx, or an ONNX import's step list); a model without one is returned unfolded.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from sparsebench.errors import SparsebenchError
from sparsebench.graph import from_module
from sparsebench.graph.passes import fold_bn, foldable_batchnorms


def batchnorm_pairs(model: nn.Module, input_shape: tuple[int, ...] | None = None
                    ) -> list[tuple[str, str]]:
    """The (layer, BatchNorm) module names ``fold_batchnorm`` would fold (``input_shape``, or
    the model's ``input_shape`` attribute, lets a Linear's output rank be checked)."""
    shape = input_shape or getattr(model, "input_shape", None)
    try:
        graph = from_module(model, tuple(shape) if shape is not None else None)
    except SparsebenchError:
        return []
    return [(str(layer.module), str(bn.module)) for layer, bn in foldable_batchnorms(graph)]


def fold_into(layer: nn.Module, bn: nn.Module) -> None:
    """Fold ``bn`` (eval statistics) into ``layer``'s weight and bias, in place."""
    with torch.no_grad():
        w, b = fold_bn(layer.weight, layer.bias, {
            "mean": bn.running_mean, "var": bn.running_var,
            "gamma": bn.weight if bn.affine else None, "beta": bn.bias if bn.affine else None},
            bn.eps)
        layer.weight.copy_(w)
        if layer.bias is None:
            layer.bias = nn.Parameter(b)
        else:
            layer.bias.copy_(b)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    target: Any = model.get_submodule(parent) if parent else model
    if isinstance(target, nn.Module) and attr in target._modules:
        target._modules[attr] = module
    else:
        setattr(target, attr, module)


def fold_batchnorm(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """A copy of ``model`` in eval mode with every foldable BatchNorm folded into the preceding
    Conv2d/Linear and replaced by ``nn.Identity`` (see the module docstring)."""
    model = copy.deepcopy(model).eval()
    for layer_name, bn_name in batchnorm_pairs(model, input_shape):
        fold_into(model.get_submodule(layer_name), model.get_submodule(bn_name))
        _set(model, bn_name, nn.Identity())
    return model
