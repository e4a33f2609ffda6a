"""Model loading: ONNX (converted to torch), TorchScript, checkpoints, state_dicts, pickles."""

from __future__ import annotations

import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from sparsebench.archs import ARCHS, create_model, small_model
from sparsebench.checkpoint import save_checkpoint
from sparsebench.errors import SparsebenchError
from sparsebench.loading import load_model, parse_input_shape
from sparsebench.graph.onnx_torch import SUPPORTED, Unsupported, to_torch

def one_line_error(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(SparsebenchError, match=match) as info:
        fn(*args, **kwargs)
    text = str(info.value)
    assert text and "\n" not in text, text
    return text


def randomize_bn(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.copy_(torch.rand(mod.num_features, generator=gen) + 0.5)
                mod.bias.copy_(torch.randn(mod.num_features, generator=gen) * 0.1)
                mod.running_mean.copy_(torch.randn(mod.num_features, generator=gen) * 0.1)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=gen) + 0.5)
    return model.eval()


def export(model: nn.Module, path: Path, shape: tuple[int, ...], dynamic: bool = True) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(1, *shape),), str(path), dynamo=False,
                          opset_version=17, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}
                          if dynamic else None)
    return path


def save_graph(path: Path, nodes: list, inputs: list, outputs: list, inits: list = (),
               opset: int = 17, sparse: list = ()) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits),
                              sparse_initializer=list(sparse))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def ort_run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


class AddOne(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x) + 1.0


