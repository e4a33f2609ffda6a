"""End to end: every zoo model through the main (format, backend) executions, batch 1 and 32.

The timed call is ``Prepared.run(x)``, the same call ``sparsebench measure`` times.
"""

from __future__ import annotations

import pytest

from conftest import zoo_ids

EXECUTIONS = [("dense", "torch"), ("structured", "torch"), ("csr", "scipy"),
              ("csr", "torch-sparse"), ("csr", "native"), ("dense", "onnxruntime")]


@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("fmt,backend", EXECUTIONS, ids=[f"{f}-{b}" for f, b in EXECUTIONS])
@pytest.mark.parametrize("model", zoo_ids())
def test_zoo_model(benchmark, prepare, model, fmt, backend, batch):
    prepared, x = prepare(model, fmt, backend, batch)
    benchmark.group = f"{model} b{batch}"
    benchmark.extra_info["impl"] = prepared.impl
    benchmark(prepared.run, x)
