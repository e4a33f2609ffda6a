"""`--arch torchvision:NAME` / `--arch timm:NAME`: zoo architectures with random weights for
measure, sweep and profile where those libraries import (the second venv of .ci/zoo), and a
one-line install hint where they do not (the default venv)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sparsebench.cli import main


def _imports(lib: str) -> bool:
    try:
        __import__(lib)
        return True
    except Exception:  # noqa: BLE001 - a mismatched torchvision fails in many ways
        return False


HAVE_ZOO = _imports("torchvision") and _imports("timm")
needs_zoo = pytest.mark.skipif(not HAVE_ZOO, reason="torchvision and timm do not import here "
                               "(bash .ci/zoo runs these tests in a venv where they do)")
QUICK = ["--min-calls", "2", "--min-time", "0.01", "--warmup", "1"]


@pytest.mark.skipif(HAVE_ZOO, reason="torchvision and timm import here")
@pytest.mark.parametrize("argv", [
    ["measure", "--arch", "torchvision:resnet18", "--data", "none"],
    ["sweep", "--arch", "timm:resnet18", "--no-plot"],
    ["sweep", "--arch", "torchvision:resnet18", "--no-plot"],
    ["profile", "--arch", "torchvision:resnet18", "--target", "cortex-a53"],
])
def test_without_the_zoo_one_line_says_how_to_install(argv: list[str], capsys,
                                                      tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "does not import here" in err
    assert "pip install torch==2.14.1 torchvision==0.29.1 timm" in err
    assert list(tmp_path.iterdir()) == []


@needs_zoo
def test_zoo_architectures_are_built_at_their_input_size_with_nothing_downloaded(
        tmp_path: Path, monkeypatch) -> None:
    from sparsebench.archs import create_model, default_input

    for var in ("TORCH_HOME", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.setenv(var, str(tmp_path / var))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert default_input("torchvision:resnet50") == (3, 224)
    assert default_input("torchvision:inception_v3") == (3, 299)
    assert default_input("timm:vit_tiny_patch16_224") == (3, 224)
    torch.manual_seed(0)
    a = create_model("torchvision:resnet18")
    torch.manual_seed(1)
    b = create_model("timm:resnet18")
    assert a.input_shape == b.input_shape == (3, 224, 224)
    assert not torch.equal(a.conv1.weight, b.conv1.weight)  # random, not pretrained, weights
    with torch.no_grad():
        assert a(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)  # their own head
    assert create_model("timm:resnet18", in_channels=1, num_classes=10).conv1.in_channels == 1
    assert list(tmp_path.iterdir()) == []  # no cache folder was even created
    # weights a zoo initialises to zero are drawn anew: every layer reaches the output
    assert bool(b.layer1[0].bn2.weight.all())  # timm zero-inits each block's last BatchNorm
    vit = create_model("torchvision:vit_b_16")
    assert bool(vit.heads.head.weight.any())  # torchvision zero-inits the ViT head


@needs_zoo
@pytest.mark.parametrize("name,message", [
    ("torchvision:resnet5", "unknown torchvision architecture 'resnet5'; close: resnet50"),
    ("timm:no_such_net", "unknown timm architecture 'no_such_net'"),
])
def test_unknown_zoo_names_are_one_line(name: str, message: str, capsys) -> None:
    assert main(["measure", "--arch", name, "--data", "none"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@needs_zoo
def test_measure_a_torchvision_architecture(tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    assert main(["measure", "--arch", "torchvision:mobilenet_v3_small", "--formats", "dense,csr",
                 "--backends", "torch,onnxruntime", "--data", "none", "--json", str(out),
                 *QUICK]) == 0
    doc = json.loads(out.read_text())
    (model,) = doc["models"].values()
    assert model["arch"] == "torchvision:mobilenet_v3_small"
    assert model["input_shape"] == [3, 224, 224]
    rows = doc["rows"]
    assert {r["status"] for r in rows} <= {"ok", "skipped"} and rows[0]["status"] == "ok"
    assert all(r["reason"] for r in rows if r["status"] == "skipped")
    assert all(r["max_rel_err"] <= 1e-4 for r in rows if r["status"] == "ok")


@needs_zoo
def test_sweep_and_profile_a_timm_architecture(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "s.json"
    assert main(["sweep", "--arch", "timm:resnet18", "--sparsities", "90", "--formats",
                 "dense,csr", "--backends", "torch,onnxruntime", "--no-plot", "--json",
                 str(out), "--save-models", "pruned", *QUICK]) == 0
    doc = json.loads(out.read_text())
    assert doc["sweep"]["sparsity_of"] == {"timm-resnet18-s90": 90}
    assert {r["status"] for r in doc["rows"]} == {"ok"}
    assert all(r["max_rel_err"] <= 1e-4 for r in doc["rows"])
    ckpt = torch.load(tmp_path / "pruned" / "timm-resnet18-s90.pt", weights_only=True)
    w = ckpt["state_dict"]["layer1.0.conv1.weight"]
    assert int((w == 0).sum()) == round(0.9 * w.numel())
    assert main(["profile", str(tmp_path / "pruned" / "timm-resnet18-s90.pt"), "--target",
                 "cortex-a53", "--no-host", "--no-accuracy"]) in (0, 1)
    assert main(["profile", "--arch", "torchvision:mobilenet_v3_small", "--target",
                 "cortex-a53", "--no-host", "--no-accuracy", "--json",
                 str(tmp_path / "p.json")]) in (0, 1)
    assert json.loads((tmp_path / "p.json").read_text())["model"]["input_shape"] == [3, 224, 224]


@needs_zoo
def test_a_state_dict_of_a_zoo_architecture(tmp_path: Path) -> None:
    from sparsebench.archs import create_model
    from sparsebench.loading import load_model

    torch.manual_seed(0)
    model = create_model("torchvision:resnet18")
    path = tmp_path / "r18.pt"
    torch.save(model.state_dict(), path)
    loaded = load_model(path, arch="torchvision:resnet18")
    assert loaded.kind == "state-dict" and loaded.input_shape == (3, 224, 224)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded.module(x), model(x))
