"""scipy: csr/bsr layers as ``scipy.sparse`` matrices (single-threaded), torch for the rest.

Each swapped layer goes torch -> numpy -> scipy -> torch; convolutions use im2col
(``F.unfold``). scipy keeps its own index dtype (int32 for these sizes, int16 payloads are
widened); the impl name records it, and ``-t1`` marks runs asked for more than one thread.
"""

from __future__ import annotations

import numpy as np
import torch

from sparsebench.backends.base import (Backend, MatmulLayer, ModulePrepared, Prepared,
                                       block_name, swap_layers, validate)
from sparsebench.formats import ConvertedModel, SparseWeight, format_family


def scipy_matrix(sw: SparseWeight) -> object:
    import scipy.sparse as sp

    if sw.kind == "csr":
        return sp.csr_matrix((sw.values, sw.indices, sw.indptr), shape=sw.stored_shape)
    return sp.bsr_matrix((sw.values, sw.indices, sw.indptr), shape=sw.stored_shape,
                         blocksize=sw.block)


class ScipyLayer(MatmulLayer):
    def __init__(self, sw: SparseWeight) -> None:
        super().__init__(sw)
        self.matrix = scipy_matrix(sw)

    def matmul(self, m: torch.Tensor) -> torch.Tensor:
        out = self.matrix @ np.ascontiguousarray(m.numpy(), dtype=np.float32)
        return torch.from_numpy(np.asarray(out, dtype=np.float32))


class ScipyBackend(Backend):
    name = "scipy"
    families = ("csr", "bsr")

    def unavailable(self) -> str | None:
        try:
            import scipy.sparse  # noqa: F401
        except ImportError as exc:
            return f"scipy not installed: {exc}"
        return None

    def prepare(self, converted: ConvertedModel, *, threads: int = 1,
                batch: int = 1) -> Prepared:
        self.check(converted, threads, batch)
        torch.set_num_threads(threads)  # the non-sparse layers still run in torch
        module = swap_layers(converted, ScipyLayer)
        widths = {m.matrix.indices.dtype.itemsize for m in module.modules()
                  if isinstance(m, ScipyLayer)}
        idx = f"i{8 * max(widths)}" if widths else "i32"
        fam = format_family(converted.format)
        impl = f"scipy-{'csr' if fam == 'csr' else block_name(converted)}-{idx}"
        prepared = ModulePrepared(module, impl + ("-t1" if threads > 1 else ""), threads)
        validate(prepared, converted, batch, "scipy")
        return prepared
