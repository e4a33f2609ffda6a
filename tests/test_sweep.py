"""`sparsebench sweep`: pruning, crossovers, reports, an end-to-end run, bad inputs; and
`sparsebench build-kernels`."""

from __future__ import annotations

import json

import pytest
import torch

from sparsebench import native
from sparsebench.archs import create_model
from sparsebench.cli import main
from sparsebench.sweep import crossovers, magnitude_prune, markdown, pruned_layers, tables


def test_pruned_layers_skip_the_first_conv_and_the_head() -> None:
    vgg = create_model("vgg11_bn", in_channels=3, input_size=32)
    layers = pruned_layers(vgg)
    assert "features.0" not in layers and "classifier" not in layers and len(layers) == 7
    res = create_model("resnet18", in_channels=3, input_size=32)
    assert "conv1" not in pruned_layers(res) and "fc" not in pruned_layers(res)
    assert "layer2.0.shortcut.0" in pruned_layers(res)
    assert pruned_layers(create_model("ffn", in_channels=1024, input_size=1)) == ["fc1", "fc2"]


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.98])
def test_magnitude_prune_is_exact_per_layer(sparsity: float) -> None:
    torch.manual_seed(0)
    m = create_model("lenet5")
    before = {n: m.get_submodule(n).weight.detach().abs().clone() for n in pruned_layers(m)}
    masks = magnitude_prune(m, sparsity)
    for name, mags in before.items():
        w = m.get_submodule(name).weight.detach()
        assert int((w == 0).sum()) == round(sparsity * w.numel())
        assert bool((masks[f"{name}.weight"] == (w != 0)).all())
        if 0 < sparsity:  # the survivors are the largest magnitudes
            assert float(mags[w != 0].min()) >= float(mags[w == 0].max())
    assert int((m.fc3.weight == 0).sum()) == 0  # the head stays dense


def _doc(times: dict[tuple[str, str], dict[float, float]]) -> dict:
    rows, sparsity_of = [], {}
    for (fmt, backend), points in times.items():
        for p, ms in points.items():
            name = f"m-s{p:g}"
            sparsity_of[name] = p
            rows.append({"model": name, "format": fmt, "backend": backend, "batch": 1,
                         "threads": 1, "status": "ok", "impl": backend,
                         "latency_ms": {"p50": ms}, "achieved_gbps": 10.0 if backend ==
                         "native" else None, "achieved_gflops": 5.0 if backend == "native"
                         else None})
    return {"rows": rows, "sweep": {"name": "m", "sparsity_of": sparsity_of,
                                    "pruned_layers": ["fc1"]},
            "machine": {}, "versions": {}, "roofline": {"copy_gbps": 20.0,
                                                         "gemm_gflops": {"1": 100.0}}}


def test_crossover_is_the_lowest_sparsity_from_which_it_stays_faster() -> None:
    doc = _doc({("dense", "onnxruntime"): {0: 1.0, 50: 1.0, 70: 1.0, 90: 1.0},
                ("csr", "native"): {0: 3.0, 50: 0.9, 70: 1.2, 90: 0.3},
                ("dense", "torch"): {0: 2.0, 50: 2.0, 70: 2.0, 90: 2.0}})
    by = {c["backend"]: c for c in crossovers(doc)}
    assert by["native"]["crossover"] == 90 and by["native"]["first_faster"] == 50
    assert by["native"]["max_speedup"] == pytest.approx(1 / 0.3)
    assert by["torch"]["crossover"] is None and "onnxruntime" not in by
    text = markdown(doc)
    assert "| csr/native | 1 | 1 | 90% | 50% | 3.33x |" in text
    roof = dict((t[0], t) for t in tables(doc))
    assert any("50%" in line[6] for line in roof[next(k for k in roof if "roofline" in k)][2])


