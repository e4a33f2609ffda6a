"""Prepared calls of the transformer kernels (kernels/transformer.cpp): add + LayerNorm over
the last axis, scaled dot-product attention with an additive mask on the Linear outputs'
``(batch, tokens, heads * head_dim)`` layout, the embedding lookup, ``alpha * a (+ b)``, a
softmax over the last axis and the additive attention mask of a key mask.

``run`` validates its arrays on every call; ``bind`` validates them once and returns a
zero-argument callable on their raw addresses (what the native plan calls, ~0.5 us of Python).
"""

from __future__ import annotations

import ctypes
from typing import Any, Callable

import numpy as np
import torch

from sparsebench.errors import SparsebenchError
from sparsebench.native.abi import _F32, _I64, _INT
from sparsebench.native.build import isa, load
from sparsebench.native.ops import _check_threads, _checked, _numpy, _raise_on

_F = ctypes.c_float


def _raw(name: str) -> Any:
    """The symbol as a function without argtypes (every argument a ready ctypes object)."""
    fn = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.cast(getattr(load(), name), ctypes.c_void_p).value)
    fn.argtypes = None
    return fn


def _array(a: Any, what: str, impl: str, writeable: bool = False) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.dtype != _F32 or not a.flags.c_contiguous:
        raise SparsebenchError(f"{impl}: {what} must be a C-contiguous float32 numpy array")
    if writeable and not a.flags.writeable:
        raise SparsebenchError(f"{impl}: {what} must be writeable")
    return a


