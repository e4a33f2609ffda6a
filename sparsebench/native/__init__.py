"""Optional compiled sparse kernels (repo folder ``kernels/``), built on first use and loaded
with ctypes.

Four rooms: ``abi`` (ctypes mirrors of the C header), ``build`` (compiler, cache, loading),
``ops`` (prepared sparse calls) and ``transformer``. ``available()`` says whether they can be
used (None) or why not (a one-line reason); ``CSRLinear``, ``BSRLinear`` and ``CSRConv2d``
validate a sparse weight once and then run it with about a microsecond of Python overhead per
call (``CSRLinearGroup``: several CSRLinear of one input in one call; ``CSRLinearChain``: two
in sequence, the intermediate kept in the kernel's layout); ``AddLayerNorm``,
``Attention``, ``GatherRows``, ``KeyMask``, ``ScaleAdd`` and ``Softmax`` (``transformer``) run
the transformer blocks around them. Set ``SPARSEBENCH_NO_NATIVE=1`` to disable building and
loading, ``SPARSEBENCH_KERNEL_DIR`` to move the build cache.
"""

from sparsebench.native.abi import ABI_VERSION, ACTS
from sparsebench.native.build import (CXXFLAGS, KERNEL_SRC, LIB_NAME, available, build,
                                      build_dir, build_info, isa, load, pool_held, reset,
                                      tuning)
from sparsebench.native.ops import (BSRLinear, CSRConv2d, CSRLinear, CSRLinearChain,
                                    CSRLinearGroup, DenseConv2d, MaxPool2d, bsr_from_dense, csr_from_dense,
                                    self_test)
from sparsebench.native.transformer import (AddLayerNorm, Attention, GatherRows, KeyMask,
                                            ScaleAdd, Softmax, suffix_of)

__all__ = ["ABI_VERSION", "ACTS", "AddLayerNorm", "Attention", "BSRLinear", "CSRConv2d",
           "CSRLinear", "CSRLinearChain", "CSRLinearGroup", "CXXFLAGS", "DenseConv2d", "GatherRows",
           "KERNEL_SRC", "KeyMask", "LIB_NAME", "MaxPool2d", "ScaleAdd", "Softmax", "available",
           "build", "build_dir", "build_info", "bsr_from_dense", "csr_from_dense", "isa", "load",
           "pool_held", "reset", "self_test", "suffix_of", "tuning"]
