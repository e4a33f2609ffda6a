"""``sparsebench export-c``: a model as self-contained C99 with a test vector.

The export is a folder: ``sb_model.c``/``.h`` (weights as ``const`` arrays in the chosen
encodings, one static arena planned as in ``embedded.arena``, ``sb_run()`` calling the
reference kernels in execution order), ``sb_kernels.c``/``.h`` (plain C99, float32, no
allocation, no libm), ``sb_test_vector.h`` (a seeded input and PyTorch's output for it),
``main.c`` (runs the test vector, prints the outputs and the max abs error, exit code 0 when it
is within 1e-4), a ``Makefile`` for the host and ``port/`` (the bare-metal Cortex-M and
libc-free Linux start-up files ``profile --build`` uses).

Encodings: ``fp32-dense`` and ``fp32-csr16`` (float values, uint16 column indices, int32 row
pointers) per layer; ``auto`` picks the smaller of the two for each layer. int8 (``int8-dense``,
``int8-csr8`` / ``-csr16`` / ``-csr32``, ``int8-bitmask``; ``int8`` = the smallest of them per
layer) is a full-integer model in TensorFlow Lite's scheme (``embedded.quant``): int8 weights
and activations, int32 accumulators, calibrated scales; the test vector then holds the int8
input and the Python integer reference's int8 output, which the C must reproduce exactly. One
value type per model (no fp32/int8 mix). Block-sparse (``fp32-bsr``/``int8-bsr``, the block
given by ``block``) is exported too.

Layer types: Conv2d (groups=1, numeric zero padding), Linear, ReLU, MaxPool2d, AvgPool2d
(ceil_mode off), AdaptiveAvgPool2d with whole windows, BatchNorm (folded into the preceding
layer, or a per-channel scale and shift), residual add, multiplication or addition by a scalar
or per-channel constant; flatten/view/dropout cost nothing. This covers the zoo's ``lenet300``,
``lenet5``, ``vgg11_bn`` and ``resnet18``; ``ffn`` (GELU) is not supported.
"""

from __future__ import annotations

import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparsebench.errors import SparsebenchError
from sparsebench.graph.reference import output
from sparsebench.embedded.arena import ArenaPlan, plan_graph
from sparsebench.embedded.encodings import (BUILDABLE, C_ENCODINGS, INT8_C_ENCODINGS, cheapest,
                                             encoding_label, layer_bytes, pad4)
from sparsebench.embedded.lowering import Graph, Op, trace

CSRC = Path(__file__).resolve().parent / "csrc"
SUPPORTED_OPS = ("conv2d (groups=1, zero padding), linear, relu, maxpool2d, avgpool2d, "
                 "adaptive avgpool (whole windows), batchnorm, add, mul/add by a per-channel "
                 "constant")
SUPPORTED_ARCHS = ("lenet300", "lenet5", "vgg11_bn", "resnet18")
ENCODING_NAMES = {"auto": "auto", "dense": "fp32-dense", "csr": "fp32-csr16", "c": "auto",
                  "int8": "int8", **{e: e for e in BUILDABLE}}
SBQ_ENC = {"int8-dense": "SBQ_DENSE", "int8-csr8": "SBQ_CSR8", "int8-csr16": "SBQ_CSR16",
           "int8-csr32": "SBQ_CSR32", "int8-bitmask": "SBQ_BITMASK", "int8-bsr": "SBQ_BSR"}
KERNEL_FILES = ("sb_kernels.c", "sb_kernels.h", "main.c")
PORT_FILES = ("sb_port.h", "port_cm.c", "link_cm.ld", "port_linux.c")


@dataclass
class CArray:
    symbol: str
    ctype: str           # float | int8_t | uint8_t | uint16_t | uint32_t | int32_t
    values: np.ndarray

    def __post_init__(self) -> None:   # every array a multiple of 4 bytes (the formulas' pad4)
        item = self.values.dtype.itemsize
        if item < 4 and (self.values.size * item) % 4:
            extra = (4 - (self.values.size * item) % 4) // item
            self.values = np.append(self.values, np.zeros(extra, self.values.dtype))

    @property
    def nbytes(self) -> int:
        return int(self.values.size * self.values.dtype.itemsize)


