"""torch-sparse: csr/bsr layers as ``torch.sparse_csr_tensor``/``torch.sparse_bsr_tensor``.

torch.sparse takes int32 or int64 indices only, so int16 payloads are widened to int32 (the
impl name says ``-i32``). Convolutions materialise im2col (``F.unfold``). What torch cannot
multiply (CPU BSR with non-square blocks: MKL refuses them) raises :class:`Unsupported` at
prepare time, found by one validation run on zeros.
"""

from __future__ import annotations

import warnings

import torch

from sparsebench.backends.base import (Backend, MatmulLayer, ModulePrepared, Prepared,
                                       block_name, swap_layers, validate)
from sparsebench.formats import ConvertedModel, SparseWeight, format_family


def torch_matrix(sw: SparseWeight) -> torch.Tensor:
    """The payload as a CPU sparse CSR/BSR tensor with int32 indices."""
    crow = torch.from_numpy(sw.indptr.astype("int32"))
    col = torch.from_numpy(sw.indices.astype("int32"))
    values = torch.from_numpy(sw.values.copy())
    with warnings.catch_warnings():  # "sparse CSR support is in beta" etc.
        warnings.simplefilter("ignore")
        if sw.kind == "csr":
            return torch.sparse_csr_tensor(crow, col, values, size=sw.stored_shape)
        return torch.sparse_bsr_tensor(crow, col, values, size=sw.stored_shape)


class TorchSparseLayer(MatmulLayer):
    def __init__(self, sw: SparseWeight) -> None:
        super().__init__(sw)
        self.matrix = torch_matrix(sw)

    def matmul(self, m: torch.Tensor) -> torch.Tensor:
        return torch.mm(self.matrix, m)


class TorchSparseBackend(Backend):
    name = "torch-sparse"
    families = ("csr", "bsr")

    def unavailable(self) -> str | None:
        if not hasattr(torch, "sparse_bsr_tensor"):
            return f"torch {torch.__version__} has no sparse BSR tensors"
        return None

    def prepare(self, converted: ConvertedModel, *, threads: int = 1,
                batch: int = 1) -> Prepared:
        self.check(converted, threads, batch)
        fam = format_family(converted.format)
        torch.set_num_threads(threads)
        impl = f"torch-sparse-{'csr' if fam == 'csr' else block_name(converted)}-i32"
        prepared = ModulePrepared(swap_layers(converted, TorchSparseLayer), impl, threads)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            validate(prepared, converted, batch, "torch.sparse")
        return prepared
