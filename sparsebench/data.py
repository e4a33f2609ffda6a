"""Datasets by name, loaded fully into memory, and a batching helper.

``load_dataset(name, ...)`` returns a :class:`Dataset` of float32 ``N,C,H,W`` images and int64
labels. Registered names (``DATASETS``):

* ``fashion-mnist``: the four gzip IDX files (``train-images-idx3-ubyte.gz``,
  ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``;
  uncompressed names without ``.gz`` are accepted too) from ``data_dir``, by default
  ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``). Each file is
  validated: magic number (2051 images / 2049 labels, dtype byte 0x08), dimensions, payload length
  exactly as the header says (truncated or padded files are rejected), image and label counts
  agree, labels in 0..9.
* ``cifar10``: the extracted ``cifar-10-batches-py`` folder (``data_batch_1..5``, ``test_batch``,
  optional ``batches.meta``), given as ``data_dir``. The batches are pickles, so they are read by a
  restricted unpickler that only resolves numpy's array reconstruction (``_reconstruct``,
  ``ndarray``, ``dtype``) and latin-1 ``bytes``; any other global is refused without being called.
  Data must be uint8 ``N x 3072`` (R, G, B planes of 32x32) with ``N`` labels in 0..9.
* ``synthetic``: seeded uniform data of any ``synthetic_shape`` (``synthetic_sizes`` train/test
  samples, ``num_classes`` classes) labelled by a fixed random linear teacher, so it is learnable;
  identical for identical seeds.

Processing order: ``limit_train`` keeps a class-balanced subset of the training split (the first
``N // classes`` samples of each class in file order, the same for every seed), ``limit_test`` the
first test samples; images are scaled to
[0, 1], ``pad_to_32`` zero-pads the spatial size up to 32x32 (28x28 gets 2 pixels each side),
then the per-channel mean/std of the training split normalises both splits (a sample shape that is
not ``C,H,W`` is treated as a single channel). A constant channel gets std 1.

``iterate_batches`` walks in-memory tensors in batches (a permutation from the given
``torch.Generator`` when shuffling; no DataLoader). ``augment=True`` adds a random crop (4 pixels
of zero padding, i.e. the channel mean after normalisation) and a random horizontal flip per
sample, vectorised and driven only by the generator, so epochs are reproducible for a seed.

Every problem with the data is a one-line :class:`SparsebenchError` naming the file and saying how
to get the data.
"""

from __future__ import annotations

import gzip
import pickle
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from sparsebench.errors import SparsebenchError
from sparsebench.catalog import DATASETS

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_HINT = "install it with `apt-get install -y dataset-fashion-mnist` or pass --data-dir"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]
CIFAR10_HINT = ("download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, "
                "extract it and pass --data-dir pointing at the cifar-10-batches-py folder")
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck"]
IDX_IMAGES, IDX_LABELS = 2051, 2049


@dataclass
class Dataset:
    """Both splits of a dataset in memory, normalised with the training split's statistics."""

    train_x: torch.Tensor = field(repr=False)
    train_y: torch.Tensor = field(repr=False)
    test_x: torch.Tensor = field(repr=False)
    test_y: torch.Tensor = field(repr=False)
    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    mean: list[float]
    std: list[float]
    classes: list[str] | None = None


@dataclass
class _Raw:
    """Loader output before limits, scaling, padding and normalisation."""

    train_x: np.ndarray  # uint8 (scaled by 1/255) or float in [0, 1]
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    classes: list[str] | None = None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


# --------------------------------------------------------------------------- fashion-mnist


def _fmnist_error(path: Path | str, problem: str) -> SparsebenchError:
    return SparsebenchError(f"fashion-mnist: {path}: {problem}; {FASHION_MNIST_HINT}")


def _find_file(folder: Path, base: str) -> Path:
    for candidate in (folder / f"{base}.gz", folder / base):
        if candidate.is_file():
            return candidate
    raise _fmnist_error(folder / f"{base}.gz", "file not found (nor uncompressed)")


