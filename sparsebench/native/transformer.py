"""Prepared calls of the transformer kernels (kernels/transformer.cpp): add + LayerNorm over
the last axis.

``run`` validates its arrays on every call; ``bind`` validates them once and returns a
zero-argument callable on their raw addresses (what the native plan calls, ~0.5 us of Python).
"""

from __future__ import annotations

import ctypes
from typing import Any, Callable

import numpy as np

from sparsebench.errors import SparsebenchError
from sparsebench.native.abi import _F32, _I64, _INT, _STATUS
from sparsebench.native.build import isa, load
from sparsebench.native.ops import _check_threads, _numpy

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


def _checked(fn: Any, args: tuple[Any, ...], impl: str, keep: Any) -> Callable[[], None]:
    """``fn(*args)`` raising on a bad status; ``keep`` (the op and the arrays behind the raw
    addresses) lives as long as the callable."""
    def call() -> None:
        status = fn(*args)
        if status:
            raise SparsebenchError(f"{impl}: kernel failed: {_STATUS.get(status, 'error')} "
                                   f"(status {status})")
    call.keep = keep  # type: ignore[attr-defined]
    return call


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
