"""dense: a float32 copy of the masked model; every weight stored in full."""

from __future__ import annotations

import torch
from torch import nn

from sparsebench.formats.base import (ConvertedModel, dense_row, example_input, other_bytes,
                                      positions, weight_layers, working_copy)
from sparsebench.formats.layers import candidates


def convert_dense(model: nn.Module, *, name: str = "dense", index_dtype: str = "auto",
                  block: tuple[int, int] = (4, 4),
                  example: torch.Tensor | None = None) -> ConvertedModel:
    x = example_input(model, example)
    module = working_copy(model, x, expose=False)  # the model as given: no layer is rewritten
    pos = positions(module, x)
    storage = [dense_row(n, m, pos.get(n, 0)) for n, m in weight_layers(module)]
    return ConvertedModel(name, module, {}, storage, tuple(x.shape[1:]),
                          other_bytes(module, [s.name for s in storage]),
                          layers_total=candidates(module))
