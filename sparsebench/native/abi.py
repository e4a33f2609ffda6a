"""The ctypes mirrors of kernels/sparsebench_kernels.h: structs, function signatures, codes.

Change this file and the header together (and bump ``ABI_VERSION`` with ``SB_ABI_VERSION``).
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

ABI_VERSION = 10  # must equal SB_ABI_VERSION in kernels/sparsebench_kernels.h

_STATUS = {
    1: "invalid argument",
    2: "index width must be 16 or 32 bits",
    3: "out of memory",
    4: "num_threads must be in 1..255",
}
_F32 = np.dtype(np.float32)
_INT_DTYPES = {16: np.dtype(np.int16), 32: np.dtype(np.int32)}
_I64, _INT, _PTR = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p


class _LinearDesc(ctypes.Structure):
    """Mirror of ``sb_linear`` in kernels/sparsebench_kernels.h (all fields 8 bytes)."""

    _fields_ = [
        ("rows", _I64), ("cols", _I64), ("block_rows", _I64), ("block_cols", _I64),
        ("row_ptr", _PTR), ("col_idx", _PTR), ("values", _PTR), ("bias", _PTR),
        ("index_bits", _I64), ("act", _I64),
        ("panel_ptr", _PTR), ("panel_offsets", _PTR), ("panel_values", _PTR),
        ("panel_cols", _I64),
    ]


class _ConvDesc(ctypes.Structure):
    """Mirror of ``sb_conv2d`` in kernels/sparsebench_kernels.h."""

    _fields_ = [
        ("out_channels", _I64), ("in_channels", _I64), ("kernel_h", _I64), ("kernel_w", _I64),
        ("stride_h", _I64), ("stride_w", _I64), ("pad_h", _I64), ("pad_w", _I64),
        ("row_ptr", _PTR), ("col_idx", _PTR), ("values", _PTR), ("bias", _PTR),
        ("index_bits", _I64), ("act", _I64),
    ]


class _ConvPlan(ctypes.Structure):
    """Mirror of the public fields of ``sb_conv_plan`` (allocated and owned by the library)."""

    _fields_ = [(name, _I64) for name in (
        "n", "h", "w", "ho", "wo", "hq", "wq", "plane", "positions", "tile", "ntiles",
        "direct_in", "direct_out", "pool", "yh", "yw", "layout", "channel_blocks",
        "scratch_bytes", "rows_paired", "bands", "row_out")]


ACTS = {None: 0, "none": 0, "relu": 1, "gelu": 2}


_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "sb_abi_version": (_INT, []),
    "sb_isa": (ctypes.c_char_p, []),
    "sb_tuning": (_INT, [ctypes.c_char_p, _INT]),
    "sb_pool_hold": (_INT, [_INT]),
    "sb_csr_linear": (_INT, [ctypes.POINTER(_LinearDesc), _PTR, _I64, _PTR, _INT]),
    "sb_csr_linear_group": (_INT, [_PTR, _I64, _PTR, _I64, _PTR, _INT]),
    "sb_csr_linear_chain": (_INT, [_PTR, _PTR, _PTR, _I64, _PTR, _INT]),
    "sb_csr_panels": (_INT, [ctypes.POINTER(_LinearDesc), _I64, _PTR, _PTR, _PTR]),
    "sb_bsr_linear": (_INT, [ctypes.POINTER(_LinearDesc), _PTR, _I64, _PTR, _INT]),
    "sb_conv_out_size": (_I64, [_I64, _I64, _I64, _I64]),
    "sb_csr_conv2d": (_INT, [ctypes.POINTER(_ConvDesc), _PTR, _I64, _I64, _I64, _PTR, _INT]),
    "sb_conv2d_plan": (_INT, [ctypes.POINTER(_ConvDesc), _I64, _I64, _I64, _I64, _PTR, _I64,
                              ctypes.POINTER(ctypes.POINTER(_ConvPlan))]),
    "sb_conv2d_plan_free": (None, [ctypes.POINTER(_ConvPlan)]),
    "sb_conv2d_run": (_INT, [ctypes.POINTER(_ConvDesc), ctypes.POINTER(_ConvPlan), _PTR, _PTR,
                             _PTR, _INT]),
    "sb_conv2d_run_sub": (_INT, [ctypes.POINTER(_ConvDesc), ctypes.POINTER(_ConvPlan), _PTR,
                                 _PTR, _PTR, _PTR, _INT]),
    "sb_dense_conv_create": (_INT, [_PTR, _PTR, *[_I64] * 8, _INT, *[_I64] * 7,
                                     ctypes.POINTER(_PTR)]),
    "sb_dense_conv_free": (None, [_PTR]),
    "sb_dense_conv_out_size": (_INT, [_PTR, _I64, _I64, ctypes.POINTER(_I64),
                                      ctypes.POINTER(_I64)]),
    "sb_dense_conv_run": (_INT, [_PTR, _PTR, _I64, _I64, _I64, _PTR, _INT]),
    "sb_pool_out_size": (_I64, [_I64, _I64, _I64, _I64, _I64]),
    "sb_maxpool2d": (_INT, [_PTR, _I64, _I64, _I64, _I64, _I64, _I64, _I64, _I64, _I64, _I64,
                            _I64, _PTR, _INT]),
    "sb_add_layernorm": (_INT, [_PTR, _PTR, _PTR, _PTR, ctypes.c_float, _I64, _I64, _PTR, _INT]),
    "sb_gather_rows": (_INT, [_PTR, _I64, _I64, _PTR, _I64, _PTR]),
    "sb_scale_add": (_INT, [_PTR, ctypes.c_float, _PTR, _I64, _I64, _PTR, _INT]),
    "sb_softmax": (_INT, [_PTR, _I64, _I64, _PTR, _INT]),
    "sb_key_mask": (_INT, [_PTR, _I64, _I64, _I64, ctypes.c_float, ctypes.c_float, _PTR]),
    "sb_attention": (_INT, [_PTR, _PTR, _PTR, _PTR, _I64, _I64, _I64, _I64, _I64, _I64, _I64,
                            _I64, ctypes.c_float, _PTR, _INT]),
}
