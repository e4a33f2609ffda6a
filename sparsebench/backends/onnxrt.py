"""onnxruntime: the converted module (dense or structured) exported to ONNX, run on the CPU EP.
For an ONNX model the dense row runs the user's own bytes instead (``prepare_original``).

Export uses the TorchScript-based exporter (``dynamo=False``, opset 17, dynamic batch axis): the
torch.export-based one needs onnxscript, which is an optional extra. ``onnx_sizes`` reports
the file size with dense initializers and with sparse initializers (``SparseTensorProto``).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from torch import nn

from sparsebench.backends.base import Backend, Prepared, Unsupported
from sparsebench.formats import ConvertedModel, format_family

OPSET = 17


def export_onnx(module: nn.Module, input_shape: tuple[int, ...], batch: int = 1) -> bytes:
    """Serialized ONNX of ``module`` (dynamic batch; one float input is named "input", several
    inputs keep their names; the first output is "output")."""
    from sparsebench.model_io import is_single_float, make_inputs, specs_of

    specs = specs_of(module, input_shape)
    names = ["input"] if is_single_float(specs) else [s.name for s in specs]
    axes = {n: {0: "batch"} for n in [*names, "output"]}
    if not is_single_float(specs):
        module = _ByName(module, names)
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), make_inputs(specs, batch), buf,
                              dynamo=False, opset_version=OPSET, input_names=names,
                              output_names=["output"], dynamic_axes=axes)
    except Exception as exc:  # noqa: BLE001 - any export failure makes the combination skip
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Unsupported(f"ONNX export (opset {OPSET}) failed: {first}") from exc
    return buf.getvalue()


class _ByName(nn.Module):
    """``module`` called with its inputs by name, returning its output tensors flat (HF models
    take keywords; the exporter would pass every default positionally)."""

    def __init__(self, module: nn.Module, names: list[str]) -> None:
        import inspect

        super().__init__()
        self.module, self.names = module, names
        try:
            params = inspect.signature(module.forward).parameters
        except (TypeError, ValueError):
            params = {}
        self.by_name = all(n in params for n in names)  # else positional (forward(*inputs))

    def forward(self, *xs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        from sparsebench.model_io import leaves

        out = leaves(self.module(**dict(zip(self.names, xs))) if self.by_name
                     else self.module(*xs))
        return out[0] if len(out) == 1 else tuple(out)


def sparsify_initializers(model: object) -> int:
    """Move every float initializer of rank >= 2 that has a zero into ``graph.sparse_initializer``
    (values float32 + linear int64 indices); returns how many were moved."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph  # type: ignore[attr-defined]
    moved = 0
    for init in list(graph.initializer):
        if init.data_type != TensorProto.FLOAT or len(init.dims) < 2:
            continue
        arr = numpy_helper.to_array(init)
        idx = np.flatnonzero(arr)
        if idx.size == arr.size:
            continue
        values = numpy_helper.from_array(arr.reshape(-1)[idx].astype(np.float32), init.name)
        indices = numpy_helper.from_array(idx.astype(np.int64), f"{init.name}_indices")
        graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices,
                                                                  list(init.dims)))
        graph.initializer.remove(init)
        moved += 1
    return moved


def sparse_onnx(data: bytes) -> tuple[bytes, int]:
    """``data`` re-serialized with sparse initializers, and how many were made sparse."""
    import onnx

    model = onnx.load_from_string(data)
    moved = sparsify_initializers(model)
    return model.SerializeToString(), moved


def onnx_sizes(converted: ConvertedModel) -> dict[str, int]:
    """ONNX file sizes in bytes: ``dense`` (all initializers dense), ``sparse`` (initializers
    with zeros as sparse initializers), and ``sparse_initializers`` (how many were moved)."""
    data = export_onnx(converted.module, converted.input_shape)
    sparse, moved = sparse_onnx(data)
    return {"dense": len(data), "sparse": len(sparse), "sparse_initializers": moved}


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64,
              "tensor(float16)": np.float16, "tensor(int64)": np.int64,
              "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
              "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


class OrtPrepared(Prepared):
    """A session fed one array per graph input (in graph order, cast to the type the graph
    declares); returns one tensor, or a tuple for several outputs."""

    def __init__(self, session: object, impl: str) -> None:
        self.session, self.impl = session, impl
        self.inputs = [(i.name, _ORT_TYPES.get(i.type, np.float32))  # type: ignore[attr-defined]
                       for i in session.get_inputs()]  # type: ignore[attr-defined]

    def run(self, *xs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        feed = {name: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=dtype)
                for (name, dtype), x in zip(self.inputs, xs)}
        outs = self.session.run(None, feed)  # type: ignore[attr-defined]
        return torch.from_numpy(outs[0]) if len(outs) == 1 else \
            tuple(torch.from_numpy(o) for o in outs)


def session(data: bytes, threads: int) -> object:
    """A CPU InferenceSession: ``threads`` intra-op, 1 inter-op, no spinning, all optimizations."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    families = ("dense", "structured")

    def unavailable(self) -> str | None:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            return f"onnxruntime not installed: {exc}"
        return None

    def prepare(self, converted: ConvertedModel, *, threads: int = 1,
                batch: int = 1) -> Prepared:
        self.check(converted, threads, batch)
        data = export_onnx(converted.module, converted.input_shape, batch)
        try:
            sess = session(data, threads)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise Unsupported(f"onnxruntime cannot load the model: "
                              f"{str(exc).strip().splitlines()[0]}") from exc
        return OrtPrepared(sess, f"ort-cpu-{format_family(converted.format)}")

    def prepare_original(self, data: bytes, inputs: list, *, threads: int = 1,
                         batch: int = 1) -> Prepared:
        """The user's own ONNX bytes on a session with the same options (the dense row of an
        ONNX model: "ONNX as given"), checked by one run on ``inputs`` at ``batch``."""
        from sparsebench.model_io import make_inputs

        reason = self.unavailable()
        if reason:
            raise Unsupported(reason)
        try:
            prepared = OrtPrepared(session(data, threads), "ort-cpu-dense-original")
            prepared.run(*make_inputs(inputs, batch))
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise Unsupported(f"onnxruntime cannot run the ONNX file: {first[:200]}") from exc
        return prepared