def read_idx(path: Path, magic: int, max_label: int | None = None) -> np.ndarray:
    """Read and validate one IDX file (gzip or plain) holding unsigned bytes."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                buf = fh.read()
        else:
            buf = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise _fmnist_error(path, f"unreadable or corrupt file ({_one_line(exc)})") from exc
    kind, ndim = ("images", 3) if magic == IDX_IMAGES else ("labels", 1)
    if len(buf) < 4:
        raise _fmnist_error(path, f"truncated IDX header ({len(buf)} bytes)")
    got_magic = int.from_bytes(buf[:4], "big")
    if buf[0] != 0 or buf[1] != 0 or buf[2] != 0x08 or got_magic != magic:
        raise _fmnist_error(path, f"bad IDX magic number {got_magic} (expected {magic} for "
                                  f"unsigned-byte {kind})")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise _fmnist_error(path, f"truncated IDX header ({len(buf)} of {header} bytes)")
    dims = [int.from_bytes(buf[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    if min(dims) < 1:
        raise _fmnist_error(path, f"IDX {kind} file with empty dimensions {dims}")
    expected = header + int(np.prod(dims))
    if len(buf) != expected:
        problem = "truncated" if len(buf) < expected else "oversized"
        raise _fmnist_error(path, f"{problem} IDX file (expected {expected} bytes, got {len(buf)})")
    arr = np.frombuffer(buf, dtype=np.uint8, offset=header).reshape(dims)
    if max_label is not None and arr.size and int(arr.max()) > max_label:
        raise _fmnist_error(path, f"label {int(arr.max())} out of range 0..{max_label}")
    return arr


def _fmnist_split(folder: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    images_path = _find_file(folder, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_file(folder, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(images_path, IDX_IMAGES)
    labels = read_idx(labels_path, IDX_LABELS, max_label=9)
    if len(images) != len(labels):
        raise _fmnist_error(labels_path, f"{len(labels)} labels but {images_path.name} holds "
                                         f"{len(images)} images")
    return images[:, None, :, :], labels


def _load_fashion_mnist(data_dir: str | Path | None = None, test_only: bool = False,
                        **_: Any) -> _Raw:
    folder = Path(data_dir) if data_dir is not None else FASHION_MNIST_DIR
    if not folder.is_dir():
        raise _fmnist_error(folder, "folder not found")
    if not any(folder.glob("*-idx?-ubyte*")) and (folder / "fashion-mnist").is_dir():
        folder = folder / "fashion-mnist"
    test_x, test_y = _fmnist_split(folder, "t10k")
    train_x, train_y = (test_x[:0], test_y[:0]) if test_only else _fmnist_split(folder, "train")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise _fmnist_error(folder, f"train images are {train_x.shape[2:]} but test images are "
                                    f"{test_x.shape[2:]}")
    return _Raw(train_x, train_y, test_x, test_y, 10, list(FASHION_MNIST_CLASSES))


# --------------------------------------------------------------------------- cifar10


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """What Python 3 writes for ``bytes`` at pickle protocol < 3 (``_codecs.encode``)."""
    if not isinstance(text, str) or encoding.lower().replace("-", "") not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"_codecs.encode is only allowed for latin1, got {encoding!r}")
    return text.encode("latin-1")


def _empty_bytes(*args: Any) -> bytes:
    """What Python 3 writes for ``b""`` at pickle protocol < 3 (``bytes()``)."""
    if args:
        raise pickle.UnpicklingError("bytes() with arguments is not allowed")
    return b""


def _np_reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals a CIFAR-10 batch needs; anything else is refused uncalled."""

    def __init__(self, fh: Any, path: Path) -> None:
        super().__init__(fh, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__":
            module = "builtins"
        if (module, name) in (("numpy.core.multiarray", "_reconstruct"),
                              ("numpy._core.multiarray", "_reconstruct")):
            return _np_reconstruct()
        allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                   ("_codecs", "encode"): _latin1_encode, ("builtins", "bytes"): _empty_bytes}
        if (module, name) in allowed:
            return allowed[(module, name)]
        raise SparsebenchError(f"cifar10: {self.path}: refuses to unpickle {module}.{name} "
                               f"(not a plain CIFAR-10 batch); {CIFAR10_HINT}")


def _cifar_error(path: Path | str, problem: str) -> SparsebenchError:
    return SparsebenchError(f"cifar10: {path}: {problem}; {CIFAR10_HINT}")


