"""Shared fixtures of the pytest-benchmark suite (see benchmarks/README.md).

Everything runs on one thread (torch, BLAS, native kernels) unless a test says otherwise, with
inputs and prepared executions built outside the timed call, like ``sparsebench measure``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
ZOO = sorted((ROOT / "models").glob("*.pt"))


def pytest_configure(config: Any) -> None:
    import torch

    torch.set_num_threads(1)


def zoo_ids() -> list[str]:
    return [p.stem for p in ZOO]


@pytest.fixture(scope="session")
def load_zoo() -> Callable[[str], Any]:
    """Zoo checkpoint stem -> LoadedModel (cached)."""
    from sparsebench.loading import load_model

    cache: dict[str, Any] = {}

    def load(stem: str) -> Any:
        if stem not in cache:
            path = ROOT / "models" / f"{stem}.pt"
            if not path.exists():
                pytest.skip(f"zoo model {path.name} is not in models/")
            cache[stem] = load_model(path)
        return cache[stem]
    return load


@pytest.fixture(scope="session")
def prepare(load_zoo: Callable[[str], Any]) -> Callable[..., tuple[Any, Any]]:
    """(zoo stem, format, backend, batch) -> (Prepared, input); skips what cannot run here."""
    import torch

    from sparsebench.backends import BACKENDS, Unsupported, get_backend
    from sparsebench.formats import convert

    def make(stem: str, fmt: str, backend: str, batch: int = 1) -> tuple[Any, Any]:
        if backend not in BACKENDS.names():
            pytest.skip(f"backend {backend} is not registered")
        b = get_backend(backend)
        if b.unavailable():
            pytest.skip(b.unavailable())
        loaded = load_zoo(stem)
        converted = convert(loaded.module, fmt)
        try:
            prepared = b.prepare(converted, threads=1, batch=batch)
        except Unsupported as exc:
            pytest.skip(str(exc))
        x = torch.randn((batch, *loaded.input_shape), generator=torch.Generator().manual_seed(0))
        prepared.run(x)
        return prepared, x
    return make