@dataclass
class Export:
    """What was written, with the exact sizes ``profile --build`` compares against."""

    out_dir: Path
    files: list[Path]
    graph: Graph
    arena: ArenaPlan
    encodings: dict[str, str]               # weight layer -> encoding
    arrays: list[CArray] = field(default_factory=list)
    test_input: np.ndarray | None = None
    expected: np.ndarray | None = None      # torch's float32 output on the test input
    qmodel: Any = None                      # quant.QModel for int8 exports
    expected_q: np.ndarray | None = None    # int8: the integer reference's output

    @property
    def int8(self) -> bool:
        return self.qmodel is not None

    @property
    def weight_bytes(self) -> int:
        """Bytes of every ``sbw_*`` array: the analytic weight bytes of the chosen encodings."""
        return sum(a.nbytes for a in self.arrays)

    @property
    def test_vector_bytes(self) -> int:
        assert self.test_input is not None and self.expected is not None
        if self.int8:
            return pad4(self.test_input.size) + pad4(self.expected.size)
        return 4 * (self.test_input.size + self.expected.size)


def resolve_encoding(name: str) -> str:
    if name not in ENCODING_NAMES:
        extra = " (give the block with --block, e.g. int8-bsr --block 4x4)" if "bsr" in name \
            else ""
        raise SparsebenchError(f"export-c encoding {name!r} is not supported{extra}; choose "
                               f"from: auto, dense, csr, int8, {', '.join(BUILDABLE)}")
    return ENCODING_NAMES[name]


def is_int8(encoding: str | dict[str, str]) -> bool:
    """Whether an export with ``encoding`` (a name or layer -> encoding) is int8; a mix of
    fp32 and int8 layers is an error."""
    if isinstance(encoding, str):
        return encoding.startswith("int8")
    kinds = {e.startswith("int8") for e in encoding.values()}
    if len(kinds) > 1:
        listed = ", ".join(f"{k}={v}" for k, v in encoding.items())
        raise SparsebenchError("export-c writes one value type per model: these encodings mix "
                               f"fp32 and int8 layers ({listed})")
    return kinds == {True}


def _cname(name: str) -> str:
    return re.sub(r"\W", "_", name).strip("_") or "op"


def _unsupported(op: Op, graph: Graph) -> str | None:
    """Why the C runtime cannot run ``op``, or None."""
    a = op.attrs
    if op.kind == "conv":
        if a["groups"] != 1:
            return f"grouped conv (groups={a['groups']})"
        if isinstance(a["padding"], str) or a["padding_mode"] != "zeros":
            return f"padding={a['padding']!r}, padding_mode={a['padding_mode']!r}"
        return None if len(op.in_shape) == 3 else f"conv input of shape {op.in_shape}"
    if op.kind in ("linear", "relu"):
        return None
    if op.kind == "maxpool":
        return None if len(op.in_shape) == 3 else f"pool input of shape {op.in_shape}"
    if op.kind == "avgpool":
        if a["ceil_mode"] or a["divisor_override"]:
            return "avg_pool2d with ceil_mode or divisor_override"
        return None if len(op.in_shape) == 3 else f"pool input of shape {op.in_shape}"
    if op.kind == "adaptive_avgpool":
        ok = (len(op.in_shape) == 3 and len(op.out_shape) == 3
              and op.in_shape[1] % op.out_shape[1] == 0 and op.in_shape[2] % op.out_shape[2] == 0)
        return None if ok else f"adaptive pooling {op.in_shape} -> {op.out_shape} " \
                               "without whole windows"
    if op.kind == "add":
        shapes = {graph.tensors[t].shape for t in op.inputs}
        return None if len(shapes) == 1 and op.out_shape in shapes else "broadcasting add"
    if op.kind in ("mul_const", "add_const"):
        return None if _channel_const(op) is not None else "broadcast over non-channel axes"
    if op.kind == "bn":
        return None
    return "no C kernel for this op"


def _channel_const(op: Op) -> np.ndarray | None:
    """The constant as one value or one per channel, if it broadcasts that way."""
    value = np.asarray(op.consts["value"], dtype=np.float32)
    if op.in_shape != op.out_shape:
        return None
    if value.size == 1:
        return value.reshape(1)
    full = (1,) * (len(op.out_shape) + 1 - value.ndim) + value.shape
    if len(full) != len(op.out_shape) + 1 or full[0] != 1 or full[1] != op.out_shape[0] \
            or any(d != 1 for d in full[2:]):
        return None
    return value.reshape(-1)


def check_exportable(graph: Graph) -> None:
    bad = [(op, why) for op in graph.ops if (why := _unsupported(op, graph))]
    if bad:
        listed = "; ".join(f"{op.name!r} ({op.source}: {why})" for op, why in bad[:4])
        more = f" and {len(bad) - 4} more" if len(bad) > 4 else ""
        raise SparsebenchError(f"export-c cannot handle layer {listed}{more}; the C runtime "
                               f"supports {SUPPORTED_OPS} (zoo archs: "
                               f"{', '.join(SUPPORTED_ARCHS)})")


