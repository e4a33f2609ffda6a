"""Converting a zoo model to each storage format (setup cost, not inference)."""

from __future__ import annotations

import pytest

FORMATS = ["dense", "structured", "csr", "bsr"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_convert_lenet5_prune_l(benchmark, load_zoo, fmt):
    from sparsebench.formats import convert

    module = load_zoo("lenet5_prune_l").module
    converted = benchmark(convert, module, fmt)
    benchmark.extra_info["weight_bytes"] = converted.weight_bytes
