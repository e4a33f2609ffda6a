"""`sparsebench measure`: timing statistics, the results file, bad inputs, an end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sparsebench.archs import create_model
from sparsebench.backends import get_backend
from sparsebench.checkpoint import save_checkpoint
from sparsebench.cli import main
from sparsebench.measure.harness import DEFAULT_FORMATS
from sparsebench.measure.results import ResultsFile, load_results
from sparsebench.measure.timing import TimingPolicy, latency_stats_ms, percentile, time_calls


def test_latency_stats_known_answers():
    samples = [1_000_000 * v for v in (5, 1, 4, 2, 3)]   # 1..5 ms
    stats = latency_stats_ms(samples)
    assert stats["p50"] == 3.0 and stats["min"] == 1.0 and stats["mean"] == 3.0
    assert stats["p90"] == pytest.approx(4.6) and stats["p99"] == pytest.approx(4.96)
    assert stats["std"] == pytest.approx(2 ** 0.5)
    assert percentile([10.0], 50) == 10.0


def test_time_calls_honours_min_calls_and_warmup():
    calls = []
    samples = time_calls(lambda: calls.append(1), TimingPolicy(warmup_calls=4, warmup_seconds=0,
                                                              min_calls=7, min_seconds=0))
    assert len(samples) == 7 and len(calls) == 11
    assert all(isinstance(s, int) and s >= 0 for s in samples)


def test_results_file_is_rewritten_after_every_row(tmp_path):
    path = tmp_path / "r.json"
    results = ResultsFile(path, config={"x": 1})
    results.add({"model": "m", "format": "dense", "backend": "torch", "batch": 1, "threads": 1,
                 "status": "ok", "max_abs_err": float("nan")})
    doc = load_results(path)
    assert doc["schema"] == "sparsebench-results" and doc["schema_version"] == 1
    assert len(doc["rows"]) == 1 and doc["rows"][0]["max_abs_err"] == "nan"
    assert {"cpu", "isa", "logical_cores"} <= set(doc["machine"])
    assert "torch" in doc["versions"] and "git_commit" in doc


def _lenet5_checkpoint(path: Path, sparsity_rows: int = 60) -> Path:
    torch.manual_seed(0)
    model = create_model("lenet5")
    masks = {"fc1.weight": torch.ones_like(model.fc1.weight, dtype=torch.bool),
             "fc1.bias": torch.ones_like(model.fc1.bias, dtype=torch.bool)}
    masks["fc1.weight"][:sparsity_rows] = False
    masks["fc1.bias"][:sparsity_rows] = False
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["fc1.weight"][:sparsity_rows] = 0
    state["fc1.bias"][:sparsity_rows] = 0
    save_checkpoint({"arch": "lenet5", "arch_kwargs": {"in_channels": 1, "input_size": 28,
                                                       "num_classes": 10, "dropout": 0.0},
                     "input_shape": [1, 28, 28], "state_dict": state, "masks": masks,
                     "unit_masks": {"fc1": masks["fc1.bias"].clone()}, "method": "prune-l",
                     "dataset": {"name": "synthetic"}, "seed": 0}, path)
    return path


FAST = ["--min-calls", "3", "--min-time", "0", "--warmup", "1", "--data", "none"]


def test_measure_end_to_end_json_rows(tmp_path, capsys):
    ckpt = _lenet5_checkpoint(tmp_path / "lenet.pt")
    out = tmp_path / "out.json"
    md = tmp_path / "out.md"
    code = main(["measure", str(ckpt), "--json", str(out), "--markdown", str(md),
                 "--backends", "torch,torch-sparse,scipy,onnxruntime", *FAST])
    text = capsys.readouterr().out
    assert code == 0
    doc = load_results(out)
    rows = doc["rows"]
    status = {(r["format"], r["backend"]): r["status"] for r in rows}
    backends = ["torch", "torch-sparse", "scipy", "onnxruntime"]
    expected = {(f, b) for f in DEFAULT_FORMATS for b in backends
                if get_backend(b).supports(f)}   # every combination the registries promise
    assert expected and {k: status.get(k) for k in expected} == {k: "ok" for k in expected}
    assert all(status[k] == "skipped" for k in set(status) - expected)   # with a reason
    for r in rows:
        for key in ("model", "format", "backend", "impl", "batch", "threads", "status", "reason",
                    "latency_ms", "samples", "peak_rss_bytes", "weight_bytes", "max_abs_err",
                    "accuracy"):
            assert key in r, key
        assert r["status"] in ("ok", "skipped")
        if r["status"] == "ok":
            assert r["max_rel_err"] <= 1e-4, r
            assert set(r["latency_ms"]) == {"p10", "p50", "p90", "p99", "mean", "std", "min"}
            assert r["samples"] == len(r["samples_ns"]) >= 3
            assert r["impl"] and r["weight_bytes"] > 0
            assert r["peak_rss_bytes"] is None or r["peak_rss_bytes"] >= 0
    info = doc["models"]["lenet"]
    # fc1 lost 60 of 120 rows: structured has exactly the masked model's nonzero count
    assert info["formats"]["structured"]["params"] == info["formats"]["structured"][
        "nonzero_params"] or info["formats"]["structured"]["params"] < info["params"]
    assert "models side by side" in text and md.read_text().startswith("Machine:")


@pytest.mark.parametrize("args,message", [
    (["{missing}"], "not found"),
    (["{dir}"], "is a directory"),
    (["{empty}"], "is empty"),
    (["{ckpt}", "--batch", "0"], "batch sizes must be at least 1"),
    (["{ckpt}", "--threads", "0"], "thread counts must be at least 1"),
    (["{ckpt}", "--formats", "coo"], "unknown format 'coo'; choose from:"),
    (["{ckpt}", "--backends", "tvm"], "unknown backend 'tvm'; choose from:"),
    (["{truncated}"], "corrupt or truncated"),
    (["{junk}"], "neither"),
    (["{state_dict}"], "--arch"),
    (["{evil}"], "--trust"),
    (["{ckpt}", "--input-shape", "a,b"], "input shape"),
])
def test_measure_bad_input_one_line_exit_2(tmp_path, capsys, args, message):
    ckpt = _lenet5_checkpoint(tmp_path / "c.pt")
    (tmp_path / "d").mkdir()
    (tmp_path / "empty.pt").write_bytes(b"")
    data = ckpt.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.bin").write_bytes(b"\x00\x01 this is not a model at all" * 10)
    torch.save(create_model("lenet5").state_dict(), tmp_path / "sd.pt")
    torch.save({"obj": Path("x")}, tmp_path / "evil.pt")
    paths = {"missing": tmp_path / "nope.pt", "dir": tmp_path / "d",
             "empty": tmp_path / "empty.pt", "ckpt": ckpt, "truncated": tmp_path / "trunc.pt",
             "junk": tmp_path / "junk.bin", "state_dict": tmp_path / "sd.pt",
             "evil": tmp_path / "evil.pt"}
    out = tmp_path / "out.json"
    code = main(["measure", *[a.format(**paths) for a in args], "--json", str(out), *FAST])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_onnx_input_with_unknown_shape_needs_input_shape(tmp_path, capsys):
    model = create_model("lenet300").eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (torch.randn(1, 1, 28, 28),), str(path), dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "N", 2: "H", 3: "W"}})
    code = main(["measure", str(path), *FAST])
    err = capsys.readouterr().err
    assert code == 2 and "--input-shape" in err and err.count("\n") == 1


def test_state_dict_with_arch_and_100_percent_pruned_layer(tmp_path, capsys):
    model = create_model("lenet300")
    with torch.no_grad():
        model.fc2.weight.zero_()
        model.fc2.bias.zero_()
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    out = tmp_path / "o.json"
    code = main(["measure", str(tmp_path / "sd.pt"), "--arch", "lenet300", "--input-shape",
                 "1,28,28", "--json", str(out), "--backends", "torch,scipy,torch-sparse", *FAST])
    assert code == 0, capsys.readouterr().err
    rows = load_results(out)["rows"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) >= 5 and all(r["max_rel_err"] <= 1e-4 for r in ok)


def test_nan_weights_warn_in_report(tmp_path, capsys):
    model = create_model("lenet300")
    with torch.no_grad():
        model.fc3.weight[0, 0] = float("nan")
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    out = tmp_path / "o.json"
    code = main(["measure", str(tmp_path / "sd.pt"), "--arch", "lenet300", "--input-shape",
                 "1,28,28", "--json", str(out), "--backends", "torch", "--formats", "dense",
                 *FAST])
    text = capsys.readouterr().out
    assert code == 0 and "non-finite weights in fc3" in text
    doc = json.loads(out.read_text())
    assert doc["models"]["sd"]["nonfinite_layers"] == ["fc3"]


def test_torchscript_runs_dense_as_given_and_sparse_from_its_graph(tmp_path, capsys):
    path = tmp_path / "ts.pt"
    torch.jit.script(create_model("lenet5").eval()).save(str(path))
    out = tmp_path / "o.json"
    code = main(["measure", str(path), "--input-shape", "1,28,28", "--formats", "dense,csr",
                 "--backends", "torch,onnxruntime,scipy", "--per-layer", "--json", str(out),
                 *FAST])
    assert code == 0, capsys.readouterr().err
    rows = {(r["format"], r["backend"]): r for r in load_results(out)["rows"]}
    assert rows[("dense", "torch")]["status"] == "ok"
    assert rows[("dense", "torch")]["max_rel_err"] == 0.0
    assert "per-layer timing unavailable" in rows[("dense", "torch")]["warnings"][0]
    assert rows[("dense", "onnxruntime")]["status"] == "ok"
    assert rows[("csr", "scipy")]["status"] == "ok"  # its graph, exported to ONNX, converted
    assert rows[("csr", "scipy")]["max_rel_err"] <= 1e-4
    assert rows[("csr", "scipy")]["layers"] == {"converted": 5, "total": 5, "dense": {}}