def choose_encodings(graph: Graph, encoding: str | dict[str, str],
                     block: tuple[int, int] = (4, 4)) -> dict[str, str]:
    """Weight layer -> encoding: one for every layer, ``auto`` (the smaller fp32 one), ``int8``
    (the smallest int8 one) or a given layer -> encoding map (the profile's verdict)."""
    out = {}
    for op in graph.weight_ops():
        key = op.weight_key or op.name
        assert op.weight is not None
        _, sizes = layer_bytes(op.weight, op.bias_len, block)
        enc = encoding.get(key, "") if isinstance(encoding, dict) else encoding
        if enc == "auto":
            out[key] = cheapest(sizes, C_ENCODINGS)
        elif enc == "int8":
            out[key] = cheapest(sizes, INT8_C_ENCODINGS)
        elif enc not in BUILDABLE:
            raise SparsebenchError(f"layer {key!r} cannot be built as "
                                   f"{encoding_label(enc, block) if enc else '(none given)'}: "
                                   f"no C kernel; export-c writes {', '.join(BUILDABLE)}")
        elif sizes[enc] is None:
            raise SparsebenchError(f"layer {key!r} cannot be built as "
                                   f"{encoding_label(enc, block)}: {op.weight.shape[1]} columns "
                                   f"are too many for 16-bit (block) column indices; use a "
                                   f"dense, csr8, csr32 or bitmask encoding")
        else:
            out[key] = enc
    return out


def _float_literal(v: float) -> str:
    s = f"{float(v):.9g}"
    if not any(ch in s for ch in ".e"):
        s += ".0"
    return s + "f"


def _c_array(arr: CArray) -> str:
    if arr.ctype == "float":
        items = [_float_literal(v) for v in arr.values.tolist()]
    else:
        items = [str(int(v)) for v in arr.values.tolist()]
    lines = [", ".join(items[i:i + 8]) for i in range(0, len(items), 8)]
    body = ",\n    ".join(lines)
    return (f"static const {arr.ctype} {arr.symbol}[{arr.values.size}] = {{\n    {body}\n}};\n")


def weight_arrays(key: str, op: Op, enc: str, block: tuple[int, int] = (4, 4)
                  ) -> tuple[list[CArray], dict[str, str]]:
    """The arrays of one layer and the C expressions the kernel call uses."""
    name = f"sbw_{_cname(key)}"
    w = op.weight
    assert w is not None
    arrays: list[CArray] = []
    refs = {"bias": "0"}
    if op.bias is not None:
        arrays.append(CArray(f"{name}_b", "float", op.bias.astype(np.float32)))
        refs["bias"] = f"{name}_b"
    if enc == "fp32-dense":
        arrays.append(CArray(f"{name}_w", "float", w.reshape(-1).astype(np.float32)))
        refs["w"] = f"{name}_w"
        return arrays, refs
    if enc != "fp32-csr16":          # CSR-8/-32 and bitmask: the layouts of the int8 kernels
        new, more = _sparse_arrays(name, w.astype(np.float32), enc.split("-", 1)[1], "float",
                                   block)
        refs.update(more)
        return arrays + new, refs
    rows, cols = np.nonzero(w != 0)
    values = w[rows, cols].astype(np.float32)
    indices = cols.astype(np.uint16)
    rowptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=w.shape[0]))])
    refs.update(val="0", col="0", rowptr=f"{name}_rowptr")
    if values.size:
        arrays += [CArray(f"{name}_val", "float", values), CArray(f"{name}_col", "uint16_t",
                                                                  indices)]
        refs.update(val=f"{name}_val", col=f"{name}_col")
    arrays.append(CArray(f"{name}_rowptr", "int32_t", rowptr.astype(np.int32)))
    return arrays, refs