def _unpickle(path: Path) -> Any:
    if not path.is_file():
        raise _cifar_error(path, "file not found")
    try:
        with path.open("rb") as fh:
            return _RestrictedUnpickler(fh, path).load()
    except SparsebenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt batch
        raise _cifar_error(path, f"corrupt CIFAR-10 batch ({_one_line(exc)})") from exc


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    obj = _unpickle(path)
    if not isinstance(obj, dict) or b"data" not in obj or b"labels" not in obj:
        raise _cifar_error(path, "not a CIFAR-10 batch (expected a dict with b'data' and "
                                 "b'labels')")
    data, labels = obj[b"data"], obj[b"labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072 or data.shape[0] < 1:
        shape = getattr(data, "shape", type(data).__name__)
        dtype = getattr(data, "dtype", "")
        raise _cifar_error(path, f"b'data' must be uint8 N x 3072, got {shape} {dtype}".rstrip())
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise _cifar_error(path, f"b'labels' are not integers ({_one_line(exc)})") from exc
    if y.shape != (data.shape[0],):
        raise _cifar_error(path, f"{y.size} labels for {data.shape[0]} images")
    if y.min() < 0 or y.max() > 9:
        raise _cifar_error(path, f"label {int(y.min() if y.min() < 0 else y.max())} out of "
                                 f"range 0..9")
    return data.reshape(-1, 3, 32, 32), y


def _cifar_classes(path: Path) -> list[str]:
    if not path.exists():
        return list(CIFAR10_CLASSES)
    meta = _unpickle(path)
    names = meta.get(b"label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != 10:
        raise _cifar_error(path, "batches.meta has no list of 10 b'label_names'")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names]


def _load_cifar10(data_dir: str | Path | None = None, test_only: bool = False,
                  **_: Any) -> _Raw:
    if data_dir is None:
        raise SparsebenchError("cifar10 needs --data-dir pointing at the extracted "
                               "cifar-10-batches-py folder")
    folder = Path(data_dir)
    if not folder.is_dir():
        raise _cifar_error(folder, "folder not found")
    if not (folder / "test_batch").exists() and (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    test_x, test_y = _cifar_batch(folder / "test_batch")
    train = ([(test_x[:0], test_y[:0])] if test_only else
             [_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)])
    return _Raw(np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train]),
                test_x, test_y, 10, _cifar_classes(folder / "batches.meta"))


# --------------------------------------------------------------------------- synthetic


def _load_synthetic(seed: int = 0, synthetic_shape: Sequence[int] = (1, 28, 28),
                    synthetic_sizes: Sequence[int] = (2048, 512), num_classes: int = 10,
                    **_: Any) -> _Raw:
    shape = tuple(int(s) for s in synthetic_shape)
    sizes = tuple(int(s) for s in synthetic_sizes)
    if not shape or min(shape) < 1:
        raise SparsebenchError(f"synthetic shape must be positive sizes, got {shape}")
    if len(sizes) != 2 or min(sizes) < 1:
        raise SparsebenchError(f"synthetic sizes must be two positive counts, got {sizes}")
    if num_classes < 2:
        raise SparsebenchError(f"synthetic data needs at least 2 classes, got {num_classes}")
    gen = torch.Generator().manual_seed(int(seed))
    features = int(np.prod(shape))
    teacher = torch.randn(features, num_classes, generator=gen) / features ** 0.5
    x = torch.rand(sizes[0] + sizes[1], *shape, generator=gen)
    y = ((x.reshape(len(x), -1) - 0.5) @ teacher).argmax(dim=1)
    x_np, y_np = x.numpy(), y.numpy()
    return _Raw(x_np[:sizes[0]], y_np[:sizes[0]], x_np[sizes[0]:], y_np[sizes[0]:], num_classes)


# The names are declared in sparsebench/catalog.py (DATASETS).


# --------------------------------------------------------------------------- processing


def _limit(arr: np.ndarray, limit: int | None, what: str) -> np.ndarray:
    if limit is None:
        return arr
    if int(limit) < 1:
        raise SparsebenchError(f"{what} must be at least 1, got {limit}")
    return arr[: int(limit)]


def balanced_indices(labels: np.ndarray, limit: int | None, num_classes: int) -> np.ndarray:
    """Indices of a class-balanced subset of ``limit`` samples, in file order: the first
    ``limit // num_classes`` samples of each class, the remainder going to the lowest classes.
    ``None`` keeps everything."""
    if limit is None:
        return np.arange(len(labels))
    if int(limit) < 1:
        raise SparsebenchError(f"limit_train must be at least 1, got {limit}")
    limit = min(int(limit), len(labels))
    base, extra = divmod(limit, num_classes)
    picked = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        want = base + (1 if c < extra else 0)
        if len(idx) < want:
            raise SparsebenchError(f"limit_train {limit}: class {c} has only {len(idx)} "
                                   f"training samples, {want} needed for a balanced subset")
        picked.append(idx[:want])
    return np.sort(np.concatenate(picked)) if picked else np.arange(0)


def _to_float01(arr: np.ndarray) -> torch.Tensor:
    if arr.dtype == np.uint8:
        return torch.from_numpy(arr.astype(np.float32)).div_(255.0)
    return torch.from_numpy(np.array(arr, dtype=np.float32))  # copy: loaders may share buffers


