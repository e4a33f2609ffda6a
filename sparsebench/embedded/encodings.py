"""Weight encodings for embedded targets and their exact byte counts.

A layer's weight is a ``rows x cols`` matrix (rows = output units) with a float32 bias of
``rows`` entries. Every array of an encoding starts on a 4-byte boundary, so each array's size
is rounded up to a multiple of 4 (``pad4``); the bias is 4 bytes per entry. Row pointers are
int32 (``rows + 1`` entries), as in ``sparsebench.formats``.

int8 values are symmetric per output row: ``q = round(w / s)``, ``s = max|w_row| / 127``. The
C runtime runs them with int8 activations (TFLite's scheme, ``embedded.quant``): per row an
int32 requantisation multiplier and an int8 shift (``4*rows + pad4(rows)`` bytes, written
``scales`` below), and the bias becomes int32 (still 4 bytes per entry).

| encoding | bytes (before the bias) |
|---|---|
| fp32-dense | ``4*rows*cols`` |
| int8-dense | ``pad4(rows*cols) + scales`` |
| fp32-csrK | ``4*n + pad4(K/8*n) + 4*(rows+1)`` |
| int8-csrK | ``pad4(n) + pad4(K/8*n) + 4*(rows+1) + scales`` |
| fp32-bitmask | ``pad4(ceil(rows*cols/8)) + 4*nnz`` |
| int8-bitmask | ``pad4(ceil(rows*cols/8)) + pad4(nnz) + scales`` |
| fp32-bsrRxC | ``4*R*C*nb + pad4(2*nb) + 4*(ceil(rows/R)+1)`` |
| int8-bsrRxC | ``pad4(R*C*nb) + pad4(2*nb) + 4*(ceil(rows/R)+1) + scales`` |

The int8 encodings count the nonzeros of the quantized matrix (weights below half a
quantization step round to zero and are not stored).

CSR column indices are unsigned: K=16 addresses up to 65536 columns (otherwise n/a), K=32
any. K=8 stores the *gap* to the previous stored column of the row (Deep Compression's relative
indexing): a gap over 255 costs a filler entry (value 0), so ``n = nnz + fillers``; K=16/32
have ``n = nnz``. The bitmask holds one bit per weight (row-major) and the nonzero values in
order. BSR stores every R x C block holding a nonzero (matrix zero-padded to whole blocks) with
16-bit block-column indices and int32 block-row pointers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ENCODINGS = ("fp32-dense", "int8-dense", "fp32-csr8", "fp32-csr16", "fp32-csr32", "int8-csr8",
             "int8-csr16", "int8-csr32", "fp32-bitmask", "int8-bitmask", "fp32-bsr", "int8-bsr")
LOSSLESS = tuple(e for e in ENCODINGS if e.startswith("fp32"))
C_ENCODINGS = ("fp32-dense", "fp32-csr16")   # export-c's ``auto`` and ``c`` choose from these
FP32_C_ENCODINGS = ("fp32-dense", "fp32-csr8", "fp32-csr16", "fp32-csr32", "fp32-bitmask",
                    "fp32-bsr")
INT8_C_ENCODINGS = ("int8-dense", "int8-csr8", "int8-csr16", "int8-csr32", "int8-bitmask",
                    "int8-bsr")
BUILDABLE = FP32_C_ENCODINGS + INT8_C_ENCODINGS   # everything export-c (and --build) writes


def pad4(n: int) -> int:
    return (int(n) + 3) // 4 * 4


def encoding_label(enc: str, block: tuple[int, int]) -> str:
    """``fp32-bsr`` -> ``fp32-bsr4x4``."""
    return f"{enc}{block[0]}x{block[1]}" if enc.endswith("bsr") else enc


@dataclass(frozen=True)
class MatrixStats:
    """What the byte formulas need from one weight matrix."""

    rows: int
    cols: int
    nnz: int
    csr8_fillers: int
    nblocks: int
    block: tuple[int, int]

    @property
    def numel(self) -> int:
        return self.rows * self.cols


def matrix_stats(w: np.ndarray, block: tuple[int, int] = (4, 4)) -> MatrixStats:
    """Nonzeros (NaN/Inf count), CSR-8 fillers and occupied BSR blocks of ``w``."""
    w = np.asarray(w)
    rows, cols = w.shape
    keep = w != 0
    r, c = np.nonzero(keep)                    # row-major order
    prev = np.full(r.shape, -1, dtype=np.int64)
    if r.size:
        same_row = np.r_[False, r[1:] == r[:-1]]
        prev[1:] = np.where(same_row[1:], c[:-1], -1)
    gaps = c.astype(np.int64) - prev - 1
    fillers = int((gaps // 256).sum()) if r.size else 0
    br, bc = block
    prow, pcol = -(-rows // br) * br, -(-cols // bc) * bc
    padded = np.zeros((prow, pcol), dtype=bool)
    padded[:rows, :cols] = keep
    nblocks = int(padded.reshape(prow // br, br, pcol // bc, bc).any(axis=(1, 3)).sum())
    return MatrixStats(rows, cols, int(r.size), fillers, nblocks, (br, bc))


def weight_bytes(enc: str, s: MatrixStats) -> int | None:
    """Bytes of the weight matrix alone in ``enc`` (no bias); None when not applicable."""
    value, _, kind = enc.partition("-")
    scales = 4 * s.rows + pad4(s.rows) if value == "int8" else 0   # multiplier + shift
    vsize = 4 if value == "fp32" else 1
    if kind == "dense":
        return pad4(vsize * s.numel) + scales
    if kind.startswith("csr"):
        bits = int(kind[3:])
        if bits == 16 and s.cols > 65536:
            return None
        n = s.nnz + (s.csr8_fillers if bits == 8 else 0)
        return pad4(vsize * n) + pad4(bits // 8 * n) + 4 * (s.rows + 1) + scales
    if kind == "bitmask":
        return pad4(math.ceil(s.numel / 8)) + pad4(vsize * s.nnz) + scales
    if kind == "bsr":
        br, bc = s.block
        if -(-s.cols // bc) > 65536:
            return None
        block_rows = -(-s.rows // br)
        return pad4(vsize * br * bc * s.nblocks) + pad4(2 * s.nblocks) + 4 * (block_rows + 1) \
            + scales
    raise ValueError(f"unknown encoding {enc!r}")


def layer_bytes(w: np.ndarray, bias: int, block: tuple[int, int] = (4, 4)
                ) -> tuple[MatrixStats, dict[str, int | None]]:
    """Exact bytes of one layer (weight + ``bias`` float32 entries) in every encoding."""
    s = matrix_stats(w, block)
    s8 = s
    if np.isfinite(w).all():     # int8 rounding zeroes small weights: count what is stored
        q, _ = quantize_rows(w)
        s8 = matrix_stats(q, block) if np.count_nonzero(q) != s.nnz else s
    out: dict[str, int | None] = {}
    for enc in ENCODINGS:
        b = weight_bytes(enc, s8 if enc.startswith("int8") else s)
        out[enc] = None if b is None else b + 4 * bias
    return s, out


def cheapest(sizes: dict[str, int | None], allowed: tuple[str, ...] = ENCODINGS) -> str:
    """The smallest applicable encoding among ``allowed`` (ties: the earlier in ENCODINGS)."""
    options = [(b, i, e) for i, e in enumerate(ENCODINGS)
               if e in allowed and (b := sizes.get(e)) is not None]
    if not options:
        raise ValueError("no applicable encoding")
    return min(options)[2]


def quantize_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: ``(q int8, scale float32)`` with ``w ~= q * scale[:, None]``."""
    w = np.asarray(w, dtype=np.float32)
    amax = np.abs(w).max(axis=1) if w.size else np.zeros(w.shape[0], np.float32)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def break_even(enc: str, ref: str) -> float | None:
    """Sparsity above which sparse ``enc`` is smaller than dense or bitmask ``ref`` for a large
    matrix, counting per-weight costs only (no row pointers, scales or padding); None if never.
    """
    def cost(e: str) -> tuple[float, float]:  # (bytes per weight, bytes per nonzero)
        value, _, kind = e.partition("-")
        v = 4.0 if value == "fp32" else 1.0
        if kind == "dense":
            return v, 0.0
        if kind.startswith("csr"):
            return 0.0, v + int(kind[3:]) / 8
        if kind == "bitmask":
            return 1 / 8, v
        raise ValueError(f"no per-weight cost model for {e!r}")

    (a0, a1), (b0, b1) = cost(enc), cost(ref)
    if a1 <= b1:  # enc costs no more per nonzero: smaller whenever its fixed part is
        return 0.0 if a0 < b0 else None
    density = (b0 - a0) / (a1 - b1)   # enc smaller below this density
    return None if density <= 0 else max(0.0, 1.0 - density)