def _sparse_arrays(name: str, q: np.ndarray, kind: str, vtype: str,
                   block: tuple[int, int] = (4, 4)) -> tuple[list[CArray], dict[str, str]]:
    """Values, indices and row pointers (or the bitmask) of ``q`` in ``kind`` (csr8, csr16,
    csr32, bitmask, bsr), as the ``SBQ_*`` layouts of sb_kernels.h."""
    arrays: list[CArray] = []
    refs = {"idx": "0", "rowptr": "0", "val": "0"}
    if kind == "bsr":
        br, bc = block
        rows, cols = q.shape
        prow, pcol = -(-rows // br) * br, -(-cols // bc) * bc
        padded = np.zeros((prow, pcol), dtype=q.dtype)
        padded[:rows, :cols] = q
        blocks = padded.reshape(prow // br, br, pcol // bc, bc).transpose(0, 2, 1, 3)
        held = (blocks != 0).any(axis=(2, 3))
        values = blocks[held].reshape(-1)
        bptr = np.concatenate([[0], np.cumsum(held.sum(axis=1))]).astype(np.int32)
        if values.size:
            arrays.append(CArray(f"{name}_col", "uint16_t",
                                 np.nonzero(held)[1].astype(np.uint16)))
            refs["idx"] = f"{name}_col"
        arrays.append(CArray(f"{name}_rowptr", "int32_t", bptr))
        refs.update(rowptr=f"{name}_rowptr", block=f"{br}, {bc}")
    elif kind == "bitmask":
        bits = np.packbits((q != 0).reshape(-1), bitorder="little")
        values = q[q != 0]
        arrays.append(CArray(f"{name}_mask", "uint8_t", bits.astype(np.uint8)))
        refs["idx"] = f"{name}_mask"
    else:
        if kind == "csr8":
            values, idx, rowptr = csr8_entries(q)
            ctype = "uint8_t"
        else:
            rows, cols = np.nonzero(q)
            values = q[rows, cols]
            dtype, ctype = (np.uint16, "uint16_t") if kind == "csr16" else (np.uint32, "uint32_t")
            idx = cols.astype(dtype)
            rowptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=q.shape[0]))])
        if values.size:
            arrays.append(CArray(f"{name}_col", ctype, idx))
            refs["idx"] = f"{name}_col"
        arrays.append(CArray(f"{name}_rowptr", "int32_t", np.asarray(rowptr, dtype=np.int32)))
        refs["rowptr"] = f"{name}_rowptr"
    if values.size:
        arrays.append(CArray(f"{name}_val", vtype, values.astype(q.dtype)))
        refs["val"] = f"{name}_val"
    return arrays, refs


