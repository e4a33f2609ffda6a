"""The shared model graph: importers (torch.fx, ONNX, TorchScript), passes, the reference
evaluator, and profile/export-c reading ONNX and TorchScript the same as a checkpoint."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from sparsebench.archs import ARCHS, create_model
from sparsebench.backends.onnxrt import export_onnx
from sparsebench.checkpoint import save_checkpoint
from sparsebench.cli import main
from sparsebench.embedded.export_c import export_c
from sparsebench.formats.fold import fold_batchnorm
from sparsebench.graph import from_module
from sparsebench.graph.onnx_torch import to_torch
from sparsebench.graph.passes import fold_batchnorm as fold_graph
from sparsebench.graph.passes import fuse_activations
from sparsebench.graph.reference import output
from sparsebench.embedded.summary import profile_model, to_dict
from sparsebench.embedded.targets import load_target


def _pruned(arch: str) -> nn.Module:
    """A registry model with 80% of its weights zero and BatchNorm statistics that matter."""
    torch.manual_seed(0)
    m = create_model(arch).eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                mod.weight[torch.rand_like(mod.weight) < 0.8] = 0
    return m


def _onnx(m: nn.Module) -> nn.Module:
    return to_torch(onnx.load_from_string(export_onnx(m, m.input_shape)))


@pytest.mark.parametrize("arch", ARCHS.names())
def test_reference_matches_torch_before_and_after_the_passes(arch: str) -> None:
    m = _pruned(arch)
    x = torch.rand(2, *m.input_shape)
    with torch.no_grad():
        want = m(x).numpy()
    for module in (m, _onnx(m)):
        g = from_module(module, m.input_shape)
        assert all(v.shape is not None for k, v in g.values.items() if k == g.output)
        np.testing.assert_allclose(output(g, x), want, rtol=1e-4, atol=1e-5)
        fuse_activations(fold_graph(g))
        assert not any(n.kind == "batchnorm" for n in g.nodes)
        np.testing.assert_allclose(output(g, x), want, rtol=1e-4, atol=1e-5)


def test_graph_kinds_and_shapes_of_a_cnn() -> None:
    m = create_model("lenet5").eval()
    g = from_module(m, m.input_shape)
    kinds = [n.kind for n in g.nodes]
    assert kinds[:4] == ["conv", "relu", "maxpool", "conv"] and "flatten" in kinds
    conv = g.nodes[0]
    assert conv.module == "conv1" and g.values[conv.output].shape == (1, 6, 28, 28)
    assert g.values[conv.output].dtype == "float32"


def test_module_fold_and_graph_fold_agree() -> None:
    m = _pruned("vgg11_bn")
    g = fold_graph(from_module(m, m.input_shape))
    folded = fold_batchnorm(m)
    for node in g.nodes:
        if node.kind == "conv":
            w = folded.get_submodule(node.module).weight
            torch.testing.assert_close(node.weights["weight"], w)


@pytest.mark.parametrize("arch", ["lenet5", "vgg11_bn", "resnet18"])
def test_profile_reads_onnx_and_torchscript_like_the_module(arch: str) -> None:
    m = _pruned(arch)
    target = load_target("cortex-a72")
    want = to_dict(profile_model(m, m.input_shape, target))
    others = [_onnx(m)]
    if arch == "lenet5":
        others.append(torch.jit.trace(m, torch.zeros(1, *m.input_shape)))
    for other in others:
        got = to_dict(profile_model(other, m.input_shape, target))
        assert got["totals"] == want["totals"]
        assert [o["kind"] for o in got["ops"]] == [o["kind"] for o in want["ops"]]
        assert got["verdict"] == want["verdict"]


def _checkpoint(m: nn.Module, path) -> None:
    save_checkpoint({"arch": "lenet5", "arch_kwargs": {"in_channels": 1, "input_size": 28,
                                                       "num_classes": 10, "dropout": 0.0},
                     "input_shape": [1, 28, 28], "state_dict": m.state_dict()}, path)


def test_cli_profile_and_export_c_on_onnx_match_the_checkpoint(tmp_path, capsys) -> None:
    m = _pruned("lenet5")
    _checkpoint(m, tmp_path / "m.pt")
    (tmp_path / "m.onnx").write_bytes(export_onnx(m, m.input_shape))
    profiles = []
    for f in ("m.pt", "m.onnx"):
        code = main(["profile", str(tmp_path / f), "--target", "cortex-a72", "--no-host",
                     "--json", str(tmp_path / f"{f}.json")])
        assert code == 0
        profiles.append(json.loads((tmp_path / f"{f}.json").read_text()))
    assert profiles[0]["totals"] == profiles[1]["totals"]
    sizes = []
    for f in ("m.pt", "m.onnx"):
        assert main(["export-c", str(tmp_path / f), "--out", str(tmp_path / f"c-{f}")]) == 0
        header = (tmp_path / f"c-{f}" / "sb_model.h").read_text().splitlines()
        sizes.append([line.split("/*")[0] for line in header if line.startswith("#define SB_")])
    assert sizes[0] == sizes[1] and len(sizes[0]) == 5   # input, output, arena, weight bytes


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_export_c_of_an_onnx_cnn_with_batchnorm_runs(tmp_path) -> None:
    import subprocess

    class Small(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.fc = nn.Linear(8 * 4 * 4, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
            return self.fc(torch.flatten(y, 1))

    m = Small().eval()
    with torch.no_grad():
        m.bn.running_var.uniform_(0.5, 2.0)
        m.bn.running_mean.uniform_(-0.5, 0.5)
    imported = to_torch(onnx.load_from_string(export_onnx(m, (3, 8, 8))))
    a = export_c(m, (3, 8, 8), tmp_path / "a")
    b = export_c(imported, (3, 8, 8), tmp_path / "b")
    assert (a.weight_bytes, a.arena.size) == (b.weight_bytes, b.arena.size)
    subprocess.run(["make", "-s", "-C", str(tmp_path / "b")], check=True, capture_output=True)
    proc = subprocess.run([str(tmp_path / "b" / "sb_test")], capture_output=True, text=True)
    assert proc.returncode == 0 and "PASS" in proc.stdout


@pytest.mark.parametrize("arch", ARCHS.names())
def test_layer_chains_from_the_graph_agree_with_the_declared_ones(arch: str) -> None:
    from sparsebench.archs import prunable_layers, small_model
    from sparsebench.graph.analysis import layer_chains

    m = small_model(arch).eval()
    got = {c.layer: (c.bn, c.consumer) for c in layer_chains(from_module(m, m.input_shape))}
    for p in prunable_layers(m):
        if p.consumer is not None:
            assert got[p.name] == (p.bn, p.consumer)


@pytest.mark.parametrize("arch", ["lenet5", "vgg11_bn", "resnet18"])
def test_structured_compacts_an_onnx_import_like_the_checkpoint(arch: str) -> None:
    from conftest import pruned_small
    from sparsebench.formats import convert

    m = pruned_small(arch)            # whole units pruned: structured removes them
    imported = _onnx(m)
    imported.input_shape = m.input_shape
    a, b = convert(m, "structured"), convert(imported, "structured")
    assert [s.shape for s in a.storage] == [s.shape for s in b.storage]
    assert sum(s.numel for s in a.storage) < sum(mod.weight.numel() for mod in m.modules()
                                                 if isinstance(mod, (nn.Conv2d, nn.Linear)))
    x = torch.randn(2, *m.input_shape)
    with torch.no_grad():
        torch.testing.assert_close(b.module(x), m(x), rtol=1e-4, atol=1e-5)
