"""torch: eager execution of the converted module (dense and structured formats)."""

from __future__ import annotations

import torch

from sparsebench.backends.base import Backend, ModulePrepared, Prepared
from sparsebench.formats import ConvertedModel


class TorchBackend(Backend):
    """``converted.module`` run eagerly under ``torch.inference_mode()``."""

    name = "torch"
    families = ("dense", "structured")

    def prepare(self, converted: ConvertedModel, *, threads: int = 1,
                batch: int = 1) -> Prepared:
        self.check(converted, threads, batch)
        torch.set_num_threads(threads)
        return ModulePrepared(converted.module.eval(), "torch-eager", threads)