def csr8_entries(q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Relative 8-bit CSR of ``q``: values, gaps (column - previous stored column - 1, a gap
    over 255 taking zero-valued fillers) and int32 row pointers."""
    vals, gaps, rowptr = [], [], [0]
    for row in q:
        prev = -1
        for c in np.flatnonzero(row):
            gap = int(c) - prev - 1
            while gap > 255:
                vals.append(0)
                gaps.append(255)
                gap -= 256
            vals.append(row[c])
            gaps.append(gap)
            prev = int(c)
        rowptr.append(len(vals))
    return (np.array(vals, dtype=q.dtype), np.array(gaps, dtype=np.uint8),
            np.array(rowptr, dtype=np.int32))


def weight_arrays_int8(key: str, op: Op, enc: str, layer: Any, block: tuple[int, int] = (4, 4)
                       ) -> tuple[list[CArray], dict[str, str]]:
    """The int8 arrays of one layer (``quant.QLayer``) and the C expressions the call uses."""
    name = f"sbw_{_cname(key)}"
    q = layer.q
    arrays: list[CArray] = []
    refs = {"bias": "0", "idx": "0", "rowptr": "0", "val": "0"}
    if layer.bias is not None:
        arrays.append(CArray(f"{name}_b", "int32_t", layer.bias.astype(np.int32)))
        refs["bias"] = f"{name}_b"
    arrays += [CArray(f"{name}_m0", "int32_t", layer.m0.astype(np.int32)),
               CArray(f"{name}_sh", "int8_t", layer.shift.astype(np.int8))]
    refs.update(m0=f"{name}_m0", shift=f"{name}_sh")
    kind = enc.split("-", 1)[1]
    if kind == "dense":
        arrays.append(CArray(f"{name}_w", "int8_t", q.reshape(-1).astype(np.int8)))
        refs["val"] = f"{name}_w"
        return arrays, refs
    new, more = _sparse_arrays(name, q.astype(np.int8), kind, "int8_t", block)
    refs.update(more)
    return arrays + new, refs


def _pool_geometry(op: Op) -> tuple[str, dict[str, Any]]:
    """A pooling op's C arguments (channels, sizes, kernel, stride, padding) and attributes;
    an adaptive average pool is the plain one with kernel = stride = in / out."""
    a = op.attrs
    c, h, wd = op.in_shape
    _, ho, wo = op.out_shape
    if op.kind == "adaptive_avgpool":
        kh, kw = h // ho, wd // wo
        a = {"kernel": (kh, kw), "stride": (kh, kw), "padding": (0, 0), "count_include_pad": True}
    geo = (f"{c}, {h}, {wd}, {ho}, {wo}, {a['kernel'][0]}, {a['kernel'][1]}, "
           f"{a['stride'][0]}, {a['stride'][1]}, {a['padding'][0]}, {a['padding'][1]}")
    return geo, a


def _call_int8(op: Op, graph: Graph, plan: ArenaPlan, enc: str | None, refs: dict[str, str],
               qm: Any) -> str:
    def at(tensor: str) -> str:
        return f"A + {plan.offset(tensor)}"

    x, y = at(op.inputs[0]), at(op.output)
    a = op.attrs
    zp_in = qm.params[op.inputs[0]].zero_point
    if op.kind in ("conv", "linear"):
        zp_out = qm.params[op.output].zero_point
        lo, hi = qm.act_range(op)
        head = (f"{SBQ_ENC[enc or '']}, {refs.get('block', '0, 0')}, {x}, {y}, {refs['val']}, "
                f"{refs['idx']}, {refs['rowptr']}, "
                f"{refs['bias']}, {refs['m0']}, {refs['shift']}, {zp_in}, {zp_out}, {lo}, {hi}")
        if op.kind == "conv":
            cin, h, wd = op.in_shape
            cout, ho, wo = op.out_shape
            return (f"sbq_conv2d({head},\n               {cin}, {h}, {wd}, {cout}, {ho}, {wo}, "
                    f"{a['kernel'][0]}, {a['kernel'][1]}, {a['stride'][0]}, {a['stride'][1]}, "
                    f"{a['padding'][0]}, {a['padding'][1]}, {a['dilation'][0]}, "
                    f"{a['dilation'][1]});")
        fin, fout = a["in_features"], a["out_features"]
        npos = math.prod(op.in_shape) // fin
        return f"sbq_linear({head}, {fin}, {fout}, {npos});"
    if op.kind == "relu":
        return f"sbq_relu({x}, {y}, {op.out_numel}, {zp_in});"
    geo, a = _pool_geometry(op)
    if op.kind == "maxpool":
        return f"sbq_maxpool2d({x}, {y}, {geo}, {a['dilation'][0]}, {a['dilation'][1]});"
    return f"sbq_avgpool2d({x}, {y}, {zp_in}, {geo}, {int(a['count_include_pad'])});"


def _call(op: Op, graph: Graph, plan: ArenaPlan, enc: str | None, refs: dict[str, str]) -> str:
    def at(tensor: str) -> str:
        return f"A + {plan.offset(tensor) // 4}"

    x, y = at(op.inputs[0]), at(op.output)
    relu = int(op.act == "relu")
    a = op.attrs
    if op.kind == "conv":
        cin, h, wd = op.in_shape
        cout, ho, wo = op.out_shape
        geo = (f"{cin}, {h}, {wd}, {cout}, {ho}, {wo}, {a['kernel'][0]}, {a['kernel'][1]}, "
               f"{a['stride'][0]}, {a['stride'][1]}, {a['padding'][0]}, {a['padding'][1]}, "
               f"{a['dilation'][0]}, {a['dilation'][1]}, {relu}")
        if enc == "fp32-dense":
            return f"sbk_conv2d_dense({x}, {y}, {refs['w']}, {refs['bias']}, {geo});"
        if enc != "fp32-csr16":
            return (f"sbk_conv2d_sparse({SBQ_ENC['int8-' + (enc or '').split('-')[1]]}, "
                    f"{refs.get('block', '0, 0')}, {x}, {y}, "
                    f"{refs['val']}, {refs['idx']}, {refs['rowptr']}, {refs['bias']}, {geo});")
        return (f"sbk_conv2d_csr16({x}, {y}, {refs['val']}, {refs['col']}, {refs['rowptr']}, "
                f"{refs['bias']}, {geo});")
    if op.kind == "linear":
        fin, fout = a["in_features"], a["out_features"]
        npos = math.prod(op.in_shape) // fin
        if enc == "fp32-dense":
            return (f"sbk_linear_dense({x}, {y}, {refs['w']}, {refs['bias']}, {fin}, {fout}, "
                    f"{npos}, {relu});")
        if enc != "fp32-csr16":
            return (f"sbk_linear_sparse({SBQ_ENC['int8-' + (enc or '').split('-')[1]]}, "
                    f"{refs.get('block', '0, 0')}, {x}, {y}, "
                    f"{refs['val']}, {refs['idx']}, {refs['rowptr']}, {refs['bias']}, {fin}, "
                    f"{fout}, {npos}, {relu});")
        return (f"sbk_linear_csr16({x}, {y}, {refs['val']}, {refs['col']}, {refs['rowptr']}, "
                f"{refs['bias']}, {fin}, {fout}, {npos}, {relu});")
    if op.kind == "relu":
        return f"sbk_relu({x}, {y}, {op.out_numel});"
    if op.kind in ("maxpool", "avgpool", "adaptive_avgpool"):
        geo, a = _pool_geometry(op)
        if op.kind == "maxpool":
            return f"sbk_maxpool2d({x}, {y}, {geo}, {a['dilation'][0]}, {a['dilation'][1]});"
        return f"sbk_avgpool2d({x}, {y}, {geo}, {int(a['count_include_pad'])});"
    if op.kind == "add":
        return f"sbk_add({x}, {at(op.inputs[1])}, {y}, {op.out_numel}, {relu});"
    if op.kind in ("bn", "mul_const", "add_const"):
        c = op.in_shape[0] if op.kind == "bn" or refs["n"] != "1" else 1
        inner = op.out_numel // c
        return (f"sbk_channel_affine({x}, {y}, {refs.get('scale', '0')}, "
                f"{refs.get('shift', '0')}, {c}, {inner}, {relu});")
    raise SparsebenchError(f"export-c cannot handle layer {op.name!r} ({op.source})")


def _const_arrays(op: Op) -> tuple[list[CArray], dict[str, str]]:
    name = f"sbw_{_cname(op.name)}"
    if op.kind == "bn":
        return ([CArray(f"{name}_scale", "float", op.consts["scale"].astype(np.float32)),
                 CArray(f"{name}_shift", "float", op.consts["shift"].astype(np.float32))],
                {"scale": f"{name}_scale", "shift": f"{name}_shift", "n": "c"})
    value = _channel_const(op)
    assert value is not None
    role = "scale" if op.kind == "mul_const" else "shift"
    return ([CArray(f"{name}_{role}", "float", value)],
            {role: f"{name}_{role}", "n": str(value.size)})


def test_vector(module: torch.nn.Module, input_shape: tuple[int, ...], seed: int = 0,
                sample: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A seeded uniform [0, 1) input (or ``sample``) and the float32 output of ``module``."""
    x = torch.rand(1, *input_shape, generator=torch.Generator().manual_seed(seed)) \
        if sample is None else torch.as_tensor(np.asarray(sample, np.float32)).reshape(
            1, *input_shape)
    with torch.inference_mode():
        y = module.eval()(x)
    if not isinstance(y, torch.Tensor):
        raise SparsebenchError("export-c needs a model returning one tensor")
    return x.numpy().reshape(-1).astype(np.float32), \
        y.detach().float().numpy().reshape(-1).astype(np.float32)


def check_against_reference(graph: Graph, x: np.ndarray, expected: np.ndarray) -> None:
    """The graph being exported (folded, fused), run by the reference evaluator, must give the
    model's own output: the oracle for what the C code computes."""
    assert graph.source is not None
    got = output(graph.source, x).reshape(-1)
    err = float(np.abs(got - expected).max()) if got.size == expected.size else math.inf
    if not err <= 1e-4 * max(1.0, float(np.abs(expected).max())):
        raise SparsebenchError(f"export-c: the model's graph does not reproduce its output "
                               f"(max abs error {err:.3g}); this is a sparsebench bug")


def export_c(module: torch.nn.Module, input_shape: tuple[int, ...], out_dir: str | Path, *,
             encoding: str | dict[str, str] = "auto", name: str = "model", seed: int = 0,
             qmodel: Any = None, test_input: np.ndarray | None = None,
             block: tuple[int, int] = (4, 4)) -> Export:
    """Write the C export of ``module`` to ``out_dir`` (see the module docstring). int8
    encodings need ``qmodel`` (``quant.calibrate`` on the same graph); ``test_input`` (one
    float sample) replaces the seeded uniform test input."""
    if isinstance(encoding, str):
        encoding = resolve_encoding(encoding)
    int8 = is_int8(encoding)
    graph = qmodel.graph if int8 and qmodel is not None else trace(module, tuple(input_shape))
    check_exportable(graph)
    for op in graph.ops:
        tensors = [op.weight, op.bias, *op.consts.values()]
        if any(t is not None and not np.isfinite(t).all() for t in tensors):
            raise SparsebenchError(f"export-c: layer {op.name!r} holds NaN/Inf parameters")
    if int8:
        from sparsebench.embedded.quant import check_int8

        check_int8(graph)
        if qmodel is None:
            raise SparsebenchError("an int8 export needs calibration (quant.calibrate)")
    encodings = choose_encodings(graph, encoding, block)
    plan = plan_graph(graph, elem_bytes=1 if int8 else 4)
    x, expected = test_vector(module, tuple(input_shape), seed, test_input)
    check_against_reference(graph, x.reshape(1, *input_shape), expected)
    expected_q = xq = None
    if int8:
        from sparsebench.embedded.quant import run as run_int8

        xq = qmodel.input.quantize(x)
        expected_q = run_int8(qmodel, xq.reshape(1, *input_shape)).reshape(-1)

    arrays: list[CArray] = []
    calls: list[str] = []
    emitted: dict[str, dict[str, str]] = {}
    for op in graph.ops:
        key = op.weight_key or op.name
        enc = encodings.get(key) if op.weight is not None else None
        if op.weight is not None:
            if key not in emitted:
                if int8:
                    new, emitted[key] = weight_arrays_int8(key, op, enc or "",
                                                           qmodel.layers[op.name], block)
                else:
                    new, emitted[key] = weight_arrays(key, op, enc,  # type: ignore[arg-type]
                                                      block)
                arrays += new
            refs = emitted[key]
        elif op.kind in ("bn", "mul_const", "add_const"):
            new, refs = _const_arrays(op)
            arrays += new
        else:
            refs = {}
        io = f"{' + '.join(op.inputs)} -> {op.output}"
        what = f"{op.kind}{'+' + op.act if op.act else ''}"
        shapes = f"{'x'.join(map(str, op.in_shape))} -> {'x'.join(map(str, op.out_shape))}"
        call = _call_int8(op, graph, plan, enc, refs, qmodel) if int8 else \
            _call(op, graph, plan, enc, refs)
        calls.append(f"    /* {op.index} {op.name}: {what}, {shapes}{', ' + enc if enc else ''}"
                     f" ({io}) */\n    {call}")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "port").mkdir(exist_ok=True)
    files = []
    for fname in KERNEL_FILES:
        shutil.copyfile(CSRC / fname, out / fname)
        files.append(out / fname)
    for fname in PORT_FILES:
        shutil.copyfile(CSRC / fname, out / "port" / fname)
        files.append(out / "port" / fname)
    n_in, n_out = x.size, expected.size
    weight_bytes = sum(a.nbytes for a in arrays)
    header = _header(name, n_in, n_out, plan.size, weight_bytes, qmodel if int8 else None)
    model_c = _model_c(name, graph, plan, encodings, arrays, calls, weight_bytes, int8)
    vector = _vector_h(x, expected, seed) if not int8 else \
        _vector_h_int8(xq, expected_q, qmodel)  # type: ignore[arg-type]
    for fname, text in (("sb_model.h", header), ("sb_model.c", model_c),
                        ("sb_test_vector.h", vector), ("Makefile", _MAKEFILE),
                        ("README.md", _readme(name, encodings, weight_bytes, plan.size, int8))):
        (out / fname).write_text(text)
        files.append(out / fname)
    return Export(out, files, graph, plan, encodings, arrays, xq if int8 else x, expected,
                  qmodel if int8 else None, expected_q)


