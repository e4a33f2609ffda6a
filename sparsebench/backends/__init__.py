"""Backends: execute a converted model (no timing; the harness times ``Prepared.run``).

``BACKENDS.get(name)`` is the backend class (imported lazily); ``get_backend(name)`` an
instance. ``prepare`` raises :class:`Unsupported` for combinations that cannot run, with the
one-line reason the harness records on the skipped row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sparsebench.backends.base import Backend, Prepared, Unsupported
from sparsebench.catalog import BACKENDS  # the names: sparsebench/catalog.py

if TYPE_CHECKING:
    from sparsebench.formats import ConvertedModel

__all__ = ["BACKENDS", "Backend", "Prepared", "Unsupported", "get_backend", "list_backends",
           "onnx_sizes"]


def get_backend(name: str) -> Backend:
    """An instance of the backend registered as ``name``."""
    return BACKENDS.get(name)()


def list_backends(pattern: str = "*") -> list[str]:
    return BACKENDS.names(pattern)


def onnx_sizes(converted: ConvertedModel) -> dict[str, int]:
    """ONNX file size in bytes, dense and with sparse initializers (see backends.onnxrt)."""
    from sparsebench.backends.onnxrt import onnx_sizes as sizes

    return sizes(converted)