# --- ONNX ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS.names())
def test_onnx_round_trip_of_every_arch(arch: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = randomize_bn(small_model(arch))
    path = export(model, tmp_path / f"{arch}.onnx", model.input_shape)
    loaded = load_model(path)
    assert (loaded.kind, loaded.name, loaded.onnx_error, loaded.swappable) == (
        "onnx", arch, None, True)
    assert loaded.input_shape == tuple(model.input_shape)
    assert loaded.onnx_bytes == path.read_bytes()
    x = torch.randn(3, *model.input_shape)
    with torch.no_grad():
        expected, got = model(x), loaded.module(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)

    layers = {n: m for n, m in loaded.module.named_modules() if isinstance(m, (nn.Conv2d,
                                                                                nn.Linear))}
    assert any(isinstance(m, nn.Linear) for m in layers.values())
    assert any(isinstance(m, nn.Conv2d) for m in layers.values()) == (arch not in (
        "lenet300", "ffn"))
    head = [n for n, m in layers.items() if isinstance(m, nn.Linear)][-1]
    wrapper = AddOne(getattr(loaded.module, head))
    setattr(loaded.module, head, wrapper)  # swapped by name: the graph must run the wrapper
    with torch.no_grad():
        swapped = loaded.module(x)
    assert wrapper.calls == 1
    torch.testing.assert_close(swapped, expected + 1.0, rtol=1e-4, atol=1e-4)


class ViewNet(nn.Module):
    """Exports Shape/Gather/Unsqueeze/Concat/Reshape and an unfused BatchNormalization."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 3 * 3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(torch.relu(self.conv(x)))
        x = nn.functional.avg_pool2d(torch.max_pool2d(x, 2), 2, ceil_mode=True)
        x = torch.sigmoid(x.view(x.size(0), -1))
        return torch.softmax(torch.tanh(self.fc(x)) - 0.5, dim=1)


def test_onnx_shape_patterns_batchnorm_and_dynamic_re_export(tmp_path: Path) -> None:
    from sparsebench.backends.onnxrt import export_onnx

    model = randomize_bn(ViewNet())
    path = export(model, tmp_path / "view.onnx", (2, 12, 12))
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"Shape", "Gather", "Unsqueeze", "Concat", "Reshape", "BatchNormalization"} <= ops
    loaded = load_model(path)
    assert any(isinstance(m, nn.BatchNorm2d) for m in loaded.module.modules())
    x = torch.randn(3, 2, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), model(x), rtol=1e-4, atol=1e-6)
    again = tmp_path / "again.onnx"
    again.write_bytes(export_onnx(loaded.module, loaded.input_shape))  # traced at batch 1
    np.testing.assert_allclose(ort_run(again, x.numpy()), model(x).detach().numpy(),
                               rtol=1e-4, atol=1e-6)

    fixed = export(model, tmp_path / "fixed.onnx", (2, 12, 12), dynamic=False)
    assert "Shape" not in {n.op_type for n in onnx.load(str(fixed)).graph.node}  # [1, 36]
    with torch.no_grad():  # the constant [1, 36] reshape is made batch-free
        torch.testing.assert_close(load_model(fixed).module(x), model(x), rtol=1e-4, atol=1e-6)


def test_onnx_handmade_ops_match_onnxruntime(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    w_dw, w_mm = f(3, 1, 3, 3), f(36, 6)
    w_mm[rng.random(w_mm.shape) < 0.6] = 0
    nz = np.flatnonzero(w_mm)
    sparse_w = helper.make_sparse_tensor(
        numpy_helper.from_array(w_mm.reshape(-1)[nz], "w_mm"),
        numpy_helper.from_array(nz.astype(np.int64), "w_mm_idx"), list(w_mm.shape))
    inits = [numpy_helper.from_array(a, n) for a, n in [
        (w_dw, "w_dw"), (f(3), "b_dw"), (f(6), "b_mm"), (f(4, 6), "w_g"), (f(1, 4), "c_g"),
        (np.array([0, -1], np.int64), "shape"), (np.array(2.0, np.float32), "two")]]
    nodes = [
        helper.make_node("Conv", ["x", "w_dw", "b_dw"], ["c"], name="dw/conv", group=3,
                         pads=[0, 1, 2, 1], strides=[2, 1]),
        helper.make_node("Gelu", ["c"], ["g"], name="gelu"),
        helper.make_node("Reshape", ["g", "shape"], ["r"]),
        helper.make_node("MatMul", ["r", "w_mm"], ["m"], name="mm"),
        helper.make_node("Add", ["m", "b_mm"], ["a"]),
        helper.make_node("Div", ["a", "two"], ["d"]),
        helper.make_node("Gemm", ["d", "w_g", "c_g"], ["e"], name="gemm", alpha=0.5, beta=2.0,
                         transB=1),
        helper.make_node("Transpose", ["e"], ["t"], perm=[1, 0]),
        helper.make_node("Softmax", ["t"], ["s"], axis=0),
        helper.make_node("Dropout", ["s"], ["y"]),
    ]
    path = save_graph(tmp_path / "ops.onnx", nodes,
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 3, 6])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, "N"])],
                      inits, opset=20, sparse=[sparse_w])
    loaded = load_model(path)
    assert loaded.onnx_error is None, loaded.onnx_error
    names = {n: type(m) for n, m in loaded.module.named_modules()}
    assert names["dw_conv"] is nn.Conv2d and names["mm"] is nn.Linear
    assert names["gemm"] is nn.Linear and loaded.module.mm.bias is not None
    x = f(5, 3, 3, 6)
    with torch.no_grad():
        got = loaded.module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ort_run(path, x), rtol=1e-4, atol=1e-6)


def conv_gap_graph(path: Path, dims: list) -> Path:
    w = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("GlobalAveragePool", ["c"], ["p"]),
             helper.make_node("Flatten", ["p"], ["y"])]
    return save_graph(path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], [w])


def test_onnx_symbolic_dims_need_input_shape(tmp_path: Path) -> None:
    path = conv_gap_graph(tmp_path / "sym.onnx", ["N", 3, "H", "W"])
    text = one_line_error("--input-shape", load_model, path)
    assert "'H'" in text and "sym.onnx" in text
    loaded = load_model(path, input_shape=(3, 8, 8))
    assert loaded.input_shape == (3, 8, 8) and loaded.module is not None
    assert loaded.module(torch.ones(2, 3, 8, 8)).shape == (2, 2)
    one_line_error("does not fit", load_model, path, input_shape=(4, 8, 8))
    static = load_model(conv_gap_graph(tmp_path / "static.onnx", ["N", 3, 5, 5]))
    assert static.input_shape == (3, 5, 5)


def test_onnx_unsupported_op_keeps_bytes(tmp_path: Path) -> None:
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Det", ["r"], ["y"], name="sum_it")]
    path = save_graph(tmp_path / "det.onnx", nodes,
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 4])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])])
    loaded = load_model(path)
    assert loaded.module is None and not loaded.swappable
    assert "Det" in loaded.onnx_error and "sum_it" in loaded.onnx_error
    assert "\n" not in loaded.onnx_error and loaded.onnx_bytes == path.read_bytes()
    with pytest.raises(Unsupported, match="supported: .*Add, "):
        to_torch(onnx.load(str(path)))
    assert "Conv" in SUPPORTED and "Det" not in SUPPORTED


# --- state_dicts, pickles, TorchScript, checkpoints ----------------------------------------------

def test_state_dict_needs_arch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = create_model("lenet5").eval()
    path = tmp_path / "sd.pt"
    torch.save(model.state_dict(), path)
    assert "lenet5" in one_line_error("--arch", load_model, path)
    loaded = load_model(path, arch="lenet5")
    assert (loaded.kind, loaded.arch, loaded.input_shape) == ("state-dict", "lenet5", (1, 28, 28))
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(loaded.module(x), model(x))
    one_line_error("does not fit architecture 'lenet300'", load_model, path, arch="lenet300")
    one_line_error("size mismatch", load_model, path, arch="lenet5", input_shape=(1, 32, 32))
    one_line_error("unknown architecture", load_model, path, arch="nope")

    nested = tmp_path / "nested.pt"
    torch.save({"epoch": 3, "state_dict": model.state_dict()}, nested)
    assert load_model(nested, arch="lenet5").kind == "state-dict"

    ffn = small_model("ffn").eval()
    torch.save(ffn.state_dict(), tmp_path / "ffn.pt")
    loaded = load_model(tmp_path / "ffn.pt", arch="ffn")
    assert loaded.input_shape == (64,)
    x = torch.randn(2, 64)
    torch.testing.assert_close(loaded.module(x), ffn(x))

    (tmp_path / "usernets_sd.py").write_text(textwrap.dedent("""
        from torch import nn
        def build():
            return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("usernets_sd", None)
    import usernets_sd

    net = usernets_sd.build()
    torch.save(net.state_dict(), tmp_path / "seq.pt")
    loaded = load_model(tmp_path / "seq.pt", arch="usernets_sd:build", input_shape=(4,))
    assert loaded.kind == "state-dict"
    torch.testing.assert_close(loaded.module(torch.ones(1, 4)), net(torch.ones(1, 4)))
    one_line_error("--input-shape", load_model, tmp_path / "seq.pt", arch="usernets_sd:build")
    one_line_error("nope", load_model, tmp_path / "seq.pt", arch="usernets_sd:nope")
    one_line_error("no_such_mod_xyz", load_model, tmp_path / "seq.pt", arch="no_such_mod_xyz:f")
    one_line_error("usernets_sd:build", load_model, path, arch="usernets_sd:build",
                   input_shape=(4,))


def test_pickled_torch_and_sparsebench_modules_load_weights_only(tmp_path: Path) -> None:
    seq = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.BatchNorm1d(3), nn.GELU()).eval()
    torch.save(seq, tmp_path / "seq.pt")
    one_line_error("--input-shape", load_model, tmp_path / "seq.pt")
    loaded = load_model(tmp_path / "seq.pt", input_shape=(4,))
    assert loaded.kind == "pickled-module" and not loaded.module.training
    x = torch.randn(2, 4)
    torch.testing.assert_close(loaded.module(x), seq(x))

    lenet = create_model("lenet5").eval()
    torch.save(lenet, tmp_path / "lenet.pt")
    loaded = load_model(tmp_path / "lenet.pt")
    assert (loaded.kind, loaded.arch, loaded.input_shape) == ("pickled-module", "lenet5",
                                                              (1, 28, 28))
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(loaded.module(x), lenet(x))