def _header(name: str, n_in: int, n_out: int, arena: int, weights: int, qm: Any = None) -> str:
    if qm is not None:
        return f"""/* {name}: generated by sparsebench export-c (int8, TensorFlow Lite's scheme). */
#ifndef SB_MODEL_H
#define SB_MODEL_H

#include <stdint.h>

#define SB_INT8 1
#define SB_INPUT_SIZE {n_in}      /* int8 inputs (NCHW, batch 1): q = round(x / scale) + zp */
#define SB_OUTPUT_SIZE {n_out}    /* int8 outputs: x = scale * (q - zp) */
#define SB_INPUT_SCALE {_float_literal(qm.input.scale)}
#define SB_INPUT_ZERO_POINT {qm.input.zero_point}
#define SB_OUTPUT_SCALE {_float_literal(qm.output.scale)}
#define SB_OUTPUT_ZERO_POINT {qm.output.zero_point}
#define SB_ARENA_BYTES {arena}   /* the one static activation buffer (int8) */
#define SB_WEIGHT_BYTES {weights}  /* all const weight arrays */

int8_t *sb_input(void);        /* where to write the input (inside the arena) */
const int8_t *sb_run(void);    /* run the model; returns the output (inside the arena) */

#endif
"""
    return f"""/* {name}: generated by sparsebench export-c. */
#ifndef SB_MODEL_H
#define SB_MODEL_H

#define SB_INPUT_SIZE {n_in}      /* float32 inputs (NCHW, batch 1) */
#define SB_OUTPUT_SIZE {n_out}
#define SB_ARENA_BYTES {arena}   /* the one static activation buffer */
#define SB_WEIGHT_BYTES {weights}  /* all const weight arrays */

float *sb_input(void);        /* where to write the input (inside the arena) */
const float *sb_run(void);    /* run the model; returns the output (inside the arena) */

#endif
"""