def _vp(a: np.ndarray | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(None if a is None else int(a.ctypes.data))


class AddLayerNorm:
    """``y = LayerNorm(x + residual) * gamma + beta`` over the last axis (``residual``
    optional), as ``torch.nn.functional.layer_norm`` computes it (biased variance)."""

    def __init__(self, gamma: Any, beta: Any = None, eps: float = 1e-5, threads: int = 1
                 ) -> None:
        g = np.ascontiguousarray(_numpy(gamma), np.float32).reshape(-1)
        if g.size < 1:
            raise SparsebenchError("AddLayerNorm: gamma is empty")
        b = None if beta is None else np.ascontiguousarray(_numpy(beta), np.float32).reshape(-1)
        if b is not None and b.shape != g.shape:
            raise SparsebenchError(f"AddLayerNorm: beta has {b.size} values, gamma {g.size}")
        if not (isinstance(eps, (int, float)) and eps >= 0):
            raise SparsebenchError(f"AddLayerNorm: eps must be a number >= 0, got {eps!r}")
        self.gamma, self.beta, self.eps = g, b, float(eps)
        self.cols, self.threads = int(g.size), _check_threads(threads)
        self._fn = _raw("sb_add_layernorm")
        self.impl = f"native-layernorm-{isa()}-t{self.threads}"

    def bind(self, x: np.ndarray, out: np.ndarray,
             residual: np.ndarray | None = None) -> Callable[[], None]:
        """The call on these arrays (checked now: shapes, dtype, layout)."""
        x = _array(x, "x", self.impl)
        out = _array(out, "out", self.impl, writeable=True)
        if x.ndim < 1 or x.shape[-1] != self.cols or out.shape != x.shape:
            raise SparsebenchError(f"{self.impl}: x {x.shape} and out {out.shape} must have "
                                   f"the same shape, last axis {self.cols}")
        if residual is not None and _array(residual, "residual", self.impl).shape != x.shape:
            raise SparsebenchError(f"{self.impl}: residual {residual.shape} is not x's shape "
                                   f"{x.shape}")
        args = (_vp(x), _vp(residual), _vp(self.gamma), _vp(self.beta), _F(self.eps),
                _I64(x.size // self.cols), _I64(self.cols), _vp(out), _INT(self.threads))
        return _checked(self._fn, args, self.impl, (self, x, out, residual))

    def run(self, x: np.ndarray, out: np.ndarray | None = None,
            residual: np.ndarray | None = None) -> np.ndarray:
        out = np.empty_like(x) if out is None else out
        self.bind(x, out, residual)()
        return out

    __call__ = run


def mask_strides(mask: np.ndarray, batch: int, heads: int, seq_q: int, seq_k: int,
                 impl: str = "Attention") -> tuple[int, int, int]:
    """(batch, head, row) element strides of an additive mask broadcastable to
    (batch, heads, seq_q, seq_k) with seq_k contiguous keys; 0 where it broadcasts."""
    if mask.dtype != _F32 or mask.ndim > 4 or mask.ndim < 1:
        raise SparsebenchError(f"{impl}: the mask must be float32 with at most 4 dimensions")
    shape = (1,) * (4 - mask.ndim) + mask.shape
    strides = (0,) * (4 - mask.ndim) + tuple(s // 4 for s in mask.strides)
    full = (batch, heads, seq_q, seq_k)
    if shape[3] != seq_k or (seq_k > 1 and strides[3] != 1) or any(
            d not in (1, f) for d, f in zip(shape[:3], full[:3])):
        raise SparsebenchError(f"{impl}: mask of shape {mask.shape} does not broadcast to "
                               f"{full} with contiguous keys")
    if any(s < 0 for s in strides):
        raise SparsebenchError(f"{impl}: the mask has negative strides")
    return tuple(0 if d == 1 else s for d, s in zip(shape[:3], strides[:3]))  # type: ignore


class Attention:
    """``softmax(q k^T * scale + mask) v`` per head on ``(batch, tokens, heads * head_dim)``
    arrays (the Linear projections' layout: no transposes), output in the same layout."""

    def __init__(self, heads: int, scale: float, threads: int = 1) -> None:
        if isinstance(heads, bool) or not isinstance(heads, (int, np.integer)) or heads < 1:
            raise SparsebenchError(f"Attention: heads must be an integer >= 1, got {heads!r}")
        if not np.isfinite(scale):
            raise SparsebenchError(f"Attention: scale must be finite, got {scale!r}")
        self.heads, self.scale, self.threads = int(heads), float(scale), _check_threads(threads)
        self._fn = _raw("sb_attention")
        self.impl = f"native-attention-{isa()}-t{self.threads}"

    def bind(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, out: np.ndarray,
             mask: np.ndarray | None = None) -> Callable[[], None]:
        """The call on these arrays (checked now)."""
        q, k, v = (_array(a, n, self.impl) for a, n in ((q, "q"), (k, "k"), (v, "v")))
        out = _array(out, "out", self.impl, writeable=True)
        if q.ndim != 3 or k.ndim != 3 or k.shape != v.shape or out.shape != q.shape \
                or k.shape[0] != q.shape[0] or k.shape[2] != q.shape[2] \
                or q.shape[2] % self.heads or k.shape[1] < 1:
            raise SparsebenchError(
                f"{self.impl}: q {q.shape}, k {k.shape}, v {v.shape}, out {out.shape} must be "
                f"(batch, tokens, {self.heads} heads * head_dim) with k, v alike")
        if any(np.may_share_memory(out, a) for a in (q, k, v)):
            raise SparsebenchError(f"{self.impl}: out must not overlap q, k or v")
        batch, tq, width = q.shape
        strides = (0, 0, 0)
        if mask is not None:
            if not isinstance(mask, np.ndarray):
                raise SparsebenchError(f"{self.impl}: the mask must be a numpy array")
            strides = mask_strides(mask, batch, self.heads, tq, k.shape[1], self.impl)
        args = (_vp(q), _vp(k), _vp(v), _vp(mask), *(_I64(s) for s in strides), _I64(batch),
                _I64(tq), _I64(k.shape[1]), _I64(self.heads), _I64(width // self.heads),
                _F(self.scale), _vp(out), _INT(self.threads))
        return _checked(self._fn, args, self.impl, (self, q, k, v, out, mask))

    def run(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None,
            out: np.ndarray | None = None) -> np.ndarray:
        out = np.empty_like(q) if out is None else out
        self.bind(q, k, v, out, mask)()
        return out

    __call__ = run


class GatherRows:
    """``y[..., :] = table[ids[...], :]``: an embedding lookup (ONNX ``Gather`` on axis 0 of a
    2-D float table) with int64 ids, negative ids counting from the end; an id out of range
    raises."""

    def __init__(self, table: Any) -> None:
        t = np.ascontiguousarray(_numpy(table), np.float32)
        if t.ndim != 2 or t.shape[0] < 1 or t.shape[1] < 1:
            raise SparsebenchError(f"GatherRows: the table must be a non-empty 2-D array, got "
                                   f"shape {t.shape}")
        self.table = t
        self._fn = _raw("sb_gather_rows")
        self._dims = (ctypes.c_void_p(int(t.ctypes.data)), _I64(t.shape[0]), _I64(t.shape[1]))
        self.impl = f"native-gather-{isa()}"

    def bind(self, ids: Callable[[], Any], out: np.ndarray) -> Callable[[], None]:
        """The call writing ``out`` from the ids ``ids()`` returns at call time (a torch tensor
        or numpy array of ``out.shape[:-1]``; other integer dtypes are converted)."""
        out = _array(out, "out", self.impl, writeable=True)
        if out.ndim < 1 or out.shape[-1] != self.table.shape[1]:
            raise SparsebenchError(f"{self.impl}: out {out.shape} must end in "
                                   f"{self.table.shape[1]} columns")
        import torch

        shape, n = out.shape[:-1], out.size // self.table.shape[1]
        i64 = torch.int64
        fn, (tp, rows, cols), yp, count, impl = self._fn, self._dims, _vp(out), _I64(n), self.impl

        def call() -> None:
            idx = ids()
            if isinstance(idx, np.ndarray):
                idx = np.ascontiguousarray(idx, np.int64)
                addr, got = idx.ctypes.data, idx.shape
            else:
                if idx.dtype is not i64 or not idx.is_contiguous():
                    idx = idx.to(i64).contiguous()
                addr, got = idx.data_ptr(), tuple(idx.shape)
            if tuple(got) != shape:
                raise SparsebenchError(f"{impl}: ids of shape {tuple(got)}, expected {shape}")
            if fn(tp, rows, cols, ctypes.c_void_p(addr), count, yp):
                raise SparsebenchError(f"{impl}: an id is outside the table's "
                                       f"{self.table.shape[0]} rows")
        call.keep = (self, out)  # type: ignore[attr-defined]
        return call

    def run(self, ids: Any, out: np.ndarray | None = None) -> np.ndarray:
        shape = tuple(getattr(ids, "shape", np.shape(ids)))
        out = np.empty((*shape, self.table.shape[1]), np.float32) if out is None else out
        self.bind(lambda: ids, out)()
        return out

    __call__ = run


def suffix_of(small: tuple[int, ...], full: tuple[int, ...]) -> bool:
    """Whether ``small`` (leading 1s dropped) is a trailing part of ``full``: broadcasting it
    over ``full`` repeats it as one contiguous block."""
    dims = list(small)
    while dims and dims[0] == 1:
        dims.pop(0)
    return len(dims) <= len(full) and tuple(full[len(full) - len(dims):]) == tuple(dims)


class ScaleAdd:
    """``y = alpha * a + b`` elementwise, ``b`` optional and broadcast over ``a``'s leading
    axes (its shape a suffix of ``a``'s, after leading 1s): the residual adds and scalings a
    graph leaves between the other kernels."""

    def __init__(self, alpha: float = 1.0, threads: int = 1) -> None:
        if not np.isfinite(alpha):
            raise SparsebenchError(f"ScaleAdd: alpha must be finite, got {alpha!r}")
        self.alpha, self.threads = float(alpha), _check_threads(threads)
        self._fn = _raw("sb_scale_add")
        self.impl = f"native-eltwise-{isa()}-t{self.threads}"

    def bind(self, a: np.ndarray, out: np.ndarray, b: np.ndarray | None = None
             ) -> Callable[[], None]:
        a = _array(a, "a", self.impl)
        out = _array(out, "out", self.impl, writeable=True)
        if b is not None and not suffix_of(_array(b, "b", self.impl).shape, a.shape):
            raise SparsebenchError(f"{self.impl}: b {b.shape} does not broadcast over a "
                                   f"{a.shape} along its leading axes")
        if out.shape != a.shape or (b is not None and b.size == 0):
            raise SparsebenchError(f"{self.impl}: out {out.shape} must have a's shape {a.shape}")
        args = (_vp(a), _F(self.alpha), _vp(b), _I64(1 if b is None else b.size), _I64(a.size),
                _vp(out), _INT(self.threads))
        return _checked(self._fn, args, self.impl, (self, a, b, out))

    def run(self, a: np.ndarray, b: np.ndarray | None = None, out: np.ndarray | None = None
            ) -> np.ndarray:
        out = np.empty_like(a) if out is None else out
        self.bind(a, out, b)()
        return out

    __call__ = run


class Softmax:
    """``y = softmax(x)`` over the last axis, max-subtracted as torch computes it (a row of
    all -inf, or holding NaN or +inf, gives NaN); ``out`` may be ``x``."""

    def __init__(self, threads: int = 1) -> None:
        self.threads = _check_threads(threads)
        self._fn = _raw("sb_softmax")
        self.impl = f"native-softmax-{isa()}-t{self.threads}"

    def bind(self, x: np.ndarray, out: np.ndarray) -> Callable[[], None]:
        x = _array(x, "x", self.impl)
        out = _array(out, "out", self.impl, writeable=True)
        if out.shape != x.shape or x.ndim < 1 or x.shape[-1] < 1:
            raise SparsebenchError(f"{self.impl}: out {out.shape} must have x's shape {x.shape}"
                                   " with a last axis of at least 1")
        cols = x.shape[-1]
        args = (_vp(x), _I64(x.size // cols), _I64(cols), _vp(out), _INT(self.threads))
        return _checked(self._fn, args, self.impl, (self, x, out))

    def run(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        out = np.empty_like(x) if out is None else out
        self.bind(x, out)()
        return out

    __call__ = run


class KeyMask:
    """The additive attention mask of a ``(batch, keys)`` key mask (a model's
    ``attention_mask`` input): ``y[b, ..., i, j] = on if m[b, j] != 0 else off`` for ``y`` of
    shape ``(batch, 1, rows, keys)`` (or any shape of ``batch * rows * keys`` floats)."""

    def __init__(self, on: float, off: float) -> None:
        self.on, self.off = float(on), float(off)
        self._fn = _raw("sb_key_mask")
        self.impl = f"native-keymask-{isa()}"

    def bind(self, mask: Callable[[], Any], out: np.ndarray) -> Callable[[], None]:
        """``mask()`` gives the key mask at call time (an int64 or bool tensor or array of
        ``(batch, keys)``; other integer types are converted)."""
        out = _array(out, "out", self.impl, writeable=True)
        batch, keys = int(out.shape[0]), int(out.shape[-1])
        rows = out.size // max(batch * keys, 1)
        fn, on, off, impl = self._fn, _F(self.on), _F(self.off), self.impl
        dst, b, r, k = _vp(out), _I64(batch), _I64(rows), _I64(keys)

        def call() -> None:
            m = mask()
            if isinstance(m, torch.Tensor) and m.dtype is torch.int64 and m.is_contiguous() \
                    and m.device.type == "cpu" and tuple(m.shape) == (batch, keys):
                src = ctypes.c_void_p(m.data_ptr())  # no torch op: its dispatcher is cold here
            else:
                m = np.ascontiguousarray(_numpy(m), np.int64)
                if m.shape != (batch, keys):
                    raise SparsebenchError(f"{impl}: the key mask has shape {m.shape}, the "
                                           f"plan {(batch, keys)}")
                src = _vp(m)
            _raise_on(fn(src, b, r, k, on, off, dst), impl)
        call.keep = (self, out)  # type: ignore[attr-defined]
        return call
