"""The backend protocol and the pieces shared by the module-swapping backends.

A backend turns a :class:`ConvertedModel` into a :class:`Prepared` (all setup, no timing);
``Prepared.run(*inputs)`` (one tensor per model input, ``model_io.make_inputs``) is the call
the harness times.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.errors import SparsebenchError
from sparsebench.formats import FORMATS, ConvertedModel, SparseWeight, format_family


class Unsupported(Exception):
    """A (format, backend, model) combination that cannot run; the message is the one-line
    reason the harness records on the skipped row."""


class Prepared:
    """A model ready to run on one backend; ``impl`` names what actually executes."""

    impl: str = ""

    def run(self, *inputs: torch.Tensor) -> Any:
        """Forward a batch (one tensor per model input); returns what the model returns (a
        tensor, or a tuple/dict/``ModelOutput`` of them). This is the timed call."""
        raise NotImplementedError

    def release_setup(self) -> None:
        """Free what only setup needed (e.g. dense copies of converted layers), before the
        timed calls; ``run`` keeps working for the batch sizes already run. Default: nothing."""


class ModulePrepared(Prepared):
    """A torch module run eagerly under ``inference_mode`` with a fixed intra-op thread count."""

    def __init__(self, module: nn.Module, impl: str, threads: int) -> None:
        self.module, self.impl, self.threads = module, impl, threads

    def run(self, *inputs: torch.Tensor) -> Any:
        if torch.get_num_threads() != self.threads:  # another prepared model may have changed it
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            return self.module(*inputs)


class Backend:
    """Executes some formats. Subclasses set ``name``/``formats`` and implement ``prepare``."""

    name: str = ""
    families: tuple[str, ...] = ()     # format families ("csr" covers csr; "bsr" every bsr-RxC)

    @property
    def formats(self) -> tuple[str, ...]:
        """Every registered format name this backend can execute."""
        return tuple(n for n in FORMATS.names() if format_family(n) in self.families)

    def supports(self, fmt: str) -> bool:
        return format_family(fmt) in self.families

    def unavailable(self) -> str | None:
        """None when usable here, else a one-line reason."""
        return None

    def prepare(self, converted: ConvertedModel, *, threads: int = 1,
                batch: int = 1) -> Prepared:
        raise NotImplementedError

    def check(self, converted: ConvertedModel, threads: int, batch: int) -> None:
        """Raise Unsupported/SparsebenchError unless ``converted`` can be prepared here."""
        if threads < 1 or batch < 1:
            raise SparsebenchError(f"threads and batch must be >= 1, got threads={threads}, "
                                   f"batch={batch}")
        reason = self.unavailable()
        if reason:
            raise Unsupported(reason)
        if not self.supports(converted.format):
            raise Unsupported(f"backend {self.name} does not execute format {converted.format} "
                              f"(it runs: {', '.join(self.families)})")


class MatmulLayer(nn.Module):
    """A Conv2d/Linear computed as ``W @ X`` with a sparse ``W``: Linear as (W @ x^T)^T + b, Conv2d
    via im2col (``F.unfold``) then the matmul. Subclasses provide ``matmul`` on a (cols, N)
    float32 tensor returning (rows, N); BSR padding of rows/cols is handled here."""

    def __init__(self, sw: SparseWeight) -> None:
        super().__init__()
        self.layer = sw.layer
        self.rows, self.cols = sw.shape
        self.prows, self.pcols = sw.stored_shape
        self.bias_t = None if sw.bias is None else torch.from_numpy(sw.bias.copy())
        self.kernel_size, self.stride = sw.kernel_size, sw.stride
        self.padding, self.dilation = sw.padding, sw.dilation

    def matmul(self, m: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _product(self, m: torch.Tensor) -> torch.Tensor:
        if self.pcols != self.cols:
            m = F.pad(m, (0, 0, 0, self.pcols - self.cols))
        y = self.matmul(m)
        return y[: self.rows] if self.prows != self.rows else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer == "linear":
            lead = x.shape[:-1]
            y = self._product(x.reshape(-1, self.cols).t()).t()
            if self.bias_t is not None:
                y = y + self.bias_t
            return y.reshape(*lead, self.rows)
        b, _, h, w = x.shape
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
        ho, wo = (
            (size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, p, d, k, s in zip((h, w), self.padding, self.dilation, self.kernel_size,
                                        self.stride)
        )
        y = self._product(cols.transpose(0, 1).reshape(self.cols, -1))  # (Cout, B*Ho*Wo)
        if self.bias_t is not None:
            y = y + self.bias_t[:, None]
        return y.reshape(self.rows, b, ho, wo).transpose(0, 1).contiguous()


def swap_layers(converted: ConvertedModel, make: type[MatmulLayer]) -> nn.Module:
    """A deepcopy of ``converted.module`` with each converted layer replaced by ``make(sw)``."""
    module = copy.deepcopy(converted.module).eval()
    for name, sw in converted.layers.items():
        parent, _, attr = name.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, attr, make(sw))
    return module


def validate(prepared: Prepared, converted: ConvertedModel, batch: int, what: str) -> None:
    """Run once on the model's inputs so a combination the library cannot execute fails at
    prepare time."""
    from sparsebench.model_io import make_inputs

    try:
        prepared.run(*make_inputs(converted.inputs, batch))
    except (RuntimeError, NotImplementedError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Unsupported(f"{what} cannot run {converted.format}: {first}") from exc


def block_name(converted: ConvertedModel) -> str:
    r, c = converted.block or (4, 4)
    return f"bsr-{r}x{c}"
