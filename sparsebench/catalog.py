"""Every name the command line lists, importable without torch.

The registries hold "module:attr" targets (resolved on first ``get``) with a one-line summary and
facts readable without importing the target (``Registry.meta``), so building the parser and
rendering ``--help`` import neither torch nor numpy. The modules that implement the entries
(``sparsebench.archs``, ``.data``, ``.formats``, ``.backends``) re-export their registry from
here; this is the only place entries are declared.
"""

from __future__ import annotations

from pathlib import Path

from sparsebench.errors import UnknownNameError
from sparsebench.registry import Registry

# ------------------------------------------------------------------ architectures (archs.py)
# Facts per entry (timm-style): ``input`` the default (in_channels, input_size), ``classifier``
# the head module, ``small`` constructor arguments of a quick test-size instance, ``from_state``
# a "module:attr" function returning constructor arguments read from a state_dict.
# ``default_pruned`` is on the built model.
ARCHS = Registry("architecture")
ARCHS.register("lenet300", "sparsebench.archs:LeNet300", "784-300-100-10 MLP", input=(1, 28),
               classifier="fc3", small={})
ARCHS.register("lenet5", "sparsebench.archs:LeNet5", "LeNet-5 (2 convs, 3 fc), ReLU, max-pool",
               input=(1, 28), classifier="fc3", small={})
ARCHS.register("vgg11_bn", "sparsebench.archs:VGG11BN",
               "VGG11-BN, CIFAR form, single Linear(512, classes) head", input=(3, 32),
               classifier="classifier", small={"in_channels": 3, "input_size": 16})
ARCHS.register("resnet18", "sparsebench.archs:ResNet18",
               "ResNet18, CIFAR form (3x3 stem, no max-pool)", input=(3, 32), classifier="fc",
               small={"in_channels": 3, "input_size": 8})
ARCHS.register("ffn", "sparsebench.archs:FFN",
               "transformer FFN block 1024-4096-1024 with GELU, on vectors", input=(1024, 1),
               classifier="head", from_state="sparsebench.archs:ffn_kwargs",
               small={"in_channels": 64, "input_size": 1, "d_model": 64, "d_hidden": 128})

# Architectures of the model zoos (archs.py builds them, random init, nothing downloaded):
# ``torchvision:NAME`` and ``timm:NAME`` where those libraries import (a second venv: docs/zoo.md).
ZOO_LIBRARIES = ("torchvision", "timm")
ZOO_INSTALL = ("pip install torch==2.14.1 torchvision==0.29.1 timm, in a venv of its own "
               "(docs/zoo.md)")


def zoo_split(name: str) -> tuple[str, str] | None:
    """``"torchvision:resnet50"`` -> ``("torchvision", "resnet50")``; None for other names.
    The older spelling ``torchvision.NAME`` is accepted too."""
    for lib in ZOO_LIBRARIES:
        for sep in (":", "."):
            if name.startswith(lib + sep) and len(name) > len(lib) + 1:
                return lib, name[len(lib) + 1:]
    return None


def check_arch(name: str) -> str:
    """A registry architecture or a zoo name (checked when built); else a one-line error."""
    if zoo_split(name):
        return name
    try:
        return ARCHS.check(name)
    except UnknownNameError as exc:
        raise UnknownNameError(f"{exc}, or torchvision:NAME / timm:NAME") from None


# ------------------------------------------------------------------ datasets (data.py)
DATASETS = Registry("dataset")
DATASETS.register("fashion-mnist", "sparsebench.data:_load_fashion_mnist",
                  "Fashion-MNIST, 60k/10k 28x28 grey (Debian dataset-fashion-mnist)")
DATASETS.register("cifar10", "sparsebench.data:_load_cifar10",
                  "CIFAR-10, 50k/10k 32x32 RGB (python version, --data-dir)")
DATASETS.register("synthetic", "sparsebench.data:_load_synthetic",
                  "seeded random data with a linear teacher")

# ------------------------------------------------------------------ formats (formats/)
FORMATS = Registry("format")
FORMATS.register("dense", "sparsebench.formats.dense:convert_dense",
                 "float32 copy of the masked model")
FORMATS.register("structured", "sparsebench.formats.structured:convert_structured",
                 "pruned channels/neurons physically removed (smaller dense model)")
FORMATS.register("csr", "sparsebench.formats.sparse:convert_csr",
                 "CSR weights (int16 column indices when they fit)")
FORMATS.register("bsr", "sparsebench.formats.sparse:convert_bsr", "block-sparse rows, 4x4 blocks")
BSR_BLOCKS = {"bsr-1x4": (1, 4), "bsr-4x4": (4, 4), "bsr-8x8": (8, 8), "bsr-16x1": (16, 1)}
for _name, (_r, _c) in BSR_BLOCKS.items():
    FORMATS.register(_name, "sparsebench.formats.sparse:convert_bsr",
                     f"block-sparse rows, {_r}x{_c} blocks")

# ------------------------------------------------------------------ backends (backends/)
BACKENDS = Registry("backend")
BACKENDS.register("torch", "sparsebench.backends.torch_eager:TorchBackend",
                  "eager torch on dense/structured models")
BACKENDS.register("torch-sparse", "sparsebench.backends.torch_sparse:TorchSparseBackend",
                  "torch.sparse CSR/BSR matmul (im2col for convs)")
BACKENDS.register("scipy", "sparsebench.backends.scipy_sparse:ScipyBackend",
                  "scipy.sparse CSR/BSR matmul, single-threaded")
BACKENDS.register("onnxruntime", "sparsebench.backends.onnxrt:OnnxRuntimeBackend",
                  "ONNX Runtime CPU execution provider on dense/structured models")
if (Path(__file__).parent / "backends" / "kernel_plan.py").exists():
    BACKENDS.register("native", "sparsebench.backends.kernel_plan:NativeBackend",
                      "compiled sparse kernels (kernels/)")

# ------------------------------------------------------------------ plain choices
METHODS = ("dense", "dropout", "prune-l", "prune-s", "prune-r", "reentry", "scratch")  # train.py
SCORES = ("l2", "l1", "activation")                      # pruning/scoring.py
TARGETS = ("prune-l", "prune-s", "prune-r")              # pruning/scoring.py
GRANULARITIES = ("weight", "filter")                     # pruning/oneshot.py (sweep)
REENTRY_MODES = ("zero", "gaussian", "restore")          # pruning/pruner.py
EXECUTORS = ("local", "ray")                             # claims.py
DEFAULT_SPARSITIES = "0,50,70,80,90,95,98"               # sweep.py


def check_prune_options(target: str, granularity: str) -> None:
    """One-line errors for an unknown one-shot pruning target or granularity (sweep)."""
    if target not in TARGETS:
        raise UnknownNameError(f"unknown target {target!r}; choose from: {', '.join(TARGETS)}")
    if granularity not in GRANULARITIES:
        raise UnknownNameError(f"unknown granularity {granularity!r}; choose from: "
                               f"{', '.join(GRANULARITIES)}")
