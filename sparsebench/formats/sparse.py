"""CSR and BSR: every Conv2d (groups=1, zero padding) and Linear gets a sparse copy of its weight.

The converted module stays the masked dense copy (the reference definition); backends swap the
layers listed in ``ConvertedModel.layers`` for ones executing the sparse payload.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from sparsebench.errors import SparsebenchError
from sparsebench.formats.base import (INDEX_DTYPES, INT16_MAX, ConvertedModel, LayerStorage,
                                      SparseWeight, bias_array, bsr_nbytes, csr_nbytes,
                                      dense_row, example_input, flat_weight, layer_kind,
                                      other_bytes, positions, weight_layers, working_copy)
from sparsebench.formats.layers import candidates, unconverted

INT32_MAX = int(np.iinfo(np.int32).max)


def pick_index_dtype(index_dtype: str, cols: int, default: str, what: str) -> np.dtype:
    """int16 or int32 for column indices in ``[0, cols)``; ``auto`` picks ``default`` or int16
    when the columns fit (csr), a too-small forced dtype is an error."""
    if index_dtype not in INDEX_DTYPES:
        raise SparsebenchError(f"unknown index dtype {index_dtype!r}; choose from: "
                               f"{', '.join(INDEX_DTYPES)}")
    if cols > INT32_MAX:
        raise SparsebenchError(f"{what} has {cols} columns, more than int32 indices can address")
    if index_dtype == "int16" and cols > INT16_MAX:
        raise SparsebenchError(f"int16 indices cannot address the {cols} columns of {what} "
                               f"(max {INT16_MAX}); use int32 or auto")
    if index_dtype == "auto":
        index_dtype = "int16" if default == "int16" and cols <= INT16_MAX else "int32"
    return np.dtype(index_dtype)


def _indptr(counts: np.ndarray, what: str) -> np.ndarray:
    total = int(counts.sum())
    if total > INT32_MAX:
        raise SparsebenchError(f"{what} has {total} stored entries, more than an int32 indptr "
                               f"can hold")
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)


def to_csr(w: np.ndarray, index_dtype: str = "auto", what: str = "matrix") -> SparseWeight:
    """CSR of a 2-D float matrix; entries that are not exactly zero (incl. NaN/Inf) are kept."""
    w = np.asarray(w, dtype=np.float32)
    rows, cols = w.shape
    dtype = pick_index_dtype(index_dtype, cols, "int16", what)
    keep = w != 0
    r, c = np.nonzero(keep)
    return SparseWeight("csr", "matrix", (rows, cols), w[r, c].astype(np.float32),
                        c.astype(dtype), _indptr(np.bincount(r, minlength=rows), what))


def to_bsr(w: np.ndarray, block: tuple[int, int] = (4, 4), index_dtype: str = "auto",
           what: str = "matrix") -> SparseWeight:
    """BSR of a 2-D float matrix, zero-padded up to a multiple of the block; a block is stored
    when any of its entries is not exactly zero."""
    w = np.asarray(w, dtype=np.float32)
    br, bc = check_block(block)
    rows, cols = w.shape
    prow, pcol = -(-rows // br) * br, -(-cols // bc) * bc
    padded = np.zeros((prow, pcol), dtype=np.float32)
    padded[:rows, :cols] = w
    dtype = pick_index_dtype(index_dtype, pcol // bc, "int32", what)
    blocks = padded.reshape(prow // br, br, pcol // bc, bc).transpose(0, 2, 1, 3)
    occupied = (blocks != 0).any(axis=(2, 3))
    bi, bj = np.nonzero(occupied)
    return SparseWeight("bsr", "matrix", (rows, cols),
                        np.ascontiguousarray(blocks[bi, bj], dtype=np.float32), bj.astype(dtype),
                        _indptr(np.bincount(bi, minlength=prow // br), what), block=(br, bc),
                        padded_shape=(prow, pcol))


def check_block(block: tuple[int, int] | list[int]) -> tuple[int, int]:
    try:
        br, bc = (int(v) for v in block)
    except (TypeError, ValueError):
        raise SparsebenchError(f"block must be two positive integers (R, C), got {block!r}")
    if br < 1 or bc < 1:
        raise SparsebenchError(f"block sizes must be positive, got {br}x{bc}")
    return br, bc


def unsupported_reason(module: nn.Module) -> str | None:
    """Why a Conv2d/Linear cannot become a sparse matrix layer, or None."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return f"kept dense: grouped conv (groups={module.groups}) not supported"
        if isinstance(module.padding, str):
            return f"kept dense: padding={module.padding!r} not supported"
        if module.padding_mode != "zeros":
            return f"kept dense: padding_mode={module.padding_mode!r} not supported"
    return None