def test_pickled_custom_class_needs_trust(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "marker"
    (tmp_path / "usernets_evil.py").write_text(textwrap.dedent(f"""
        from pathlib import Path
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 2)
                self.input_shape = (4,)

            def forward(self, x):
                return self.fc(x)

            def __setstate__(self, state):
                Path({str(marker)!r}).write_text("code ran")
                super().__setstate__(state)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("usernets_evil", None)
    import usernets_evil

    torch.save(usernets_evil.Net(), tmp_path / "net.pt")
    text = one_line_error("--trust", load_model, tmp_path / "net.pt")
    assert "usernets_evil.Net" in text and not marker.exists()
    loaded = load_model(tmp_path / "net.pt", trust=True)
    assert marker.exists() and loaded.kind == "pickled-module" and loaded.input_shape == (4,)
    assert loaded.module(torch.ones(1, 4)).shape == (1, 2)


def test_torchscript_runs_as_given(tmp_path: Path) -> None:
    model = create_model("lenet5").eval()
    path = tmp_path / "ts.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(model).save(str(path))
    assert load_model(path).input_shape == (1, 28, 28)  # from the first conv and a trial run
    loaded = load_model(path, input_shape=(1, 28, 28))
    assert (loaded.kind, loaded.swappable) == ("torchscript", True)
    assert any("dense rows run the archive as given" in n for n in loaded.notes)
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(loaded.module(x), model(x))


def test_bad_files_are_one_line_errors(tmp_path: Path) -> None:
    one_line_error("not found", load_model, tmp_path / "missing.pt")
    one_line_error("directory", load_model, tmp_path)
    (tmp_path / "empty.pt").write_bytes(b"")
    one_line_error("empty", load_model, tmp_path / "empty.pt")

    good = tmp_path / "ckpt.pt"
    save_checkpoint({"arch": "lenet300", "arch_kwargs": {}, "input_shape": [1, 28, 28],
                     "state_dict": create_model("lenet300").state_dict()}, good)
    data = good.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    one_line_error("corrupt or truncated", load_model, tmp_path / "cut.pt")

    noise = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    (tmp_path / "noise.pt").write_bytes(noise)
    one_line_error("neither", load_model, tmp_path / "noise.pt")
    (tmp_path / "noise.onnx").write_bytes(noise)
    one_line_error("not a valid ONNX model", load_model, tmp_path / "noise.onnx")

    torch.save(torch.ones(3), tmp_path / "tensor.pt")
    one_line_error("neither.*Tensor", load_model, tmp_path / "tensor.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    one_line_error("neither.*list", load_model, tmp_path / "list.pt")


def test_parse_input_shape() -> None:
    assert parse_input_shape("1,28,28") == (1, 28, 28)
    assert parse_input_shape("1x28x28") == parse_input_shape(" 1 x 28 x 28 ") == (1, 28, 28)
    assert parse_input_shape("(3, 32, 32)") == (3, 32, 32)
    assert parse_input_shape("784") == (784,)
    for bad in ["", "a,b", "1,,28", "0,28,28", "-1x2", "1.5", "1;2"]:
        one_line_error("bad input shape", parse_input_shape, bad)


def test_checkpoint_masks_applied_and_nonfinite_noted(tmp_path: Path) -> None:
    model = create_model("lenet5")
    state = model.state_dict()
    mask = torch.ones_like(state["fc1.weight"], dtype=torch.bool)
    mask[:40] = False
    assert bool(state["fc1.weight"][:40].ne(0).any())
    save_checkpoint({"arch": "lenet5", "arch_kwargs": {}, "input_shape": [1, 28, 28],
                     "state_dict": state, "masks": {"fc1.weight": mask}, "method": "prune-l"},
                    tmp_path / "ck.pt")
    loaded = load_model(tmp_path / "ck.pt")
    assert (loaded.kind, loaded.arch, loaded.input_shape) == ("checkpoint", "lenet5", (1, 28, 28))
    assert loaded.checkpoint["method"] == "prune-l" and not loaded.module.training
    assert bool(loaded.module.fc1.weight[:40].eq(0).all())
    assert bool(loaded.module.fc1.weight[40:].ne(0).any())

    state["fc3.weight"][0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    loaded = load_model(tmp_path / "nan.pt", arch="lenet5")
    assert "non-finite weights in fc3" in loaded.notes