def test_sweep_end_to_end(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    out, md, png, models = (tmp_path / "s.json", tmp_path / "s.md", tmp_path / "s.png",
                            tmp_path / "models")
    backends = "onnxruntime" + (",native" if native.available() is None else "")
    rc = main(["sweep", "--arch", "lenet300", "--sparsities", "0,90", "--backends", backends,
               "--min-calls", "3", "--min-time", "0.01", "--warmup", "1", "--json", str(out),
               "--markdown", str(md), "--plot", str(png), "--save-models", str(models)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["sweep"]["sparsity_of"] == {"lenet300-s0": 0, "lenet300-s90": 90}
    assert len(doc["rows"]) == 2 * len(backends.split(","))
    assert all(r["status"] == "ok" for r in doc["rows"])
    assert png.read_bytes()[:4] == b"\x89PNG" and "### crossover" in md.read_text()
    assert sorted(p.name for p in models.iterdir()) == ["lenet300-s0.pt", "lenet300-s90.pt"]
    if "native" in backends:
        row = next(r for r in doc["rows"] if r["backend"] == "native")
        assert row["achieved_gbps"] > 0 and row["achieved_gflops"] > 0
        assert doc["roofline"]["copy_gbps"] > 0
        # speedups (and so crossovers) leave rows flagged noisy out (a busy machine)
        sp = doc["sweep"]["sparsity_of"]
        quiet = {(r["format"], r["backend"], sp[r["model"]]) for r in doc["rows"]
                 if not r.get("noise")}
        assert bool(doc["sweep"]["crossovers"]) == any(
            ("dense", "onnxruntime", p) in quiet for f, b, p in quiet if b == "native")
    # the saved checkpoints are measurable on their own
    ckpt = torch.load(models / "lenet300-s90.pt", weights_only=True)
    zeros = float((ckpt["state_dict"]["fc1.weight"] == 0).float().mean())
    assert zeros == pytest.approx(0.9, abs=1e-3)


@pytest.mark.parametrize("argv,message", [
    (["sweep"], "give a model file or --arch"),
    (["sweep", "--arch", "lenet5", "x.pt"], "model file not found: x.pt"),
    (["sweep", "--arch", "lenet5", "--target", "prune-x"], "unknown target 'prune-x'"),
    (["sweep", "--arch", "lenet5", "--granularity", "block"], "unknown granularity"),
    (["sweep", "--arch", "lenet5", "--sparsities", "-5"], "percentages"),
    (["sweep", "--arch", "torchvision:"], "unknown architecture"),
    (["sweep", "--arch", "nope"], "unknown architecture"),
    (["sweep", "--arch", "lenet5", "--sparsities", "10,100"], "percentages"),
    (["sweep", "--arch", "lenet5", "--sparsities", "a"], "percentages"),
    (["sweep", "--arch", "lenet5", "--backends", "nope", "--no-plot"], "unknown backend"),
])
def test_sweep_bad_inputs(argv: list[str], message: str, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_build_kernels_reports_or_explains(monkeypatch, capsys) -> None:
    if native.available() is None:
        assert main(["build-kernels", "--check"]) == 0
        assert "self-test ok" in capsys.readouterr().out
    monkeypatch.setenv("SPARSEBENCH_NO_NATIVE", "1")
    assert main(["build-kernels"]) == 2
    assert "SPARSEBENCH_NO_NATIVE" in capsys.readouterr().err


def test_sweep_of_a_model_file(tmp_path) -> None:
    from sparsebench.checkpoint import save_checkpoint
    from sparsebench.sweep import make_models

    torch.manual_seed(0)
    m = create_model("lenet300")
    path = tmp_path / "mine.pt"
    save_checkpoint({"arch": "lenet300", "arch_kwargs": {}, "input_shape": [1, 28, 28],
                     "state_dict": m.state_dict()}, path)

    class Args:
        arch, model, input_shape, trust, seed = None, str(path), None, False, 0

    base, paths, trust = make_models(Args(), [0.0, 50.0], tmp_path / "out")
    assert base == "mine" and not trust and sorted(paths.values()) == [0.0, 50.0]
    pruned = torch.load(next(p for p, s in paths.items() if s == 50.0), weights_only=True)
    assert float((pruned["state_dict"]["fc2.weight"] == 0).float().mean()) == 0.5

