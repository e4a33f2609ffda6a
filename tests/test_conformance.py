"""Every backend x format x architecture from the registries against the oracle.

A new backend, format or architecture is tested here for free: each supported combination
must match the reference evaluator's output (``sparsebench.graph.reference``, numpy) of the
dense model on the same input; a combination the backend does not execute must say so with
``Unsupported``; the known gaps are named in ``SKIPS`` with their reason.
"""

from __future__ import annotations

import functools
import re

import pytest
import torch

from conftest import pruned_small, rel_err
from sparsebench.archs import ARCHS
from sparsebench.backends import BACKENDS, Unsupported, get_backend
from sparsebench.formats import FORMATS, convert
from sparsebench.graph import from_module
from sparsebench.graph.reference import output

# (backend, format) -> the reason the backend gives for not running it (a regex)
SKIPS = {
    ("torch-sparse", "bsr-1x4"): "non-square blocks",
    ("torch-sparse", "bsr-16x1"): "non-square blocks",
}
BATCH = 2


@functools.lru_cache(maxsize=None)
def _converted(arch: str, fmt: str):
    return convert(pruned_small(arch), fmt)


@functools.lru_cache(maxsize=None)
def _case(arch: str) -> tuple[torch.Tensor, torch.Tensor]:
    m = pruned_small(arch)
    x = torch.rand(BATCH, *m.input_shape, generator=torch.Generator().manual_seed(1))
    return x, torch.from_numpy(output(from_module(m, m.input_shape), x))


@pytest.mark.parametrize("arch", ARCHS.names())
@pytest.mark.parametrize("fmt", FORMATS.names())
@pytest.mark.parametrize("backend", BACKENDS.names())
def test_backend_format_arch_matches_the_reference(backend: str, fmt: str, arch: str) -> None:
    b = get_backend(backend)
    if b.unavailable():
        pytest.skip(f"{backend} unavailable here: {b.unavailable()}")
    if not b.supports(fmt):
        with pytest.raises(Unsupported, match="does not execute format"):
            b.prepare(_converted(arch, fmt), batch=BATCH)
        return
    x, want = _case(arch)
    if (backend, fmt) in SKIPS:
        with pytest.raises(Unsupported) as info:
            b.prepare(_converted(arch, fmt), batch=BATCH).run(x)
        assert re.search(SKIPS[(backend, fmt)], str(info.value)), info.value
        return
    prepared = b.prepare(_converted(arch, fmt), batch=BATCH)
    assert prepared.impl
    with torch.inference_mode():
        got = prepared.run(x)
    assert tuple(got.shape) == tuple(want.shape)
    assert rel_err(got, want) <= 1e-4, prepared.impl