def pad_to(x: torch.Tensor, size: int = 32) -> torch.Tensor:
    """Zero-pad ``N,C,H,W`` images symmetrically to ``size x size`` (no-op if already there)."""
    if x.dim() != 4:
        raise SparsebenchError(f"pad_to_32 needs C,H,W samples, got shape {tuple(x.shape[1:])}")
    h, w = x.shape[-2:]
    dh, dw = size - h, size - w
    if dh < 0 or dw < 0 or dh % 2 or dw % 2:
        raise SparsebenchError(f"pad_to_32 cannot pad {h}x{w} evenly to {size}x{size}")
    if dh == dw == 0:
        return x
    return torch.nn.functional.pad(x, (dw // 2, dw // 2, dh // 2, dh // 2))


def _stats_view(x: torch.Tensor) -> tuple[list[int], list[int]]:
    """Reduction dims and broadcast shape: per channel for ``N,C,H,W``, else one channel."""
    if x.dim() == 4:
        return [0, 2, 3], [1, -1, 1, 1]
    return list(range(x.dim())), [1] * x.dim()


def channel_stats(x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std; a constant channel gets std 1."""
    dims, _ = _stats_view(x)
    var, mean = torch.var_mean(x, dim=dims, correction=0)
    std = var.sqrt()
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    return mean.reshape(-1).tolist(), std.reshape(-1).tolist()


def normalise_(x: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """Normalise in place with per-channel statistics."""
    _, shape = _stats_view(x)
    m = torch.tensor(mean, dtype=x.dtype).reshape(shape)
    s = torch.tensor(std, dtype=x.dtype).reshape(shape)
    return x.sub_(m).div_(s)


def load_dataset(name: str, data_dir: str | Path | None = None, pad_to_32: bool = False,
                 seed: int = 0, synthetic_shape: Sequence[int] = (1, 28, 28),
                 synthetic_sizes: Sequence[int] = (2048, 512), num_classes: int = 10,
                 limit_train: int | None = None, limit_test: int | None = None,
                 stats: tuple[list[float], list[float]] | None = None) -> Dataset:
    """Load a registered dataset into memory, normalised (see the module docstring).

    ``seed``, ``synthetic_shape``, ``synthetic_sizes`` and ``num_classes`` only affect
    ``synthetic``; the real datasets have 10 classes. ``stats`` (the training set's per-channel
    mean and std, as stored in a checkpoint) normalises the test split without reading the
    training split, which is then empty (used to evaluate trained models).
    """
    loader = DATASETS.get(name)
    raw: _Raw = loader(data_dir=data_dir, seed=seed, synthetic_shape=synthetic_shape,
                       synthetic_sizes=synthetic_sizes, num_classes=num_classes,
                       test_only=stats is not None)
    keep = balanced_indices(np.asarray(raw.train_y), limit_train, raw.num_classes)
    train_x = _to_float01(raw.train_x[keep])
    test_x = _to_float01(_limit(raw.test_x, limit_test, "limit_test"))
    train_y = torch.from_numpy(np.asarray(raw.train_y)[keep].astype(np.int64))
    test_y = torch.from_numpy(_limit(raw.test_y, limit_test, "limit_test").astype(np.int64))
    if pad_to_32:
        train_x, test_x = pad_to(train_x), pad_to(test_x)
    mean, std = (list(stats[0]), list(stats[1])) if stats is not None else channel_stats(train_x)
    normalise_(train_x, mean, std)
    normalise_(test_x, mean, std)
    return Dataset(train_x, train_y, test_x, test_y, name, raw.num_classes,
                   tuple(int(s) for s in train_x.shape[1:]), mean, std, raw.classes)


def list_datasets(pattern: str = "*") -> list[str]:
    return DATASETS.names(pattern)


# --------------------------------------------------------------------------- batching


def augment_batch(x: torch.Tensor, generator: torch.Generator | None = None,
                  pad: int = 4) -> torch.Tensor:
    """Random ``H x W`` crop of the zero-padded batch plus random horizontal flip, per sample.

    One gather for the whole batch: row/column source indices are built per sample.
    """
    if x.dim() != 4:
        raise SparsebenchError(f"augmentation needs N,C,H,W batches, got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    ar_h, ar_w = torch.arange(h), torch.arange(w)
    rows = oy[:, None] + ar_h  # (n, h)
    cols = ox[:, None] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)  # (n, w)
    dev = x.device
    return padded[torch.arange(n, device=dev)[:, None, None, None],
                  torch.arange(c, device=dev)[None, :, None, None],
                  rows.to(dev)[:, None, :, None], cols.to(dev)[:, None, None, :]]


def iterate_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool,
                    generator: torch.Generator | None = None,
                    augment: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` batches covering every sample once (the last batch may be smaller)."""
    if batch_size < 1:
        raise SparsebenchError(f"batch size must be at least 1, got {batch_size}")
    if len(x) != len(y):
        raise SparsebenchError(f"{len(x)} inputs but {len(y)} labels")
    n = len(x)
    order = torch.randperm(n, generator=generator) if shuffle else None
    for start in range(0, n, batch_size):
        if order is None:
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        else:
            idx = order[start:start + batch_size].to(x.device)
            xb, yb = x[idx], y[idx.to(y.device)]
        if augment:
            xb = augment_batch(xb, generator)
        yield xb, yb