def sparse_weight(module: nn.Module, kind: str, index_dtype: str, block: tuple[int, int],
                  what: str) -> SparseWeight:
    """The CSR/BSR payload of one Conv2d/Linear, with its bias and conv geometry."""
    w = flat_weight(module)
    sw = to_csr(w, index_dtype, what) if kind == "csr" else to_bsr(w, block, index_dtype, what)
    sw.layer = layer_kind(module) or "?"
    sw.bias = bias_array(module)
    if isinstance(module, nn.Conv2d):
        sw.in_channels, sw.out_channels = module.in_channels, module.out_channels
        sw.kernel_size = tuple(module.kernel_size)  # type: ignore[assignment]
        sw.stride = tuple(module.stride)  # type: ignore[assignment]
        sw.padding = tuple(module.padding)  # type: ignore[assignment]
        sw.dilation = tuple(module.dilation)  # type: ignore[assignment]
        sw.groups = module.groups
    return sw


def storage_format(sw: SparseWeight) -> str:
    idx = "i16" if sw.indices.dtype == np.int16 else "i32"
    if sw.kind == "csr":
        return f"csr-{idx}"
    r, c = sw.block or (1, 1)
    return f"bsr-{r}x{c}" + ("-i16" if idx == "i16" else "")


def sparse_row(name: str, module: nn.Module, sw: SparseWeight, pos: int) -> LayerStorage:
    rows, cols = sw.shape
    bias = 0 if sw.bias is None else sw.bias.size
    idx = sw.indices.dtype.itemsize
    nnz = int(torch.count_nonzero(module.weight.detach()))
    if sw.kind == "csr":
        nbytes = csr_nbytes(sw.values.size, rows, idx, bias)
        note = ""
    else:
        block = sw.block or (1, 1)
        prow, pcol = sw.stored_shape
        nbytes = bsr_nbytes(sw.nblocks, block, prow // block[0], idx, bias)
        stored = sw.nblocks * block[0] * block[1]
        fill = f"{nnz / stored:.0%}" if stored else "n/a"
        note = f"{sw.nblocks} blocks, fill {fill}"
        if (prow, pcol) != (rows, cols):
            note += f", padded to {prow}x{pcol}"
    return LayerStorage(name, sw.layer, storage_format(sw), tuple(module.weight.shape), nnz,
                        module.weight.numel(), nbytes, rows * cols * pos, nnz * pos, note)


def convert_sparse(model: nn.Module, kind: str, *, name: str, index_dtype: str = "auto",
                   block: tuple[int, int] = (4, 4),
                   example: torch.Tensor | None = None) -> ConvertedModel:
    """CSR (``kind="csr"``) or BSR (``kind="bsr"``) payloads for every supported layer."""
    x = example_input(model, example)
    module = working_copy(model, x)
    pos = positions(module, x)
    block = check_block(block)
    layers: dict[str, SparseWeight] = {}
    storage: list[LayerStorage] = []
    for lname, mod in weight_layers(module):
        reason = unsupported_reason(mod)
        if reason:
            storage.append(dense_row(lname, mod, pos.get(lname, 0), reason, fallback=True))
            continue
        sw = sparse_weight(mod, kind, index_dtype, block, f"layer {lname!r}")
        layers[lname] = sw
        storage.append(sparse_row(lname, mod, sw, pos.get(lname, 0)))
    return ConvertedModel(name, module, layers, storage, tuple(x.shape[1:]),
                          other_bytes(module, [s.name for s in storage]),
                          block if kind == "bsr" else None, index_dtype,
                          unconverted(module), candidates(module))


def convert_csr(model: nn.Module, *, name: str = "csr", index_dtype: str = "auto",
                block: tuple[int, int] = (4, 4),
                example: torch.Tensor | None = None) -> ConvertedModel:
    return convert_sparse(model, "csr", name=name, index_dtype=index_dtype, example=example)


def convert_bsr(model: nn.Module, *, name: str = "bsr", index_dtype: str = "auto",
                block: tuple[int, int] = (4, 4),
                example: torch.Tensor | None = None) -> ConvertedModel:
    return convert_sparse(model, "bsr", name=name, index_dtype=index_dtype, block=block,
                          example=example)
