"""Without the compiled kernels (no compiler, SPARSEBENCH_NO_NATIVE=1, a failed build) the
`native` backend is a skipped row with the loader's reason; everything else still runs."""

from __future__ import annotations

import json

import torch

from sparsebench.archs import create_model
from sparsebench.checkpoint import save_checkpoint
from sparsebench.cli import main


def test_measure_skips_native_rows_with_the_reason(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SPARSEBENCH_NO_NATIVE", "1")  # inherited by the worker processes
    torch.manual_seed(0)
    model = create_model("lenet300")
    ckpt = tmp_path / "m.pt"
    save_checkpoint({"arch": "lenet300", "arch_kwargs": {}, "input_shape": [1, 28, 28],
                     "state_dict": model.state_dict()}, ckpt)
    out = tmp_path / "r.json"
    rc = main(["measure", str(ckpt), "--formats", "dense,csr,structured", "--backends",
               "torch,native", "--min-calls", "3", "--min-time", "0.01", "--warmup", "1",
               "--data", "none", "--json", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    native_rows = [r for r in doc["rows"] if r["backend"] == "native"]
    assert len(native_rows) == 2  # csr and structured
    for row in native_rows:
        assert row["status"] == "skipped"
        assert "SPARSEBENCH_NO_NATIVE" in row["reason"]
        assert row["achieved_gbps"] is None and row["achieved_gflops"] is None
    torch_row = next(r for r in doc["rows"] if r["backend"] == "torch")
    assert torch_row["status"] == "ok" and torch_row["traffic_source"] == "weights+io"
    assert torch_row["roofline_bw_frac"] > 0  # every ok row is set against the ceilings
