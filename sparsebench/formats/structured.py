"""structured: pruned channels/neurons physically removed, giving a smaller dense model.

A unit (filter/neuron) of a prunable layer is removed only when its output is provably exactly
zero: either its BatchNorm has weight == bias == 0 (finite stats, finite weight row), or its
weight row is all zero, its bias is zero and its BatchNorm (if any) maps 0 to 0 (bias == 0 and
weight == 0 or running_mean == 0). The activation between a layer and its consumer is assumed
to map 0 to 0 (ReLU, GELU, max-pooling, flatten in every registered architecture). Units with
zero weights but a nonzero constant output are kept (their constant is not folded), so outputs
never change. Removing a unit also removes the consumer's input columns it fed.

The layers, their BatchNorms and consumers are the architecture's declared ``prunable_layers``,
or, for any other model (a pickled module, an ONNX import), read off its graph
(``graph.analysis.layer_chains``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import skip_init

from sparsebench.archs import PrunableLayer, infer_prunable_layers
from sparsebench.errors import SparsebenchError
from sparsebench.formats.base import (ConvertedModel, dense_row, example_input, other_bytes,
                                      positions, weight_layers, working_copy)
from sparsebench.formats.layers import candidates, unconverted

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def dead_units(layer: nn.Module, bn: nn.Module | None) -> torch.Tensor:
    """Bool per output unit: the unit's output after the layer (and its BatchNorm) is exactly 0."""
    w = layer.weight.detach()
    rows = w.reshape(w.shape[0], -1)
    zero_w = (rows == 0).all(1)
    b = layer.bias.detach() if layer.bias is not None else torch.zeros(w.shape[0])
    if bn is None:
        return zero_w & (b == 0)
    ones, zeros = torch.ones(w.shape[0]), torch.zeros(w.shape[0])
    gamma = bn.weight.detach() if bn.affine else ones
    beta = bn.bias.detach() if bn.affine else zeros
    mean = bn.running_mean if bn.running_mean is not None else zeros
    var = bn.running_var if bn.running_var is not None else ones
    stats_ok = torch.isfinite(mean) & torch.isfinite(var) & (beta == 0)
    killed = stats_ok & (gamma == 0) & torch.isfinite(b)
    killed[killed.clone()] = torch.isfinite(rows[killed]).all(1)  # NaN * 0 stays NaN
    return killed | (stats_ok & zero_w & (b == 0) & ((gamma == 0) | (mean == 0)))


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def rebuild(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """A new Conv2d/Linear like ``layer`` holding ``weight``/``bias`` (shapes may differ)."""
    if isinstance(layer, nn.Conv2d):  # skip_init: no random init of weights overwritten below
        new: nn.Module = skip_init(nn.Conv2d, weight.shape[1] * layer.groups, weight.shape[0],
                                   layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                                   layer.groups, bias is not None, layer.padding_mode)
    else:
        new = skip_init(nn.Linear, weight.shape[1], weight.shape[0], bias is not None)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new.train(layer.training)


def _slice_bn(bn: nn.Module, idx: torch.Tensor) -> nn.Module:
    new = type(bn)(len(idx), eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                   track_running_stats=bn.track_running_stats)
    with torch.no_grad():
        for attr in ("weight", "bias", "running_mean", "running_var"):
            t = getattr(bn, attr)
            if t is not None:
                getattr(new, attr).copy_(t.detach()[idx])
        if bn.num_batches_tracked is not None:
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new.train(bn.training)


def _consumer_columns(consumer: nn.Module, units: int) -> int | None:
    """Input columns of ``consumer`` per producer unit (h*w after a flatten), None if unusable."""
    if isinstance(consumer, nn.Conv2d):
        return 1 if consumer.groups == 1 and consumer.in_channels == units else None
    if isinstance(consumer, nn.Linear) and consumer.in_features % units == 0:
        return consumer.in_features // units
    return None


def compact(model: nn.Module, p: PrunableLayer) -> tuple[str, bool]:
    """Remove the dead units of one prunable layer in place; returns (note, fallback)."""
    layer = model.get_submodule(p.name)
    if not isinstance(layer, (nn.Conv2d, nn.Linear)):
        return "", False
    bn = model.get_submodule(p.bn) if p.bn else None
    if bn is not None and not isinstance(bn, _BN):
        return f"not compacted: {p.bn!r} is not a BatchNorm", True
    dead = dead_units(layer, bn)
    units, n_dead = int(dead.numel()), int(dead.sum())
    rows = layer.weight.detach().reshape(units, -1)
    constant = int(((rows == 0).all(1) & ~dead).sum())
    kept_const = (f"; {constant} zero-weight units kept (constant nonzero output)"
                  if constant else "")
    if n_dead == 0:
        return kept_const.lstrip("; "), False
    if p.consumer is None or p.out_mask is not None:
        why = "output feeds the residual stream" if p.out_mask else "no known consumer"
        return f"not compacted: {why}; {n_dead} zero units kept{kept_const}", True
    consumer = model.get_submodule(p.consumer)
    per_unit = _consumer_columns(consumer, units)
    if isinstance(layer, nn.Conv2d) and layer.groups != 1 or per_unit is None:
        return f"not compacted: unsupported layer/consumer shapes; {n_dead} zero units kept", True
    cw = consumer.weight.detach()
    cols = cw.reshape(cw.shape[0], units, -1)[:, dead]
    dead[dead.clone()] = torch.isfinite(cols).all(2).all(0)  # NaN * 0 must stay NaN
    if not bool(dead.any()):
        return f"not compacted: consumer weights of the {n_dead} zero units are not finite", True
    keep = ~dead
    all_gone = not bool(keep.any())
    if all_gone:
        keep[0] = True  # one (zero-output) unit keeps every shape valid
    idx = keep.nonzero().flatten()
    with torch.no_grad():
        bias = layer.bias.detach()[idx] if layer.bias is not None else None
        _set(model, p.name, rebuild(layer, layer.weight.detach()[idx], bias))
        if bn is not None:
            _set(model, p.bn, _slice_bn(bn, idx))  # type: ignore[arg-type]
        col_idx = (idx[:, None] * per_unit + torch.arange(per_unit)).flatten()
        _set(model, p.consumer, rebuild(consumer, cw[:, col_idx] if cw.dim() == 2 else
                                        cw[:, idx], consumer.bias))
    note = f"compacted {units} -> {len(idx)} units"
    if all_gone:
        note += " (all pruned; one zero unit kept so shapes stay valid)"
    return note + kept_const, False


def _layers(module: nn.Module, x: torch.Tensor) -> list[PrunableLayer]:
    declared = getattr(module, "prunable_layers", None)
    if declared is not None:
        return list(declared)
    from sparsebench.graph import from_module
    from sparsebench.graph.analysis import layer_chains

    try:
        chains = layer_chains(from_module(module, tuple(x.shape[1:])))
    except SparsebenchError:
        return infer_prunable_layers(module)  # no graph: no consumers, nothing compacted
    return [PrunableLayer(c.layer, c.bn, None, c.consumer) for c in chains]


def convert_structured(model: nn.Module, *, name: str = "structured", index_dtype: str = "auto",
                       block: tuple[int, int] = (4, 4),
                       example: torch.Tensor | None = None) -> ConvertedModel:
    x = example_input(model, example)
    module = working_copy(model, x)
    notes: dict[str, tuple[str, bool]] = {}
    for p in _layers(module, x):
        try:
            notes[p.name] = compact(module, p)
        except AttributeError as exc:
            raise SparsebenchError(f"prunable layer {p.name!r} does not match the model: "
                                   f"{exc}") from exc
    pos = positions(module, x)
    storage = [dense_row(n, m, pos.get(n, 0), *notes.get(n, ("", False)))
               for n, m in weight_layers(module)]
    return ConvertedModel(name, module, {}, storage, tuple(x.shape[1:]),
                          other_bytes(module, [s.name for s in storage]),
                          unconverted=unconverted(module), layers_total=candidates(module))
