"""Optional compiled sparse kernels (repo folder ``kernels/``), built on first use and loaded
with ctypes.

Three rooms: ``abi`` (ctypes mirrors of the C header), ``build`` (compiler, cache, loading)
and ``ops`` (prepared calls). ``available()`` says whether they can be used (None) or why not
(a one-line reason); ``CSRLinear``, ``BSRLinear`` and ``CSRConv2d`` validate a sparse weight once and then run it
with about a microsecond of Python overhead per call. Set ``SPARSEBENCH_NO_NATIVE=1`` to
disable building and loading, ``SPARSEBENCH_KERNEL_DIR`` to move the build cache.
"""

from sparsebench.native.abi import ABI_VERSION, ACTS
from sparsebench.native.build import (CXXFLAGS, KERNEL_SRC, LIB_NAME, available, build,
                                      build_dir, build_info, isa, load, reset, tuning)
from sparsebench.native.ops import (BSRLinear, CSRConv2d, CSRLinear, MaxPool2d,
                                    bsr_from_dense, csr_from_dense, self_test)

__all__ = ["ABI_VERSION", "ACTS", "BSRLinear", "CSRConv2d", "CSRLinear", "CXXFLAGS", "KERNEL_SRC",
           "LIB_NAME", "MaxPool2d", "available", "build", "build_dir", "build_info", "bsr_from_dense",
           "csr_from_dense", "isa", "load", "reset", "self_test", "tuning"]
