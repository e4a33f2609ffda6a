"""Prepared kernel calls: a sparse weight validated once (CSR/BSR from dense or scipy, index
width, bias, activation, threads, conv geometry) and then run with about a microsecond of
Python overhead per call, on cached raw addresses.
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from typing import Any, Callable

import numpy as np

from sparsebench.errors import SparsebenchError
from sparsebench.native.abi import (_F32, _I64, _INT_DTYPES, _STATUS, ACTS, _ConvDesc, _ConvPlan,
                                    _LinearDesc)
from sparsebench.native.build import isa, load

def _numpy(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensor
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def _index_bits(index_dtype: Any) -> int:
    try:
        dt = np.dtype(index_dtype)
    except TypeError as exc:
        raise SparsebenchError(f"index_dtype must be int16 or int32, not {index_dtype!r}") from exc
    for bits, want in _INT_DTYPES.items():
        if dt == want:
            return bits
    raise SparsebenchError(f"index_dtype must be int16 or int32, not {dt}")


def csr_from_dense(
    w: Any, index_dtype: Any = np.int32
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values float32, col_idx, row_ptr int32) of a 2-D dense matrix, zeros dropped."""
    w = _numpy(w)
    if w.ndim != 2:
        raise SparsebenchError(f"csr_from_dense needs a 2-D matrix, got shape {w.shape}")
    idx = _INT_DTYPES[_index_bits(index_dtype)]
    rows, cols = np.nonzero(w)
    row_ptr = np.zeros(w.shape[0] + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=w.shape[0]), out=row_ptr[1:])
    if row_ptr[-1] > np.iinfo(np.int32).max:
        raise SparsebenchError("more than 2**31-1 nonzeros do not fit the int32 row pointers")
    return (
        np.ascontiguousarray(w[rows, cols], dtype=np.float32),
        cols.astype(idx),
        row_ptr.astype(np.int32),
    )


