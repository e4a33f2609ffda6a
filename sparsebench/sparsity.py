"""Per-layer parameter, nonzero and sparsity counts of a model."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def layer_rows(model: nn.Module, unit_masks: dict[str, torch.Tensor] | None = None
               ) -> list[dict[str, Any]]:
    """One row per module that owns parameters directly: name, type, weight shape, params,
    nonzeros, sparsity and (for filter-pruned layers) alive units "kept/total"."""
    unit_masks = unit_masks or {}
    rows = []
    for name, module in model.named_modules():
        params = list(module.parameters(recurse=False))
        if not params:
            continue
        total = sum(p.numel() for p in params)
        nonzero = sum(int(torch.count_nonzero(p)) for p in params)
        weight = getattr(module, "weight", None)
        mask = unit_masks.get(name)
        rows.append({
            "name": name, "type": type(module).__name__,
            "shape": list(weight.shape) if isinstance(weight, torch.Tensor) else [total],
            "params": total, "nonzero": nonzero,
            "sparsity": 1.0 - nonzero / total if total else 0.0,
            "alive": f"{int(mask.sum())}/{mask.numel()}" if mask is not None else "",
        })
    return rows
