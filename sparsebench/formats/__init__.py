"""Storage formats: turn a masked model into data (no execution, no timing).

``convert(model, "csr")`` returns a :class:`ConvertedModel`: a dense torch definition of the
same function, per-layer sparse payloads (csr/bsr) and exact per-layer byte counts. See
docs/formats.md for what each format does to each layer and the byte formulas.
"""

from __future__ import annotations

import torch
from torch import nn

from sparsebench.errors import SparsebenchError
from sparsebench.formats.base import (INDEX_DTYPES, ConvertedModel, LayerStorage, SparseWeight,
                                      bsr_nbytes, csr_nbytes, dense_nbytes, has_nonfinite)
from sparsebench.catalog import BSR_BLOCKS, FORMATS  # the names: sparsebench/catalog.py

__all__ = ["FORMATS", "ConvertedModel", "LayerStorage", "SparseWeight", "bsr_nbytes", "convert",
           "csr_nbytes", "dense_nbytes", "format_family", "has_nonfinite", "list_formats"]


def format_family(name: str) -> str:
    """``"bsr-8x8"`` -> ``"bsr"``; other names unchanged."""
    return name.split("-", 1)[0]


def list_formats(pattern: str = "*") -> list[str]:
    return FORMATS.names(pattern)


def convert(model: nn.Module, fmt: str, *, index_dtype: str = "auto",
            block: tuple[int, int] | None = None,
            example: torch.Tensor | None = None) -> ConvertedModel:
    """Convert an eval-mode model whose pruned weights are already zero into format ``fmt``.

    ``block`` applies to ``bsr`` (default 4x4); a ``bsr-RxC`` name fixes the block itself.
    ``example`` (a batch) fixes the input shape used for MAC counts; default zeros of
    ``model.input_shape``.
    """
    converter = FORMATS.get(fmt)
    if index_dtype not in INDEX_DTYPES:
        raise SparsebenchError(f"unknown index dtype {index_dtype!r}; choose from: "
                               f"{', '.join(INDEX_DTYPES)}")
    if fmt in BSR_BLOCKS:
        if block is not None and tuple(block) != BSR_BLOCKS[fmt]:
            raise SparsebenchError(f"format {fmt!r} fixes the block to "
                                   f"{'x'.join(map(str, BSR_BLOCKS[fmt]))}; got block={block}")
        block = BSR_BLOCKS[fmt]
    elif block is not None and format_family(fmt) != "bsr":
        raise SparsebenchError(f"block applies to bsr formats only, not {fmt!r}")
    return converter(model, name=fmt, index_dtype=index_dtype, block=block or (4, 4),
                     example=example)