def bsr_from_dense(
    w: Any, blocksize: tuple[int, int], index_dtype: Any = np.int32
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(blocks float32 (nblocks, R, C), block_col, block_row_ptr int32), all-zero blocks dropped."""
    w = _numpy(w)
    r, c = (int(v) for v in blocksize)
    if w.ndim != 2 or r < 1 or c < 1 or w.shape[0] % r or w.shape[1] % c:
        raise SparsebenchError(f"cannot split a {w.shape} matrix into {r}x{c} blocks")
    idx = _INT_DTYPES[_index_bits(index_dtype)]
    tiles = w.reshape(w.shape[0] // r, r, w.shape[1] // c, c).transpose(0, 2, 1, 3)
    brow, bcol = np.nonzero(np.any(tiles != 0, axis=(2, 3)))
    row_ptr = np.zeros(tiles.shape[0] + 1, np.int64)
    np.cumsum(np.bincount(brow, minlength=tiles.shape[0]), out=row_ptr[1:])
    return (
        np.ascontiguousarray(tiles[brow, bcol], dtype=np.float32),
        bcol.astype(idx),
        row_ptr.astype(np.int32),
    )


def _check_csr(
    values: Any, col_idx: Any, row_ptr: Any, rows: int, cols: int, bits: int, what: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated contiguous (values float32, col_idx int{bits}, row_ptr int32) copies/views."""
    values, col_idx, row_ptr = _numpy(values), _numpy(col_idx), _numpy(row_ptr)
    if values.dtype.kind != "f":
        raise SparsebenchError(f"{what}: values must be floating point, not {values.dtype}")
    for name, arr in (("col_idx", col_idx), ("row_ptr", row_ptr)):
        if arr.dtype.kind not in "iu" and arr.size:  # ([] parses as float64)
            raise SparsebenchError(f"{what}: {name} must be an integer array, not {arr.dtype}")
        if arr.ndim != 1:
            raise SparsebenchError(f"{what}: {name} must be 1-D, got shape {arr.shape}")
    if row_ptr.shape[0] != rows + 1:
        raise SparsebenchError(
            f"{what}: row_ptr has {row_ptr.shape[0]} entries, expected {rows + 1}"
        )
    nnz = col_idx.shape[0]
    if values.shape[0] != nnz or values.size != nnz * int(np.prod(values.shape[1:])):
        raise SparsebenchError(f"{what}: {values.shape[0]} values for {nnz} column indices")
    if nnz > np.iinfo(np.int32).max:
        raise SparsebenchError(f"{what}: more than 2**31-1 nonzeros")
    rp = row_ptr.astype(np.int64)
    if rp[0] != 0 or rp[-1] != nnz:
        raise SparsebenchError(
            f"{what}: row_ptr must run from 0 to nnz={nnz}, got {rp[0]}..{rp[-1]}"
        )
    if rows and np.any(np.diff(rp) < 0):
        raise SparsebenchError(f"{what}: row_ptr is not non-decreasing")
    if nnz:
        lo, hi = int(col_idx.min()), int(col_idx.max())
        if lo < 0 or hi >= cols:
            bad = lo if lo < 0 else hi
            raise SparsebenchError(f"{what}: column index {bad} outside [0, {cols})")
    if bits == 16 and cols > 32767:
        raise SparsebenchError(f"{what}: int16 indices need at most 32767 columns, got {cols}")
    return (
        np.ascontiguousarray(values, dtype=np.float32),
        np.ascontiguousarray(col_idx, dtype=_INT_DTYPES[bits]),
        np.ascontiguousarray(rp, dtype=np.int32),
    )


def _sorted_rows(values: np.ndarray, col_idx: np.ndarray,
                 row_ptr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same CSR with the column indices sorted within every row (copies only if needed)."""
    if col_idx.size < 2:
        return values, col_idx, row_ptr
    starts = np.zeros(col_idx.size, bool)
    starts[row_ptr[:-1][row_ptr[:-1] < col_idx.size]] = True
    if not np.any((np.diff(col_idx.astype(np.int64)) < 0) & ~starts[1:]):
        return values, col_idx, row_ptr
    rows = np.repeat(np.arange(row_ptr.size - 1), np.diff(row_ptr))
    order = np.lexsort((col_idx, rows))
    return (np.ascontiguousarray(values[order]), np.ascontiguousarray(col_idx[order]), row_ptr)


def _check_bias(bias: Any, n: int, what: str) -> np.ndarray | None:
    if bias is None:
        return None
    b = _numpy(bias)
    if b.dtype.kind not in "fiu" or b.shape != (n,):
        raise SparsebenchError(f"{what}: bias must be a float array of shape ({n},), got {b.shape}")
    return np.ascontiguousarray(b, dtype=np.float32)


def _check_act(relu: bool, act: str | None) -> int:
    """The kernel activation code for ``relu=True`` or ``act`` ("relu", "gelu", None)."""
    if act not in ACTS:
        raise SparsebenchError(f"act must be one of relu, gelu, none, not {act!r}")
    if relu and ACTS[act] not in (0, 1):
        raise SparsebenchError(f"relu=True conflicts with act={act!r}")
    return 1 if relu else ACTS[act]


def _check_threads(threads: Any) -> int:
    is_int = isinstance(threads, (int, np.integer)) and not isinstance(threads, bool)
    if not is_int or not 1 <= threads <= 255:
        raise SparsebenchError(f"threads must be an integer in 1..255, got {threads!r}")
    return int(threads)


def _pair(v: Any, name: str, minimum: int) -> tuple[int, int]:
    try:
        pair = (v, v) if isinstance(v, (int, np.integer)) else tuple(v)
        ok = len(pair) == 2 and all(
            not isinstance(p, bool) and int(p) == p and p >= minimum for p in pair
        )
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise SparsebenchError(f"{name} must be an int >= {minimum} or a pair of them, got {v!r}")
    return int(pair[0]), int(pair[1])


def _shape2(shape: Any, what: str) -> tuple[int, int]:
    try:
        m, k = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise SparsebenchError(f"{what}: shape must be (rows, cols), got {shape!r}") from None
    if m < 0 or k < 0:
        raise SparsebenchError(f"{what}: shape must be non-negative, got {shape!r}")
    return m, k


def _addr(a: np.ndarray | None) -> int | None:
    return None if a is None else int(a.ctypes.data)


def _ptr(a: np.ndarray) -> Any:
    """A ctypes pointer argument for a C-contiguous array: ~0.35 us for a writeable array
    (a ctypes view of its buffer, which also pins it), ~1 us via ``a.ctypes`` otherwise."""
    if a.flags.writeable and a.nbytes:
        return ctypes.byref(ctypes.c_char.from_buffer(a))
    return ctypes.c_void_p(a.ctypes.data)


def _raise_on(status: int, impl: str) -> None:
    """A kernel's nonzero status as a SparsebenchError."""
    if status:
        raise SparsebenchError(f"{impl}: kernel failed: {_STATUS.get(status, 'error')} "
                               f"(status {status})")


def _checked(fn: Any, args: tuple[Any, ...], impl: str, keep: Any) -> Callable[[], None]:
    """``fn(*args)`` raising on a bad status; ``keep`` (the op and the arrays behind the raw
    addresses) lives as long as the callable."""
    def call() -> None:
        _raise_on(fn(*args), impl)
    call.keep = keep  # type: ignore[attr-defined]
    return call


# ----------------------------------------------------------------------------- prepared calls


class _Prepared:
    """Call machinery shared by the prepared kernels: the weight lives in a ctypes struct built
    once; ``run`` passes ready ctypes objects to the raw function pointer (no per-argument
    conversion) and caches the address of the last input and output array it saw."""

    impl: str
    threads: int

    def _bind(self, fn_name: str, desc: ctypes.Structure | ctypes.c_void_p) -> None:
        """Bind ``fn_name`` with its first argument: a weight struct or a library handle."""
        lib = load()
        self._isa = lib.sb_isa().decode()
        fn = getattr(lib, fn_name)
        # The same symbol without argtypes: every argument is passed as a ready ctypes object,
        # which skips ctypes' per-argument conversion (~0.1 us each).
        self._fn = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.cast(fn, ctypes.c_void_p).value)
        self._fn.argtypes = None
        self._desc = desc  # keeps the struct alive; the numpy arrays it points to are on self
        self._desc_ptr = (desc if isinstance(desc, ctypes.c_void_p)
                          else ctypes.c_void_p(ctypes.addressof(desc)))
        self._nt = ctypes.c_int(self.threads)
        # Caches as immutable tuples, so concurrent run() calls from several Python threads
        # each see a consistent snapshot: (x, x.shape, x pointer, out shape, size args) and
        # (out, out pointer).
        self._xc: tuple[Any, ...] = (None, None, None, None, ())
        self._oc: tuple[Any, ...] = (None, None)

    def _io_shapes(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[Any, ...]]:
        """(output shape, per-call ctypes arguments) for an input shape; raises if it is wrong."""
        raise NotImplementedError

    def _input(self, x: Any) -> tuple[Any, ...]:
        """Validate a new input array and cache its address (slow path, ~1-2 us)."""
        if not isinstance(x, np.ndarray):
            raise SparsebenchError(
                f"{self.impl}: input must be a numpy array, not {type(x).__name__}"
            )
        if x.dtype != _F32 or not x.flags.c_contiguous:
            raise SparsebenchError(
                f"{self.impl}: input must be C-contiguous native float32 (got {x.dtype}, "
                f"contiguous={x.flags.c_contiguous}); use np.ascontiguousarray(x, np.float32)"
            )
        old = self._xc
        if x.shape == old[1]:
            out_shape, dims = old[3], old[4]
        else:
            out_shape, dims = self._io_shapes(x.shape)
        xc = (x, x.shape, _ptr(x), out_shape, dims)
        self._xc = xc
        return xc

    def _output(self, out: Any, xc: tuple[Any, ...]) -> tuple[Any, ...]:
        shape = xc[3]
        if out is None:
            out = np.empty(shape, np.float32)
        elif not isinstance(out, np.ndarray) or out.shape != shape or out.dtype != _F32:
            raise SparsebenchError(
                f"{self.impl}: out must be a float32 array of shape {shape}, got "
                f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}"
            )
        elif not (out.flags.c_contiguous and out.flags.writeable):
            raise SparsebenchError(f"{self.impl}: out must be C-contiguous and writeable")
        elif np.may_share_memory(out, xc[0]):
            raise SparsebenchError(f"{self.impl}: out must not overlap the input")
        oc = (out, _ptr(out))
        self._oc = oc
        return oc

    def run(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Apply the layer to ``x``, writing into ``out`` if given (else a new array).

        Calling again with the same x and out arrays skips re-validation: ~1 us of Python.
        """
        xc = self._xc
        if x is not xc[0] or x.shape != xc[1] or x.dtype is not _F32 or not x.flags.c_contiguous:
            xc = self._input(x)
        oc = self._oc
        if (out is None or out is not oc[0] or out is x or out.shape != xc[3]
                or not out.flags.c_contiguous):
            oc = self._output(out, xc)
        status = self._fn(self._desc_ptr, xc[2], *xc[4], oc[1], self._nt)
        if status:
            raise SparsebenchError(
                f"{self.impl}: kernel failed: {_STATUS.get(status, 'error')} (status {status})"
            )
        return oc[0]

    __call__ = run

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.impl}>"


class _Linear(_Prepared):
    """x (B, K) or (K,) -> (B, M) or (M,)."""

    shape: tuple[int, int]

    def _io_shapes(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[Any, ...]]:
        if not (len(shape) in (1, 2) and shape[-1] == self.shape[1]):
            raise SparsebenchError(
                f"{self.impl}: input shape {shape} does not match (batch, {self.shape[1]})"
            )
        if len(shape) == 1:
            return (self.shape[0],), (_I64(1),)
        return (shape[0], self.shape[0]), (_I64(shape[0]),)


# The K-panel copy of a CSR weight (sb_linear.panel_* in the header): built on the first call
# with at least PANEL_BATCH rows on AVX-512 when K > PANEL_COLS; the batched kernel then reads
# the transposed input one panel (PANEL_COLS x 64 floats) at a time.
PANEL_COLS, PANEL_BATCH = 256, 64
GROUP_MAX = 8  # ops per CSRLinearGroup (kMaxGroup in kernels/common.hpp)


def panel_path(rows: int, cols: int) -> bool:
    """Whether a CSR Linear of ``cols`` inputs called on ``rows`` rows runs on its K-panel
    copy."""
    return rows >= PANEL_BATCH and cols > PANEL_COLS and isa() == "avx512"


class CSRLinear(_Linear):
    """y = act(x @ W.T (+ bias)) with W an (M, K) CSR matrix; act: ``relu=True`` or
    ``act="relu"``/``"gelu"`` (fused into the store).

    ``run(x, out=None)`` takes float32 C-contiguous x of shape (B, K) or (K,) and returns
    (B, M) or (M,). Passing ``out=`` and reusing the same x/out arrays costs ~1 us of Python.
    The first call with B >= 64 on AVX-512 builds a K-panel copy of the weight (``panels``:
    5 bytes per nonzero + 4 per row and panel) that the batched kernel then reads.
    """

    panels: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    arena: Any = None  # where the K-panel copy is allocated (a native.memory.HugePageArena)

    def __init__(
        self,
        values: Any,
        col_idx: Any,
        row_ptr: Any,
        shape: tuple[int, int],
        bias: Any = None,
        relu: bool = False,
        threads: int = 1,
        index_dtype: Any = np.int32,
        act: str | None = None,
    ) -> None:
        m, k = _shape2(shape, "CSRLinear")
        bits = _index_bits(index_dtype)
        self.act = _check_act(relu, act)
        self.shape, self.relu, self.threads = (m, k), self.act == 1, _check_threads(threads)
        self.values, self.col_idx, self.row_ptr = _check_csr(
            values, col_idx, row_ptr, m, k, bits, "CSRLinear"
        )
        self.bias = _check_bias(bias, m, "CSRLinear")
        self.nnz = int(self.col_idx.shape[0])
        self.index_bits = bits
        self._bind(
            "sb_csr_linear",
            _LinearDesc(m, k, 1, 1, _addr(self.row_ptr), _addr(self.col_idx),
                        _addr(self.values), _addr(self.bias), bits, self.act),
        )
        self.impl = f"native-csr-{self._isa}-i{bits}-t{self.threads}"
        self._panel_lock = threading.Lock()

    def _io_shapes(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[Any, ...]]:
        out = super()._io_shapes(shape)
        if len(shape) == 2 and self.panels is None and panel_path(shape[0], self.shape[1]):
            self._build_panels()
        return out

    def _build_panels(self) -> None:
        """Fill the K-panel copy and point the descriptor at it (once, under a lock)."""
        with self._panel_lock:
            if self.panels is not None:
                return
            m, k = self.shape
            alloc = self.arena.zeros if self.arena is not None else np.zeros
            ptr = alloc((-(-k // PANEL_COLS) * (m + 1),), np.int32)
            off, val = alloc((self.nnz,), np.uint8), alloc((self.nnz,), np.float32)
            status = load().sb_csr_panels(ctypes.byref(self._desc), PANEL_COLS, _addr(ptr),
                                          _addr(off), _addr(val))
            if status:
                raise SparsebenchError(
                    f"{self.impl}: K-panel copy failed: {_STATUS.get(status, 'error')}"
                )
            self.panels = (ptr, off, val)
            d = self._desc
            d.panel_ptr, d.panel_offsets, d.panel_values = _addr(ptr), _addr(off), _addr(val)
            d.panel_cols = PANEL_COLS

    @classmethod
    def from_dense(
        cls, w: Any, bias: Any = None, index_dtype: Any = np.int32, **kw: Any
    ) -> CSRLinear:
        w = _numpy(w)
        v, c, r = csr_from_dense(w, index_dtype)
        return cls(v, c, r, w.shape, bias=bias, index_dtype=index_dtype, **kw)

    @classmethod
    def from_scipy(cls, m: Any, bias: Any = None, **kw: Any) -> CSRLinear:
        m = m.tocsr()
        return cls(m.data, m.indices, m.indptr, m.shape, bias=bias, **kw)


class CSRLinearGroup:
    """Up to 8 ``CSRLinear`` ops of the same input width applied to one input in one kernel
    call (``sb_csr_linear_group``): at 64 or more rows on AVX-512 the input is transposed
    once for all of them and their rows share the parallel regions (attention's Q, K and V
    projections); otherwise the same as calling each op."""

    def __init__(self, ops: list[CSRLinear]) -> None:
        if not 1 <= len(ops) <= GROUP_MAX or not all(isinstance(op, CSRLinear) for op in ops):
            raise SparsebenchError(f"CSRLinearGroup: give 1 to {GROUP_MAX} CSRLinear ops")
        if len({op.shape[1] for op in ops}) != 1 or len({op.threads for op in ops}) != 1:
            raise SparsebenchError("CSRLinearGroup: the ops must share the input width and the "
                                   "thread count")
        self.ops, self.threads = list(ops), ops[0].threads
        self.impl = "+".join(op.impl for op in ops)

    def bind(self, x: np.ndarray, outs: list[np.ndarray]) -> Any:
        """The call on these arrays (checked now, as each op's ``run`` would)."""
        if len(outs) != len(self.ops):
            raise SparsebenchError(f"CSRLinearGroup: {len(self.ops)} ops but {len(outs)} outputs")
        for op, out in zip(self.ops, outs):
            xc = op._input(x)
            op._output(out, xc)
            if len(xc[1]) != 2:
                raise SparsebenchError("CSRLinearGroup: the input must be (batch, features)")
        descs = (ctypes.c_void_p * len(self.ops))(*(op._desc_ptr.value for op in self.ops))
        ys = (ctypes.c_void_p * len(outs))(*(int(o.ctypes.data) for o in outs))
        args = (descs, _I64(len(self.ops)), ctypes.c_void_p(int(x.ctypes.data)),
                _I64(x.shape[0]), ys, ctypes.c_int(self.threads))
        return _checked(load().sb_csr_linear_group, args, self.impl, (self.ops, x, outs))


class CSRLinearChain:
    """Two ``CSRLinear`` ops in sequence, y = second(first(x)), in one kernel call
    (``sb_csr_linear_chain``): at 64 or more rows on AVX-512, with both on their K-panel
    copies, first's output stays in the kernel's transposed layout, which is second's input, and
    is never written as (batch, features) (a transformer's feed-forward pair); otherwise the
    same as running the two ops."""

    def __init__(self, first: CSRLinear, second: CSRLinear) -> None:
        if not (isinstance(first, CSRLinear) and isinstance(second, CSRLinear)):
            raise SparsebenchError("CSRLinearChain: give two CSRLinear ops")
        if first.shape[0] != second.shape[1]:
            raise SparsebenchError(f"CSRLinearChain: the first op's {first.shape[0]} outputs are "
                                   f"not the second's {second.shape[1]} inputs")
        if first.threads != second.threads:
            raise SparsebenchError("CSRLinearChain: the ops must share the thread count")
        self.ops, self.threads = [first, second], first.threads
        self.impl = f"{first.impl}>{second.impl}"

    def bind(self, x: np.ndarray, out: np.ndarray) -> Any:
        """The call on these arrays (checked now, as the ops' ``run`` would); ``out`` may be
        ``x`` itself (a plan reuses a dead input's buffer)."""
        first, second = self.ops
        xc = first._input(x)
        if len(xc[1]) != 2:
            raise SparsebenchError("CSRLinearChain: the input must be (batch, features)")
        second._output(out, second._input(np.empty((x.shape[0], first.shape[0]), np.float32)))
        same = out.shape == x.shape and out.ctypes.data == x.ctypes.data
        if np.may_share_memory(out, x) and not same:  # in place is fine, a partial overlap not
            raise SparsebenchError("CSRLinearChain: out must be the input itself or not overlap it")
        args = (first._desc_ptr, second._desc_ptr, ctypes.c_void_p(int(x.ctypes.data)),
                _I64(x.shape[0]), ctypes.c_void_p(int(out.ctypes.data)),
                ctypes.c_int(self.threads))
        return _checked(load().sb_csr_linear_chain, args, self.impl, (self.ops, x, out))


class BSRLinear(_Linear):
    """y = act(x @ W.T (+ bias)) with W an (M, K) block-sparse-row matrix of R x C blocks.

    values: (nblocks, R, C) (or flat with ``blocksize``), col_idx: block-column numbers,
    row_ptr: M/R + 1 block-row pointers (the scipy.sparse.bsr_matrix layout).
    """

    def __init__(
        self,
        values: Any,
        col_idx: Any,
        row_ptr: Any,
        shape: tuple[int, int],
        blocksize: tuple[int, int] | None = None,
        bias: Any = None,
        relu: bool = False,
        threads: int = 1,
        index_dtype: Any = np.int32,
        act: str | None = None,
    ) -> None:
        m, k = _shape2(shape, "BSRLinear")
        self.act = _check_act(relu, act)
        vals = _numpy(values)
        if blocksize is None:
            if vals.ndim != 3:
                raise SparsebenchError(
                    "BSRLinear: give blocksize or values of shape (nblocks, R, C)"
                )
            blocksize = vals.shape[1:]
        r, c = _pair(blocksize, "BSRLinear blocksize", 1)
        if vals.ndim == 3 and vals.shape[1:] != (r, c):
            raise SparsebenchError(
                f"BSRLinear: blocks of shape {vals.shape[1:]} but blocksize {r}x{c}"
            )
        if m % r or k % c:
            raise SparsebenchError(
                f"BSRLinear: shape {shape} is not a multiple of blocksize {r}x{c}"
            )
        if vals.ndim != 3:
            if vals.ndim != 1 or vals.size % (r * c):
                raise SparsebenchError(
                    f"BSRLinear: values of shape {vals.shape} are not {r}x{c} blocks"
                )
            vals = vals.reshape(-1, r, c)
        bits = _index_bits(index_dtype)
        self.shape, self.blocksize = (m, k), (r, c)
        self.relu, self.threads = self.act == 1, _check_threads(threads)
        self.values, self.col_idx, self.row_ptr = _check_csr(
            vals, col_idx, row_ptr, m // r, k // c, bits, "BSRLinear"
        )
        self.bias = _check_bias(bias, m, "BSRLinear")
        self.nnz = int(self.values.size)
        self.index_bits = bits
        self._bind(
            "sb_bsr_linear",
            _LinearDesc(m, k, r, c, _addr(self.row_ptr), _addr(self.col_idx),
                        _addr(self.values), _addr(self.bias), bits, self.act),
        )
        self.impl = f"native-bsr{r}x{c}-{self._isa}-i{bits}-t{self.threads}"

    @classmethod
    def from_dense(
        cls, w: Any, blocksize: tuple[int, int], bias: Any = None, index_dtype: Any = np.int32,
        **kw: Any,
    ) -> BSRLinear:
        w = _numpy(w)
        v, c, r = bsr_from_dense(w, blocksize, index_dtype)
        return cls(v, c, r, w.shape, blocksize=blocksize, bias=bias, index_dtype=index_dtype, **kw)

    @classmethod
    def from_scipy(cls, m: Any, bias: Any = None, **kw: Any) -> BSRLinear:
        return cls(m.data, m.indices, m.indptr, m.shape, blocksize=m.blocksize, bias=bias, **kw)


class CSRConv2d(_Prepared):
    """Sparse NCHW convolution: weight (Cout, Cin*kh*kw) as CSR, column c*kh*kw + ky*kw + kx.

    ``run(x, out=None, residual=None, subsample=None)`` takes float32 C-contiguous
    (N, Cin, H, W) and returns ``pool(scale * act(conv(x) + bias + residual))`` of shape
    (N, Cout, Ho/pool, Wo/pool); with ``subsample`` (an array of (1, Cout, ceil(Ho/2),
    ceil(Wo/2))) it also writes ``out[:, :, ::2, ::2]`` there, from the kernel's registers,
    where ``writes_subsample(x.shape)`` (batch 1, no pool).
    ``act``: ``relu=True`` or ``act="relu"``/``"gelu"``; ``scale``: per output channel, after
    the activation; ``pool``: a fused max-pool with window = stride = pool, or ``"avg"``: a
    global average pool (output (N, Cout, 1, 1)).
    The kernel's geometry, int32 tap offsets and scratch are computed once per input shape
    and cached; concurrent calls on one op are serialised (they share the scratch).
    """

    def __init__(
        self,
        values: Any,
        col_idx: Any,
        row_ptr: Any,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        bias: Any = None,
        relu: bool = False,
        threads: int = 1,
        index_dtype: Any = np.int32,
        act: str | None = None,
        scale: Any = None,
        pool: int | str = 1,
    ) -> None:
        cin, cout = int(in_channels), int(out_channels)
        if cin < 1 or cout < 1:
            raise SparsebenchError(f"CSRConv2d: bad channels {in_channels} -> {out_channels}")
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = _pair(stride, "stride", 1)
        self.padding = _pair(padding, "padding", 0)
        if pool != "avg" and (isinstance(pool, bool) or not isinstance(pool, (int, np.integer))
                              or pool < 1):
            raise SparsebenchError(f"CSRConv2d: pool must be an int >= 1 or 'avg', got {pool!r}")
        self.in_channels, self.out_channels = cin, cout
        self.pool: int | str = pool if pool == "avg" else int(pool)
        self._pool_code = -1 if pool == "avg" else int(pool)
        kh, kw = self.kernel_size
        bits = _index_bits(index_dtype)
        self.act = _check_act(relu, act)
        self.relu, self.threads = self.act == 1, _check_threads(threads)
        self.values, self.col_idx, self.row_ptr = _sorted_rows(*_check_csr(
            values, col_idx, row_ptr, cout, cin * kh * kw, bits, "CSRConv2d"
        ))
        self.bias = _check_bias(bias, cout, "CSRConv2d")
        self.scale = _check_bias(scale, cout, "CSRConv2d scale")
        self.nnz = int(self.col_idx.shape[0])
        self.index_bits = bits
        (sh, sw), (ph, pw) = self.stride, self.padding
        self._bind(
            "sb_csr_conv2d",
            _ConvDesc(cout, cin, kh, kw, sh, sw, ph, pw, _addr(self.row_ptr), _addr(self.col_idx),
                      _addr(self.values), _addr(self.bias), bits, self.act),
        )
        lib = load()
        self._run_fn = ctypes.CFUNCTYPE(ctypes.c_int)(
            ctypes.cast(lib.sb_conv2d_run, ctypes.c_void_p).value)
        self._run_sub_fn = ctypes.CFUNCTYPE(ctypes.c_int)(
            ctypes.cast(lib.sb_conv2d_run_sub, ctypes.c_void_p).value)
        self._plans: dict[tuple[int, ...], tuple[Any, ...]] = {}
        self._rc: tuple[Any, ...] = (None, None, None, None)
        # subsample, its pointer, and the out, input cache and residual it was checked against
        self._sc: tuple[Any, ...] = (None, None, None, None, None)
        self._lock = threading.Lock()
        self.impl = f"native-csrconv-{self._isa}-i{bits}-t{self.threads}"

    @classmethod
    def from_dense(
        cls, w: Any, stride: Any = 1, padding: Any = 0, bias: Any = None,
        index_dtype: Any = np.int32, **kw: Any,
    ) -> CSRConv2d:
        w = _numpy(w)
        if w.ndim != 4:
            raise SparsebenchError(f"CSRConv2d.from_dense needs (Cout, Cin, kh, kw), got {w.shape}")
        v, c, r = csr_from_dense(w.reshape(w.shape[0], -1), index_dtype)
        return cls(v, c, r, w.shape[1], w.shape[0], w.shape[2:], stride, padding, bias=bias,
                   index_dtype=index_dtype, **kw)

    def conv_size(self, h: int, w: int) -> tuple[int, int]:
        """Convolution output rows/cols (before the pool)."""
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        ho = (h + 2 * ph - kh) // sh + 1 if h + 2 * ph >= kh else 0
        wo = (w + 2 * pw - kw) // sw + 1 if w + 2 * pw >= kw else 0
        return ho, wo

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """Output rows/cols after the fused pool."""
        ho, wo = self.conv_size(h, w)
        if self.pool == "avg":
            return 1, 1
        return ho // self.pool, wo // self.pool  # type: ignore[operator]

    def plan(self, shape: tuple[int, ...]) -> dict[str, int]:
        """The kernel's plan for an input shape (layout, tile, channel blocks, ...)."""
        plan = self._plan(tuple(int(d) for d in shape))[0].contents
        return {name: getattr(plan, name) for name, _ in _ConvPlan._fields_}

    def _plan(self, shape: tuple[int, ...]) -> tuple[Any, ...]:
        cached = self._plans.get(shape)
        if cached is not None:
            return cached
        n, _, h, w = shape
        lib = load()
        plan = ctypes.POINTER(_ConvPlan)()
        status = lib.sb_conv2d_plan(self._desc, n, h, w, self._pool_code, _addr(self.scale),
                                    self.threads, ctypes.byref(plan))
        if status or not plan:
            raise SparsebenchError(
                f"{self.impl}: cannot plan input {shape} (pool {self.pool}): "
                f"{_STATUS.get(status, 'error')}"
            )
        weakref.finalize(self, lib.sb_conv2d_plan_free, plan)
        cached = (plan, ctypes.c_void_p(ctypes.addressof(plan.contents)))
        self._plans[shape] = cached
        return cached

    def writes_subsample(self, shape: tuple[int, ...]) -> bool:
        """Whether ``run(x, out, subsample=...)`` works for inputs of this shape: the plan
        writes its output directly (batch 1, no pool, no padded columns)."""
        self._io_shapes(tuple(int(d) for d in shape))
        return int(shape[0]) == 1 and self.plan(shape)["direct_out"] == 1

    def _subsample(self, sub: Any, xc: tuple[Any, ...], out: np.ndarray,
                   residual: Any) -> tuple[Any, ...]:
        shape = xc[1]
        ho, wo = self.conv_size(shape[2], shape[3])
        want = (1, self.out_channels, (ho + 1) // 2, (wo + 1) // 2)
        if not self.writes_subsample(shape):
            raise SparsebenchError(f"{self.impl}: a subsample needs a plan that writes its "
                                   f"output directly (batch 1, no pool, unpadded rows; input "
                                   f"{shape}, pool {self.pool})")
        if (not isinstance(sub, np.ndarray) or sub.shape != want or sub.dtype != _F32
                or not sub.flags.c_contiguous or not sub.flags.writeable):
            raise SparsebenchError(f"{self.impl}: subsample must be a writeable C-contiguous "
                                   f"float32 array of shape {want}")
        if any(a is not None and np.may_share_memory(sub, a) for a in (xc[0], out, residual)):
            raise SparsebenchError(f"{self.impl}: subsample must not overlap x, out or the "
                                   f"residual")
        sc = (sub, _ptr(sub), out, xc, residual)
        self._sc = sc
        return sc

    def _io_shapes(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[Any, ...]]:
        if len(shape) != 4 or shape[1] != self.in_channels:
            raise SparsebenchError(
                f"{self.impl}: input shape {shape} does not match (N, {self.in_channels}, H, W)"
            )
        n, _, h, w = shape
        ho, wo = self.conv_size(h, w)
        if ho < 1 or wo < 1:
            raise SparsebenchError(
                f"{self.impl}: input {h}x{w} is smaller than kernel {self.kernel_size} "
                f"with padding {self.padding}"
            )
        if self.pool != "avg" and (ho < self.pool or wo < self.pool):  # type: ignore[operator]
            raise SparsebenchError(f"{self.impl}: output {ho}x{wo} is smaller than pool "
                                   f"{self.pool}")
        out_shape = (n, self.out_channels, *self.output_size(h, w))
        if n == 0:
            return out_shape, (None,)  # nothing to compute
        return out_shape, (self._plan(tuple(shape))[1],)

    def _residual(self, residual: Any, xc: tuple[Any, ...], out: np.ndarray) -> tuple[Any, ...]:
        n, _, h, w = xc[1]
        shape = (n, self.out_channels, *self.conv_size(h, w))
        if (not isinstance(residual, np.ndarray) or residual.shape != shape
                or residual.dtype != _F32 or not residual.flags.c_contiguous):
            raise SparsebenchError(f"{self.impl}: residual must be a C-contiguous float32 array "
                                   f"of shape {shape}")
        if np.may_share_memory(residual, out):
            raise SparsebenchError(f"{self.impl}: residual must not overlap out")
        rc = (residual, _ptr(residual), out, shape)
        self._rc = rc
        return rc

    def run(self, x: np.ndarray, out: np.ndarray | None = None,
            residual: np.ndarray | None = None,
            subsample: np.ndarray | None = None) -> np.ndarray:
        """Apply the layer to ``x`` (see the class docstring); ~1 us of Python when the same
        x, out, residual and subsample arrays are passed again."""
        with self._lock:
            xc = self._xc
            if (x is not xc[0] or x.shape != xc[1] or x.dtype is not _F32
                    or not x.flags.c_contiguous):
                xc = self._input(x)
            oc = self._oc
            if (out is None or out is not oc[0] or out is x or out.shape != xc[3]
                    or not out.flags.c_contiguous):
                oc = self._output(out, xc)
            res = None
            if residual is not None:
                rc = self._rc
                if (residual is not rc[0] or rc[2] is not oc[0] or residual.shape != rc[3]
                        or not residual.flags.c_contiguous):
                    rc = self._residual(residual, xc, oc[0])
                res = rc[1]
            if xc[4][0] is None:
                return oc[0]
            if subsample is None:
                status = self._run_fn(self._desc_ptr, xc[4][0], xc[2], res, oc[1], self._nt)
            else:
                sc = self._sc
                if (subsample is not sc[0] or sc[2] is not oc[0] or sc[3] is not xc
                        or sc[4] is not residual):
                    sc = self._subsample(subsample, xc, oc[0], residual)
                status = self._run_sub_fn(self._desc_ptr, xc[4][0], xc[2], res, oc[1], sc[1],
                                          self._nt)
        if status:
            raise SparsebenchError(
                f"{self.impl}: kernel failed: {_STATUS.get(status, 'error')} (status {status})"
            )
        return oc[0]

    __call__ = run


class DenseConv2d(_Prepared):
    """Dense NCHW convolution of few input channels (an image model's stem) with an optional
    fused max-pool: ``run(x, out=None)`` returns ``maxpool(act(conv(x) + bias))``.

    Output channels are the kernel's vector lanes (``Cout`` a multiple of 16); the input is read
    in place, and with ``pool`` (a dict of ``kernel``, ``stride``, ``padding``, ``ceil_mode`` as
    torch's max_pool2d) the conv's map is pooled row by row and never stored. ``act``: ``relu``
    or none. Built for ``Cin <= MAX_IN_CHANNELS``; any sparsity runs densely.
    """

    MAX_IN_CHANNELS = 4

    def __init__(self, weight: Any, stride: Any = 1, padding: Any = 0, bias: Any = None,
                 relu: bool = False, act: str | None = None, pool: dict[str, Any] | None = None,
                 threads: int = 1) -> None:
        w = np.ascontiguousarray(_numpy(weight), np.float32)
        if w.ndim != 4 or w.shape[0] < 16 or w.shape[0] % 16:
            raise SparsebenchError(f"DenseConv2d: weight must be (Cout, Cin, kh, kw) with Cout a "
                                   f"multiple of 16, got {w.shape}")
        self.out_channels, self.in_channels = int(w.shape[0]), int(w.shape[1])
        self.kernel_size = (int(w.shape[2]), int(w.shape[3]))
        self.stride, self.padding = _pair(stride, "stride", 1), _pair(padding, "padding", 0)
        self.act = _check_act(relu, act)
        if self.act not in (0, 1):
            raise SparsebenchError("DenseConv2d: act must be 'relu' or none")
        self.threads = _check_threads(threads)
        self.bias = _check_bias(bias, self.out_channels, "DenseConv2d")
        pk = ps = pp = (0, 0)
        ceil = 0
        if pool is not None:
            pk, ps = _pair(pool["kernel"], "pool kernel", 1), _pair(pool["stride"], "pool stride", 1)
            pp, ceil = _pair(pool.get("padding", 0), "pool padding", 0), int(bool(pool.get("ceil_mode")))
            if 2 * pp[0] > pk[0] or 2 * pp[1] > pk[1] or pk[0] > 16:
                raise SparsebenchError(f"DenseConv2d: pool padding {pp} exceeds half the window "
                                       f"{pk} (or the window is over 16 rows)")
        self.pool = pool
        self.nnz = int(np.count_nonzero(w))
        self.weight_bytes = w.nbytes + (self.bias.nbytes if self.bias is not None else 0)
        lib = load()
        handle = ctypes.c_void_p()
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        status = lib.sb_dense_conv_create(
            w.ctypes.data, _addr(self.bias), self.out_channels, self.in_channels, kh, kw, sh, sw,
            ph, pw, self.act, pk[0], pk[1], ps[0], ps[1], pp[0], pp[1], ceil,
            ctypes.byref(handle))
        if status or not handle:
            raise SparsebenchError(f"DenseConv2d: cannot build the kernel: "
                                   f"{_STATUS.get(status, 'error')} (status {status})")
        weakref.finalize(self, lib.sb_dense_conv_free, ctypes.c_void_p(handle.value))
        self.impl = f"native-denseconv-t{self.threads}"
        self._bind("sb_dense_conv_run", handle)
        self.impl = f"native-denseconv-{self._isa}-t{self.threads}"

    def _io_shapes(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[Any, ...]]:
        if len(shape) != 4 or shape[1] != self.in_channels or shape[0] < 1:
            raise SparsebenchError(
                f"{self.impl}: input shape {shape} does not match (N >= 1, {self.in_channels}, H, W)")
        n, _, h, w = shape
        yh, yw = ctypes.c_int64(), ctypes.c_int64()
        if load().sb_dense_conv_out_size(self._desc, h, w, ctypes.byref(yh), ctypes.byref(yw)):
            raise SparsebenchError(f"{self.impl}: input {h}x{w} is smaller than the kernel "
                                   f"{self.kernel_size} (padding {self.padding}) or the pool")
        dims = (ctypes.c_int64(n), ctypes.c_int64(h), ctypes.c_int64(w))
        return (n, self.out_channels, yh.value, yw.value), dims


class MaxPool2d:
    """A max-pool bound to one input and one output array (NCHW float32): ``run()`` pools
    ``x`` into ``y`` (window, stride, padding read as -inf, ceil mode as torch's max_pool2d;
    padding at most half the window). Shapes are checked once, here."""

    def __init__(self, x: np.ndarray, y: np.ndarray, kernel: Any, stride: Any, padding: Any = 0,
                 ceil_mode: bool = False, threads: int = 1) -> None:
        (kh, kw), (sh, sw) = _pair(kernel, "kernel", 1), _pair(stride, "stride", 1)
        ph, pw = _pair(padding, "padding", 0)
        self.threads = _check_threads(threads)
        self.impl = f"native-maxpool{kh}x{kw}s{sh}-t{self.threads}"
        if 2 * ph > kh or 2 * pw > kw:
            raise SparsebenchError(f"{self.impl}: padding {padding} exceeds half the window")
        for a, what in ((x, "input"), (y, "output")):
            if a.dtype != _F32 or a.ndim != 4 or not a.flags.c_contiguous:
                raise SparsebenchError(f"{self.impl}: {what} must be a C-contiguous float32 "
                                       f"NCHW array, got {a.dtype} {a.shape}")
        lib = load()
        n, c, h, w = x.shape
        ho = lib.sb_pool_out_size(h, kh, sh, ph, int(ceil_mode))
        wo = lib.sb_pool_out_size(w, kw, sw, pw, int(ceil_mode))
        if y.shape != (n, c, ho, wo):
            raise SparsebenchError(f"{self.impl}: output must be {(n, c, ho, wo)}, got {y.shape}")
        self.x, self.y = x, y
        fn, args = lib.sb_maxpool2d, (n, c, h, w, kh, kw, sh, sw, ph, pw, int(ceil_mode))
        xp, yp, nt = ctypes.c_void_p(x.ctypes.data), ctypes.c_void_p(y.ctypes.data), self.threads
        self._call = lambda: fn(xp, *args, yp, nt)

    def run(self) -> np.ndarray:
        status = self._call()
        if status:
            raise SparsebenchError(
                f"{self.impl}: kernel failed: {_STATUS.get(status, 'error')} (status {status})")
        return self.y

    __call__ = run


def self_test() -> float:
    """Max relative error of a small CSR linear and conv against numpy/torch references."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((33, 70)).astype(np.float32)
    w[rng.random(w.shape) < 0.8] = 0
    x = rng.standard_normal((3, 70)).astype(np.float32)
    want = x @ w.T
    err = float(np.abs(CSRLinear.from_dense(w, threads=2).run(x) - want).max()
                / np.abs(want).max())
    wc = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    wc[rng.random(wc.shape) < 0.7] = 0
    xc = rng.standard_normal((2, 4, 9, 9)).astype(np.float32)
    import torch

    ref = torch.nn.functional.conv2d(torch.from_numpy(xc), torch.from_numpy(wc), padding=1)
    got = CSRConv2d.from_dense(wc, padding=1, threads=2).run(xc)
    return max(err, float(np.abs(got - ref.numpy()).max() / ref.abs().max()))