def _model_c(name: str, graph: Graph, plan: ArenaPlan, encodings: dict[str, str],
             arrays: list[CArray], calls: list[str], weight_bytes: int, int8: bool = False
             ) -> str:
    layers = "\n".join(f" *   {k}: {v}" for k, v in encodings.items())
    buffers = "\n".join(f" *   {b.name}: {b.size} B at offset {b.offset}, ops {b.first}..{b.last}"
                        for b in plan.buffers)
    body = "\n".join(_c_array(a) for a in arrays)
    t, div = ("int8_t", 1) if int8 else ("float", 4)
    arena = f"""static {t} sb_arena[SB_ARENA_BYTES / {div}] SB_ALIGN16;

{t} *sb_input(void) {{ return sb_arena + {plan.offset(graph.input) // div}; }}

const {t} *sb_run(void)
{{
    {t} *const A = sb_arena;
{chr(10).join(calls)}
    return A + {plan.offset(graph.output) // div};
}}"""
    return f"""/* {name}: generated by sparsebench export-c{' (int8)' if int8 else ''}.
 * Weights {weight_bytes} B (const), arena {plan.size} B (static).
 * Encodings:
{layers}
 * Arena plan (first-fit over tensor lifetimes, 16-byte aligned, bytes):
{buffers}
 */
#include <stdint.h>

#include "sb_kernels.h"
#include "sb_model.h"

#if defined(__GNUC__)
#define SB_ALIGN16 __attribute__((aligned(16)))
#else
#define SB_ALIGN16
#endif

{body}
{arena}
"""


