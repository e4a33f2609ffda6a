"""Activation buffers and weight copies on transparent huge pages.

A native plan's buffers are written and read once per call, tens of MB of them for an
ImageNet CNN, and a transformer streams its weights (BERT-base's K-panel copies: 42 MB) once per
call. On 4 KB pages every call walks the page tables for each page again (a conv with 256
output channels writes 256 planes per tile, each in a different page). ``HugePageArena`` carves
arrays out of 2 MB-aligned anonymous mappings advised ``MADV_HUGEPAGE``: on Linux with
transparent huge pages in ``madvise`` or ``always`` mode the kernel backs them with 2 MB pages.
Arrays of one plan share the mappings, so small ones do not each take a 2 MB page. Elsewhere
(no ``madvise``) it falls back to plain numpy arrays.
"""

from __future__ import annotations

import mmap
from typing import Any

import numpy as np

_HUGE = 2 << 20       # the huge page size (x86-64)
_REGION = 32 << 20    # bytes mapped at a time (a larger request gets its own region)
_ALIGN = 64           # buffers start on cache lines


class HugePageArena:
    """A bump allocator of zeroed arrays in huge-page-advised regions; the arrays stay valid
    as long as the arena (or any of them) lives. Regions are never reused or unmapped
    before then: a plan allocates its buffers once."""

    def __init__(self, huge: bool = True) -> None:
        self._regions: list[mmap.mmap] = []
        self._free = 0   # bytes left in the current region
        self._at = 0     # offset of the next buffer in it
        self._base: np.ndarray | None = None
        self.huge = huge and hasattr(mmap, "MADV_HUGEPAGE")  # False: plain numpy arrays

    def zeros(self, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
        """A zeroed C-contiguous array of ``shape`` and ``dtype`` (float32 by default)."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if not self.huge or nbytes == 0:
            return np.zeros(shape, dtype)
        size = -(-nbytes // _ALIGN) * _ALIGN
        if size > self._free:
            self._map(max(_REGION, size))
        assert self._base is not None
        out = self._base[self._at:self._at + nbytes].view(dtype).reshape(shape)
        self._at += size
        self._free -= size
        out[...] = 0  # first touch: the kernel backs the pages now, with huge pages if it can
        return out

    @property
    def mapped(self) -> int:
        """Bytes mapped so far (0 when falling back to numpy)."""
        return sum(len(r) for r in self._regions)

    def owns(self, a: np.ndarray) -> bool:
        """Whether ``a``'s memory lies in one of the arena's mappings."""
        for r in self._regions:
            lo = np.frombuffer(r, np.uint8).ctypes.data
            if lo <= a.ctypes.data and a.ctypes.data + a.nbytes <= lo + len(r):
                return True
        return False

    def _map(self, size: int) -> None:
        size = -(-size // _HUGE) * _HUGE
        # private: a shared anonymous mapping is shmem, which has its own (usually off) THP switch
        region = mmap.mmap(-1, size + _HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        try:
            region.madvise(mmap.MADV_HUGEPAGE)
        except OSError:  # e.g. transparent huge pages compiled out: 4 KB pages, still correct
            pass
        base = np.frombuffer(region, np.uint8)
        start = (-base.ctypes.data) % _HUGE
        self._regions.append(region)
        self._base = base[start:start + size]
        self._at, self._free = 0, size
