"""The data every format produces: per-layer storage rows, sparse payloads, the converted model.

Byte formulas (exact; docs/formats.md): all values are float32, ``indptr`` is int32, column
indices are int16 or int32 (``idx``), bias is float32 and counted with its layer.

* dense: ``4*numel + 4*bias``
* csr:   ``4*nnz + idx*nnz + 4*(rows+1) + 4*bias``
* bsr:   ``4*nblocks*R*C + idx*nblocks + 4*(block_rows+1) + 4*bias`` (``idx`` is 4 unless forced)
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from sparsebench.errors import SparsebenchError
from sparsebench.formats.layers import expose_layers, inside_attention

INDEX_DTYPES = ("auto", "int16", "int32")
INT16_MAX = int(np.iinfo(np.int16).max)


def dense_nbytes(numel: int, bias: int = 0) -> int:
    """Bytes of a dense float32 weight with ``bias`` float32 bias entries."""
    return 4 * numel + 4 * bias


def csr_nbytes(nnz: int, rows: int, idx_bytes: int, bias: int = 0) -> int:
    """Bytes of a CSR weight: values, column indices, int32 row pointers, bias."""
    return 4 * nnz + idx_bytes * nnz + 4 * (rows + 1) + 4 * bias


def bsr_nbytes(nblocks: int, block: tuple[int, int], block_rows: int, idx_bytes: int = 4,
               bias: int = 0) -> int:
    """Bytes of a BSR weight: dense R x C blocks, block column indices, int32 block-row pointers."""
    r, c = block
    return 4 * nblocks * r * c + idx_bytes * nblocks + 4 * (block_rows + 1) + 4 * bias


@dataclass
class LayerStorage:
    """How one Conv2d/Linear is stored by a format (one row of the size report)."""

    name: str
    kind: str                 # "conv" | "linear"
    format: str               # what the layer is actually stored as: "dense", "csr-i16", "bsr-4x4"
    shape: tuple[int, ...]    # weight shape as stored (structured: after compaction)
    nnz: int                  # nonzero weight entries (NaN/Inf count as nonzero)
    numel: int                # weight entries of ``shape``
    nbytes: int               # exact bytes of weight + indices + bias in this format
    dense_macs: int           # per sample: out_units * in_per_out * positions
    sparse_macs: int          # per sample: nnz * positions
    note: str = ""
    fallback: bool = False    # the format could not (fully) take this layer; ``note`` says why


@dataclass
class SparseWeight:
    """A CSR or BSR copy of one layer's weight, flattened to out_units x (in * kh * kw).

    Conv column index = c*kh*kw + ky*kw + kx (the order of ``weight.reshape(Cout, -1)`` and of
    ``torch.nn.functional.unfold``). BSR matrices are zero-padded to ``padded_shape``.
    """

    kind: str                          # "csr" | "bsr"
    layer: str                         # "conv" | "linear"
    shape: tuple[int, int]             # logical (rows, cols)
    values: np.ndarray                 # float32: (nnz,) csr; (nblocks, R, C) bsr
    indices: np.ndarray                # int16/int32 column (csr) or block column (bsr) indices
    indptr: np.ndarray                 # int32, rows+1 (csr) or block_rows+1 (bsr)
    bias: np.ndarray | None = None     # float32 (rows,)
    block: tuple[int, int] | None = None
    padded_shape: tuple[int, int] | None = None   # bsr: shape rounded up to the block
    in_channels: int | None = None     # conv geometry (None for linear)
    out_channels: int | None = None
    kernel_size: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    padding: tuple[int, int] | None = None
    dilation: tuple[int, int] | None = None
    groups: int | None = None

    @property
    def stored_shape(self) -> tuple[int, int]:
        return self.padded_shape or self.shape

    @property
    def nnz(self) -> int:
        """Nonzero values stored (for bsr, explicit zeros inside blocks are not counted)."""
        return int(np.count_nonzero(self.values))

    @property
    def nblocks(self) -> int:
        return int(self.values.shape[0]) if self.kind == "bsr" else 0

    @property
    def index_dtype(self) -> str:
        return str(self.indices.dtype)

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays actually held (equals the format's byte formula)."""
        arrays = [self.values, self.indices, self.indptr]
        if self.bias is not None:
            arrays.append(self.bias)
        return int(sum(a.nbytes for a in arrays))

    def to_dense(self) -> np.ndarray:
        """The logical (rows, cols) float32 matrix."""
        rows, cols = self.stored_shape
        out = np.zeros((rows, cols), dtype=np.float32)
        counts = np.diff(self.indptr.astype(np.int64))
        if self.kind == "csr":
            out[np.repeat(np.arange(rows), counts), self.indices.astype(np.int64)] = self.values
        else:
            r, c = self.block or (1, 1)
            view = out.reshape(rows // r, r, cols // c, c).transpose(0, 2, 1, 3)
            view[np.repeat(np.arange(rows // r), counts), self.indices.astype(np.int64)] = \
                self.values
            out = view.transpose(0, 2, 1, 3).reshape(rows, cols)
        return out[: self.shape[0], : self.shape[1]]


@dataclass
class ConvertedModel:
    """A model in one format: a dense torch definition, sparse payloads and exact sizes."""

    format: str
    module: nn.Module          # dense torch module computing the same function (see docs)
    layers: dict[str, SparseWeight]
    storage: list[LayerStorage]
    input_shape: tuple[int, ...]
    other_bytes: int = 0       # every other parameter/buffer of ``module`` (BatchNorm, masks)
    block: tuple[int, int] | None = None
    index_dtype: str = "auto"
    # weight-holding modules that are not Conv2d/Linear and stayed dense: name -> reason
    unconverted: dict[str, str] = field(default_factory=dict)
    layers_total: int | None = None   # candidate layers (``layers.candidates``); None: storage

    @property
    def weight_bytes(self) -> int:
        """Exact bytes of the stored model: every layer row plus all other params/buffers."""
        return sum(s.nbytes for s in self.storage) + self.other_bytes

    @property
    def inputs(self) -> list[Any]:
        """The model's inputs (``sparsebench.model_io.InputSpec``; one float input of
        ``input_shape`` unless the loaded module recorded others)."""
        from sparsebench.model_io import specs_of

        return specs_of(self.module, self.input_shape)

    @property
    def dense_layers(self) -> list[tuple[str, str]]:
        """(layer name, reason) for the layers this format could not take."""
        return [(s.name, s.note) for s in self.storage if s.fallback] + \
            list(self.unconverted.items())

    @property
    def layers_converted(self) -> int:
        """Candidate layers held in this format (for dense: every layer)."""
        total = len(self.storage) if self.layers_total is None else self.layers_total
        return max(total - len(self.dense_layers), 0)

    @property
    def layer_counts(self) -> dict[str, Any]:
        """``{"converted": c, "total": t, "dense": {name: reason}}`` (the rows' ``layers``)."""
        total = len(self.storage) if self.layers_total is None else self.layers_total
        return {"converted": self.layers_converted, "total": total,
                "dense": dict(self.dense_layers)}

    def no_layer_reason(self) -> str | None:
        """For a format that converts layers (not dense): why it converted none, else None."""
        if self.format == "dense" or self.layers_converted > 0:
            return None
        reasons = list(dict.fromkeys(r for _, r in self.dense_layers))
        why = "; ".join(reasons[:3]) if reasons else "the model has no Conv2d/Linear layer"
        return f"{self.format} converted no layer ({why})"

    @property
    def nnz(self) -> int:
        return sum(s.nnz for s in self.storage)


def layer_kind(module: nn.Module) -> str | None:
    if isinstance(module, nn.Conv2d):
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    return None


def weight_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """The Conv2d/Linear modules of ``model`` in registration order (not the out_proj of an
    unsplit MultiheadAttention, which reads its weight directly)."""
    skip = inside_attention(model)
    for name, module in model.named_modules():
        if layer_kind(module) is not None and id(module) not in skip:
            yield name, module


def working_copy(model: nn.Module, example: torch.Tensor, expose: bool = True) -> nn.Module:
    """A float32 eval-mode deep copy of ``model`` for a format to own; ``expose``: with its
    HF Conv1D and MultiheadAttention projections rewritten as Linear (``layers``), and a
    TorchScript module read as its graph (exported to ONNX and imported with real Conv2d/Linear
    modules, ``graph.from_torchscript``; ``example`` gives the input shape)."""
    if expose and isinstance(model, torch.jit.ScriptModule):
        from sparsebench.graph import from_torchscript

        model = from_torchscript(model, tuple(example.shape[1:]))
    module = copy.deepcopy(model).float().eval()
    if expose:
        expose_layers(module)
    return module


def flat_weight(module: nn.Module) -> np.ndarray:
    """The weight as a float32 (out_units, in*kh*kw) numpy matrix (a copy)."""
    w = module.weight.detach().to(torch.float32).cpu()
    return w.reshape(w.shape[0], -1).numpy().copy()


def bias_array(module: nn.Module) -> np.ndarray | None:
    b = getattr(module, "bias", None)
    return None if b is None else b.detach().to(torch.float32).cpu().numpy().copy()


def example_input(model: nn.Module, example: torch.Tensor | None) -> torch.Tensor:
    """``example``, else a meta tensor of the model's ``input_shape`` (batch 1): only its shape
    is used, so nothing is allocated however large the input."""
    if example is not None:
        return example
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise SparsebenchError("model has no input_shape; pass an example input to convert()")
    return torch.empty(1, *tuple(int(s) for s in shape), device="meta")


def trace_outputs(model: nn.Module, shape: tuple[int, ...],
                  modules: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module, tuple]]:
    """(name, module, output shape) of every call of ``modules`` in one forward pass of a batch
    of ``shape`` (batch first). Runs on fake tensors (shapes only, nothing allocated); a model
    whose ops have no shape rule runs on real zeros instead."""
    calls: list[tuple[str, nn.Module, tuple]] = []

    def hook(name: str) -> Any:
        def record(mod: nn.Module, inputs: object, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                calls.append((name, mod, tuple(out.shape)))
        return record

    from sparsebench.model_io import is_single_float, make_inputs, specs_of

    specs = getattr(model, "input_specs", None)
    several = specs and not is_single_float(specs)  # token ids, masks: real (small) tensors
    hooks = [mod.register_forward_hook(hook(name)) for name, mod in modules]
    try:
        try:
            from torch._subclasses.fake_tensor import FakeTensorMode

            xs = make_inputs(specs_of(model), shape[0]) if several else None
            with FakeTensorMode(allow_non_fake_inputs=True), torch.inference_mode():
                model(*(xs or (torch.empty(shape),)))
        except Exception:  # noqa: BLE001 - no fake kernel for some op: fall back to real data
            calls.clear()
            with torch.inference_mode():
                model(*(make_inputs(specs_of(model), shape[0]) if several
                        else (torch.zeros(shape),)))
    except Exception as exc:  # noqa: BLE001 - any failure is the user's model/input mismatch
        raise SparsebenchError(f"model does not run on an input of shape "
                               f"{tuple(shape)}: {str(exc).splitlines()[0]}") from exc
    finally:
        for h in hooks:
            h.remove()
    return calls


def positions(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Per-sample output positions of each Conv2d/Linear on ``example`` (Ho*Wo for a conv, 1 for
    a linear on vectors; summed over repeated calls; 0 if the layer did not run)."""
    counts: dict[str, int] = {}
    for name, mod, out in trace_outputs(model, (1, *example.shape[1:]), weight_layers(model)):
        units = mod.out_channels if isinstance(mod, nn.Conv2d) else mod.out_features
        counts[name] = counts.get(name, 0) + math.prod(out) // max(units, 1)
    return counts


def dense_row(name: str, module: nn.Module, pos: int, note: str = "",
              fallback: bool = False) -> LayerStorage:
    """The storage row of a layer kept as a plain dense float32 tensor."""
    w = module.weight.detach()
    bias = 0 if module.bias is None else module.bias.numel()
    nnz = int(torch.count_nonzero(w))
    return LayerStorage(name, layer_kind(module) or "?", "dense", tuple(w.shape), nnz, w.numel(),
                        dense_nbytes(w.numel(), bias), w[0].numel() * w.shape[0] * pos,
                        nnz * pos, note, fallback)


def other_bytes(model: nn.Module, covered: list[str]) -> int:
    """Bytes of every parameter and buffer not owned (as weight/bias) by a ``covered`` layer."""
    skip: set[int] = set()
    for name in covered:
        mod = model.get_submodule(name)
        for attr in ("weight", "bias"):
            t = getattr(mod, attr, None)
            if t is not None:
                skip.add(id(t))
    total = 0
    for _, t in list(model.named_parameters()) + list(model.named_buffers()):
        if id(t) not in skip:
            total += t.numel() * t.element_size()
    return total


def has_nonfinite(model: nn.Module) -> list[str]:
    """Names of modules holding a NaN or Inf in their own parameters or floating buffers."""
    bad = []
    for name, mod in model.named_modules():
        tensors = list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False))
        if any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in tensors):
            bad.append(name)
    return bad
