"""Tests for sparsebench.data: IDX and CIFAR-10 loading/validation, synthetic data, batching."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsebench.data import (DATASETS, FASHION_MNIST_DIR, Dataset, augment_batch,
                              balanced_indices, iterate_batches, load_dataset)
from sparsebench.errors import SparsebenchError, UnknownNameError

APT_HINT = "apt-get install -y dataset-fashion-mnist"


# ----------------------------------------------------------------------------- helpers


def idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write(path: Path, payload: bytes, gz: bool) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)
    return path


def make_fmnist(folder: Path, n_train: int = 6, n_test: int = 4, gz: bool = True,
                seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, arr in arrays.items():
        write(folder / name, idx_bytes(arr, 2051 if "images" in name else 2049), gz)
    return arrays


def load_error(*args: object, **kwargs: object) -> str:
    with pytest.raises(SparsebenchError) as info:
        load_dataset(*args, **kwargs)  # type: ignore[arg-type]
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


def denorm(x: torch.Tensor, ds: Dataset) -> torch.Tensor:
    mean = torch.tensor(ds.mean).view(1, -1, 1, 1)
    std = torch.tensor(ds.std).view(1, -1, 1, 1)
    return x * std + mean


def cifar_batch(n: int, seed: int, labels: list[int] | None = None) -> dict[bytes, object]:
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"testing batch",
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": labels if labels is not None else rng.integers(0, 10, n).tolist(),
            b"filenames": [b"img%d.png" % i for i in range(n)]}


def make_cifar(folder: Path, n: int = 3, meta: bool = True) -> dict[str, dict[bytes, object]]:
    folder.mkdir(parents=True, exist_ok=True)
    batches = {f"data_batch_{i}": cifar_batch(n, i) for i in range(1, 6)}
    batches["test_batch"] = cifar_batch(n + 1, 99)
    for name, batch in batches.items():
        with (folder / name).open("wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    if meta:
        names = [b"c%d" % i for i in range(10)]
        with (folder / "batches.meta").open("wb") as fh:
            pickle.dump({b"label_names": names, b"num_vis": 3072}, fh, protocol=2)
    return batches


# ----------------------------------------------------------------------------- fashion-mnist


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_tiny_files_load_and_normalise(tmp_path: Path, gz: bool) -> None:
    arrays = make_fmnist(tmp_path, gz=gz)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert ds.train_x.shape == (6, 1, 28, 28) and ds.test_x.shape == (4, 1, 28, 28)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10 and len(ds.classes or []) == 10
    assert ds.train_y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert ds.test_y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    train01 = torch.from_numpy(arrays["train-images-idx3-ubyte"]).float()[:, None] / 255
    test01 = torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float()[:, None] / 255
    # statistics come from the training split, and the test split uses the same ones
    assert ds.mean[0] == pytest.approx(train01.mean().item(), abs=1e-5)
    assert ds.std[0] == pytest.approx(train01.std(correction=0).item(), abs=1e-5)
    assert torch.allclose(denorm(ds.train_x, ds), train01, atol=1e-5)
    assert torch.allclose(denorm(ds.test_x, ds), test01, atol=1e-5)
    assert abs(ds.train_x.mean().item()) < 1e-4
    assert ds.train_x.std(correction=0).item() == pytest.approx(1.0, abs=1e-4)


def test_limits_and_pad_to_32(tmp_path: Path) -> None:
    arrays = make_fmnist(tmp_path, n_train=8, n_test=5)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path, pad_to_32=True, limit_train=3,
                      limit_test=2)
    assert ds.train_x.shape == (3, 1, 32, 32) and ds.test_x.shape == (2, 1, 32, 32)
    assert ds.input_shape == (1, 32, 32)
    labels = arrays["train-labels-idx1-ubyte"]
    # class-balanced: the first sample of classes 0, 1 and 2, in file order
    keep = sorted(int(np.flatnonzero(labels == c)[0]) for c in range(3))
    assert ds.train_y.tolist() == labels[keep].tolist() == sorted(labels[keep].tolist())
    raw = denorm(ds.train_x, ds)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert torch.allclose(raw[:, 0][:, border], torch.zeros(1), atol=1e-5)
    inner = torch.from_numpy(arrays["train-images-idx3-ubyte"][keep]).float() / 255
    assert torch.allclose(raw[:, 0, 2:30, 2:30], inner, atol=1e-5)
    # padding zeros are part of the statistics
    padded = torch.nn.functional.pad(inner, (2, 2, 2, 2))
    assert ds.mean[0] == pytest.approx(padded.mean().item(), abs=1e-5)


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_image_file_rejected(tmp_path: Path, gz: bool) -> None:
    arrays = make_fmnist(tmp_path, gz=gz)
    payload = idx_bytes(arrays["train-images-idx3-ubyte"], 2051)
    for p in tmp_path.glob("train-images-idx3-ubyte*"):
        p.unlink()
    write(tmp_path / "train-images-idx3-ubyte", payload[:1000], gz)
    msg = load_error("fashion-mnist", data_dir=tmp_path)
    assert "train-images-idx3-ubyte" in msg and "truncated" in msg
    assert f"expected {len(payload)} bytes, got 1000" in msg and APT_HINT in msg


def test_trailing_bytes_rejected(tmp_path: Path) -> None:
    arrays = make_fmnist(tmp_path)
    write(tmp_path / "t10k-labels-idx1-ubyte",
          idx_bytes(arrays["t10k-labels-idx1-ubyte"], 2049) + b"\0", True)
    assert "t10k-labels-idx1-ubyte" in load_error("fashion-mnist", data_dir=tmp_path)


def test_wrong_magic_rejected(tmp_path: Path) -> None:
    arrays = make_fmnist(tmp_path)
    # a labels file where the images are expected
    write(tmp_path / "t10k-images-idx3-ubyte", idx_bytes(arrays["t10k-labels-idx1-ubyte"], 2049),
          True)
    msg = load_error("fashion-mnist", data_dir=tmp_path)
    assert "t10k-images-idx3-ubyte" in msg and "magic" in msg and "2049" in msg and "2051" in msg


def test_non_ubyte_dtype_rejected(tmp_path: Path) -> None:
    arrays = make_fmnist(tmp_path)
    payload = bytearray(idx_bytes(arrays["train-labels-idx1-ubyte"], 2049))
    payload[2] = 0x0D  # float32
    write(tmp_path / "train-labels-idx1-ubyte", bytes(payload), True)
    assert "magic" in load_error("fashion-mnist", data_dir=tmp_path)


def test_count_mismatch_rejected(tmp_path: Path) -> None:
    make_fmnist(tmp_path, n_train=6)
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros(7, np.uint8), 2049), True)
    msg = load_error("fashion-mnist", data_dir=tmp_path)
    assert "train-labels-idx1-ubyte" in msg and "7 labels" in msg and "6 images" in msg


def test_label_out_of_range_rejected(tmp_path: Path) -> None:
    make_fmnist(tmp_path, n_test=4)
    write(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(np.array([1, 2, 10, 3]), 2049), True)
    msg = load_error("fashion-mnist", data_dir=tmp_path)
    assert "t10k-labels-idx1-ubyte" in msg and "10" in msg and "0..9" in msg


def test_corrupt_gzip_rejected(tmp_path: Path) -> None:
    make_fmnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    msg = load_error("fashion-mnist", data_dir=tmp_path)
    assert "train-images-idx3-ubyte.gz" in msg and APT_HINT in msg


def test_missing_file_and_folder_explain_how_to_install(tmp_path: Path) -> None:
    make_fmnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    msg = load_error("fashion-mnist", data_dir=tmp_path)
    assert "t10k-labels-idx1-ubyte" in msg and APT_HINT in msg
    msg = load_error("fashion-mnist", data_dir=tmp_path / "nowhere")
    assert "nowhere" in msg and APT_HINT in msg


def test_unknown_dataset_lists_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        load_dataset("mnist-ish")
    assert str(info.value) == ("unknown dataset 'mnist-ish'; choose from: cifar10, "
                               "fashion-mnist, synthetic")
    assert DATASETS.names() == ["cifar10", "fashion-mnist", "synthetic"]


# ----------------------------------------------------------------------------- cifar10


def test_cifar10_loads_channel_planes(tmp_path: Path) -> None:
    batches = make_cifar(tmp_path)
    ds = load_dataset("cifar10", data_dir=tmp_path)
    assert ds.train_x.shape == (15, 3, 32, 32) and ds.test_x.shape == (4, 3, 32, 32)
    assert ds.input_shape == (3, 32, 32) and ds.classes == [f"c{i}" for i in range(10)]
    expected_y = sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    assert ds.train_y.tolist() == expected_y
    assert ds.test_y.tolist() == batches["test_batch"][b"labels"]
    row = batches["data_batch_2"][b"data"][1]  # sample 4 overall: R, G, B planes of 32x32
    raw = denorm(ds.train_x, ds)[4]
    for c in range(3):
        plane = torch.from_numpy(row[c * 1024:(c + 1) * 1024].reshape(32, 32)).float() / 255
        assert torch.allclose(raw[c], plane, atol=1e-5)
    assert len(ds.mean) == 3 and len(ds.std) == 3
    per_channel = ds.train_x.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(3), atol=1e-4)
    assert torch.allclose(per_channel.std(1, correction=0), torch.ones(3), atol=1e-4)


def test_cifar10_default_classes_without_meta(tmp_path: Path) -> None:
    make_cifar(tmp_path, meta=False)
    ds = load_dataset("cifar10", data_dir=tmp_path, limit_train=2, limit_test=1)
    assert ds.classes is not None and ds.classes[0] == "airplane"
    assert len(ds.train_x) == 2 and len(ds.test_x) == 1


def test_cifar10_needs_data_dir() -> None:
    msg = load_error("cifar10")
    assert msg.startswith("cifar10 needs --data-dir pointing at the extracted cifar-10-batches-py")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_cifar10_refuses_forbidden_globals_without_executing(tmp_path: Path) -> None:
    make_cifar(tmp_path)
    marker = tmp_path / "pwned"
    with (tmp_path / "data_batch_3").open("wb") as fh:
        pickle.dump({b"data": _Evil(marker), b"labels": [0]}, fh, protocol=2)
    msg = load_error("cifar10", data_dir=tmp_path)
    assert "data_batch_3" in msg and "refuses to unpickle" in msg and ".system" in msg
    assert not marker.exists()


def test_cifar10_refuses_builtin_eval(tmp_path: Path) -> None:
    make_cifar(tmp_path)
    # GLOBAL builtins.eval, called with a string: must be refused before any call
    crafted = b"\x80\x02c__builtin__\neval\nX\x03\x00\x00\x001+1\x85R."
    (tmp_path / "test_batch").write_bytes(crafted)
    msg = load_error("cifar10", data_dir=tmp_path)
    assert "test_batch" in msg and "refuses to unpickle builtins.eval" in msg


def test_cifar10_missing_or_corrupt_batch(tmp_path: Path) -> None:
    make_cifar(tmp_path)
    (tmp_path / "data_batch_4").unlink()
    msg = load_error("cifar10", data_dir=tmp_path)
    assert "data_batch_4" in msg and "not found" in msg
    data = (tmp_path / "data_batch_2").read_bytes()
    make_cifar(tmp_path)
    (tmp_path / "data_batch_2").write_bytes(data[: len(data) // 2])
    msg = load_error("cifar10", data_dir=tmp_path)
    assert "data_batch_2" in msg and "corrupt" in msg


@pytest.mark.parametrize("batch, expect", [
    ({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, "3072"),
    ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "uint8"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "1 labels for 2 images"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "label 10 out of range"),
    ({b"data": np.zeros((2, 3072), np.uint8)}, "b'labels'"),
])
def test_cifar10_invalid_batches(tmp_path: Path, batch: dict[bytes, object], expect: str) -> None:
    make_cifar(tmp_path)
    with (tmp_path / "data_batch_5").open("wb") as fh:
        pickle.dump(batch, fh, protocol=2)
    msg = load_error("cifar10", data_dir=tmp_path)
    assert "data_batch_5" in msg and expect in msg


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_deterministic_by_seed() -> None:
    kw = dict(synthetic_shape=(3, 8, 8), synthetic_sizes=(64, 16), num_classes=4)
    a = load_dataset("synthetic", seed=1, **kw)  # type: ignore[arg-type]
    b = load_dataset("synthetic", seed=1, **kw)  # type: ignore[arg-type]
    c = load_dataset("synthetic", seed=2, **kw)  # type: ignore[arg-type]
    assert a.train_x.shape == (64, 3, 8, 8) and a.test_x.shape == (16, 3, 8, 8)
    assert a.input_shape == (3, 8, 8) and a.num_classes == 4 and len(a.mean) == 3
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_x, c.train_x)
    assert set(a.train_y.tolist()) <= set(range(4)) and len(set(a.train_y.tolist())) > 1


def test_synthetic_is_learnable_by_a_linear_model() -> None:
    ds = load_dataset("synthetic", seed=0, synthetic_shape=(16,), synthetic_sizes=(2000, 500),
                      num_classes=3)
    assert ds.input_shape == (16,)
    x = torch.cat([ds.train_x, torch.ones(len(ds.train_x), 1)], 1)
    w = torch.linalg.lstsq(x, torch.nn.functional.one_hot(ds.train_y, 3).float()).solution
    xt = torch.cat([ds.test_x, torch.ones(len(ds.test_x), 1)], 1)
    accuracy = ((xt @ w).argmax(1) == ds.test_y).float().mean().item()
    assert accuracy > 0.7  # chance is ~0.33


def test_synthetic_pad_to_32() -> None:
    ds = load_dataset("synthetic", pad_to_32=True, synthetic_sizes=(8, 4))
    assert ds.train_x.shape == (8, 1, 32, 32) and ds.input_shape == (1, 32, 32)
    with pytest.raises(SparsebenchError):
        load_dataset("synthetic", pad_to_32=True, synthetic_shape=(1, 27, 27),
                     synthetic_sizes=(8, 4))


# ----------------------------------------------------------------------------- batching


def test_iterate_batches_covers_each_sample_once() -> None:
    x = torch.arange(103, dtype=torch.float32).view(103, 1, 1, 1)
    y = torch.arange(103)
    batches = list(iterate_batches(x, y, 10, shuffle=True,
                                   generator=torch.Generator().manual_seed(0)))
    assert [len(b[1]) for b in batches] == [10] * 10 + [3]
    seen = torch.cat([b[1] for b in batches])
    assert sorted(seen.tolist()) == list(range(103))
    assert seen.tolist() != list(range(103))  # actually shuffled
    assert all(torch.equal(bx.view(-1).long(), by) for bx, by in batches)  # pairs stay together
    again = torch.cat([b[1] for b in iterate_batches(x, y, 10, True,
                                                      torch.Generator().manual_seed(0))])
    assert torch.equal(seen, again)
    plain = torch.cat([b[1] for b in iterate_batches(x, y, 32, shuffle=False)])
    assert plain.tolist() == list(range(103))


def test_augmentation_is_seeded_crop_and_flip() -> None:
    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    y = torch.arange(64)

    def run(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(iterate_batches(x, y, 16, True, torch.Generator().manual_seed(seed),
                                    augment=True))

    a, b, c = run(3), run(3), run(4)
    assert all(ax.shape == (16, 3, 32, 32) for ax, _ in a)
    assert all(torch.equal(ax, bx) and torch.equal(ay, by) for (ax, ay), (bx, by) in zip(a, b))
    assert not all(torch.equal(ax, cx) for (ax, _), (cx, _) in zip(a, c))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    flips = 0
    for ax, ay in a:
        for out, idx in zip(ax, ay):
            matches = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)
                       if torch.equal(out, (lambda crop: crop.flip(-1) if f else crop)(
                           padded[idx, :, dy:dy + 32, dx:dx + 32]))]
            assert matches, "augmented sample is not a crop/flip of its source"
            flips += matches[0][2]
    assert 0 < flips < 64


def test_augment_batch_keeps_non_square_shape() -> None:
    x = torch.rand(5, 1, 28, 20)
    out = augment_batch(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape


# ----------------------------------------------------------------------------- real data


@pytest.mark.dataset
def test_real_fashion_mnist() -> None:
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"Fashion-MNIST not installed ({APT_HINT})")
    ds = load_dataset("fashion-mnist")
    assert len(ds.train_x) == 60000 and len(ds.test_x) == 10000
    assert len(ds.train_y) == 60000 and len(ds.test_y) == 10000
    assert ds.input_shape == (1, 28, 28) and ds.train_x.shape[1:] == (1, 28, 28)
    assert sorted(torch.bincount(ds.train_y).tolist()) == [6000] * 10
    assert ds.mean[0] == pytest.approx(0.2860, abs=1e-3)


def test_limit_train_is_class_balanced_and_the_same_for_every_seed() -> None:
    labels = np.array([3, 3, 3, 0, 1, 3, 0, 2, 1, 0, 2, 2, 1])
    idx = balanced_indices(labels, 8, 4)            # two per class
    assert np.bincount(labels[idx], minlength=4).tolist() == [2, 2, 2, 2]
    assert idx.tolist() == [0, 1, 3, 4, 6, 7, 8, 10]  # the first of each class, in file order
    idx = balanced_indices(labels, 6, 4)            # remainder to the lowest classes
    assert np.bincount(labels[idx], minlength=4).tolist() == [2, 2, 1, 1]
    assert balanced_indices(labels, None, 4).tolist() == list(range(13))
    with pytest.raises(SparsebenchError, match="class 0 has only 3 training samples, 4 needed"):
        balanced_indices(labels, 16, 4)   # capped at 13 samples: 4, 3, 3, 3 wanted
    ds_a = load_dataset("synthetic", seed=0, limit_train=100)
    ds_b = load_dataset("synthetic", seed=0, limit_train=100)
    assert torch.equal(ds_a.train_y, ds_b.train_y)
    counts = torch.bincount(ds_a.train_y, minlength=10).tolist()
    assert counts == [10] * 10