def _vector_h(x: np.ndarray, y: np.ndarray, seed: int) -> str:
    xs = _c_array(CArray("sbt_input", "float", x))
    ys = _c_array(CArray("sbt_expected", "float", y))
    return (f"/* Test vector: uniform [0, 1) input (torch seed {seed}) and PyTorch's float32 "
            f"output. */\n#ifndef SB_TEST_VECTOR_H\n#define SB_TEST_VECTOR_H\n\n{xs}\n{ys}\n"
            f"#endif\n")


def _vector_h_int8(xq: np.ndarray, yq: np.ndarray, qm: Any) -> str:
    xs = _c_array(CArray("sbt_input", "int8_t", np.asarray(xq, np.int8).reshape(-1)))
    ys = _c_array(CArray("sbt_expected", "int8_t", np.asarray(yq, np.int8).reshape(-1)))
    return (f"/* Test vector: the int8 input (calibrated on {qm.calibration}) and the Python "
            f"integer reference's int8 output. */\n#ifndef SB_TEST_VECTOR_H\n"
            f"#define SB_TEST_VECTOR_H\n\n{xs}\n{ys}\n#endif\n")


_MAKEFILE = """# Host build of the test harness: `make && ./sb_test`.
CC ?= cc
CFLAGS ?= -std=c99 -O2 -Wall -Wextra
sb_test: main.c sb_model.c sb_kernels.c sb_model.h sb_kernels.h sb_test_vector.h
\t$(CC) $(CFLAGS) -o $@ main.c sb_model.c sb_kernels.c
clean:
\trm -f sb_test
.PHONY: clean
"""


def _readme(name: str, encodings: dict[str, str], weights: int, arena: int,
            int8: bool = False) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in encodings.items())
    check = ("every int8 output and PASS when all equal the Python integer reference "
             "(exit code 0 on PASS)" if int8 else "every output, the max abs error against "
             "PyTorch and PASS/FAIL (tolerance 1e-4, exit code 0 on PASS)")
    use = ("int8 values quantized with `SB_INPUT_SCALE`/`SB_INPUT_ZERO_POINT` to `sb_input()`, "
           "call `sb_run()`; the output dequantizes with `SB_OUTPUT_SCALE`/`SB_OUTPUT_ZERO_POINT`"
           if int8 else "floats to `sb_input()`, call `sb_run()`")
    return f"""# {name} as C99 (sparsebench export-c)

`make && ./sb_test` runs the test vector and prints {check}. No dynamic allocation: weights are
`const` arrays ({weights} bytes), activations live in one static arena ({arena} bytes).
Use it in your own code: write `SB_INPUT_SIZE` {use}.

| layer | encoding |
|---|---|
{rows}

`port/` holds the start-up code `sparsebench profile --build` uses for QEMU: `port_cm.c` +
`link_cm.ld` (bare-metal Cortex-M, semihosting) and `port_linux.c` (AArch64 Linux, no libc).
"""


def export_info(e: Export) -> dict[str, Any]:
    return {"out_dir": str(e.out_dir), "encodings": e.encodings, "weight_bytes": e.weight_bytes,
            "arena_bytes": e.arena.size, "files": [str(f) for f in e.files]}
