"""Fold inference-mode BatchNorm into the Conv2d/Linear that feeds it.

``fold_batchnorm(model)`` returns a copy whose BatchNorms (those applied directly, and only, to
a layer's output) are folded into that layer and replaced by ``nn.Identity``:

    s = gamma / sqrt(running_var + eps),   W' = W * s (per output unit),
    b' = (b - mean) * s + beta

Scaling rows keeps every zero weight exactly zero, so pruning masks survive and CSR/BSR
structure is unchanged (a unit whose gamma is 0 simply becomes all-zero). Run it before
``formats.convert``. Pairs are found from the traced graph (torch.fx), or from the step list of
an ONNX-imported model; a model that is neither is returned unfolded.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def _foldable(layer: nn.Module, bn: nn.Module) -> bool:
    if not isinstance(bn, _BN) or bn.running_mean is None or bn.running_var is None:
        return False
    units = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
    return bn.num_features == units


def _fx_pairs(model: nn.Module) -> list[tuple[str, str]] | None:
    """(layer, bn) module names where the BN's only input is the layer's output, which feeds
    nothing else; None if the model cannot be traced."""
    try:
        from torch import fx

        graph = fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - any tracing failure: fall back to the other routes
        return None
    mods = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), _BN):
            continue
        src = node.args[0] if node.args else None
        if (getattr(src, "op", None) == "call_module" and len(src.users) == 1
                and isinstance(mods.get(src.target), (nn.Conv2d, nn.Linear))
                and len(node.args) == 1 and not node.kwargs):
            layer = mods[src.target]
            # BatchNorm1d after a Linear normalises dim 1: only right for (batch, features)
            if isinstance(layer, nn.Linear) and not isinstance(mods[node.target], nn.BatchNorm1d):
                continue
            pairs.append((str(src.target), str(node.target)))
    return pairs


def _onnx_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, bn) pairs of an ONNX-imported module (sparsebench.onnx_import)."""
    steps = getattr(model, "_steps", None) or []
    consumers: dict[str, int] = {}
    for step in steps:
        for name in step.inputs:
            consumers[name] = consumers.get(name, 0) + 1
    for name in getattr(model, "_output_names", []):
        consumers[name] = consumers.get(name, 0) + 1
    producer = {step.outputs[0]: step for step in steps}
    pairs = []
    for step in steps:
        if step.op != "batchnorm" or not step.module:
            continue
        src = producer.get(step.inputs[0])
        if (src is not None and src.op == "conv" and src.module
                and consumers.get(step.inputs[0]) == 1):
            pairs.append((src.module, step.module))
    return pairs


def fold_into(layer: nn.Module, bn: nn.Module) -> None:
    """Fold ``bn`` (eval statistics) into ``layer``'s weight and bias, in place."""
    with torch.no_grad():
        var = bn.running_var.double()
        mean = bn.running_mean.double()
        gamma = bn.weight.double() if bn.affine and bn.weight is not None else torch.ones_like(var)
        beta = bn.bias.double() if bn.affine and bn.bias is not None else torch.zeros_like(var)
        scale = gamma / torch.sqrt(var + bn.eps)
        w = layer.weight.double()
        layer.weight.copy_((w * scale.view(-1, *([1] * (w.dim() - 1)))).to(layer.weight.dtype))
        bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(var)
        new_bias = ((bias - mean) * scale + beta).to(layer.weight.dtype)
        if layer.bias is None:
            layer.bias = nn.Parameter(new_bias)
        else:
            layer.bias.copy_(new_bias)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    target: Any = model.get_submodule(parent) if parent else model
    if isinstance(target, nn.Module) and attr in target._modules:
        target._modules[attr] = module
    else:
        setattr(target, attr, module)


def batchnorm_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """The (layer, BatchNorm) module names ``fold_batchnorm`` would fold."""
    if hasattr(model, "_steps"):
        return _onnx_pairs(model)
    return _fx_pairs(model) or []


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every foldable BatchNorm folded into the preceding
    Conv2d/Linear and replaced by ``nn.Identity`` (see the module docstring)."""
    model = copy.deepcopy(model).eval()
    for layer_name, bn_name in batchnorm_pairs(model):
        layer, bn = model.get_submodule(layer_name), model.get_submodule(bn_name)
        if not _foldable(layer, bn):
            continue
        fold_into(layer, bn)
        _set(model, bn_name, nn.Identity())
    return model
