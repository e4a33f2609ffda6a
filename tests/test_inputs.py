"""Several inputs of any dtype (issue 12): ``--input`` specs, default values, the input tuple
every backend gets, outputs compared leaf by leaf, ONNX run as given, measure's exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from sparsebench.backends import BACKENDS, Unsupported, get_backend
from sparsebench.cli import main
from sparsebench.errors import SparsebenchError
from sparsebench.formats import FORMATS, convert
from sparsebench.graph import from_module
from sparsebench.graph.reference import output as reference_output
from sparsebench.loading import load_model
from sparsebench.model_io import (InputSpec, compare, leaves, make_inputs, parse_input_flag,
                                  parse_input_flags)

FAST = ["--min-calls", "2", "--min-time", "0", "--warmup", "0", "--data", "none"]
VOCAB = 50


def _model(nodes: list, inputs: list, outputs: list, inits: list, path: Path,
           domains: tuple = ()) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    opsets = [helper.make_opsetid("", 17)] + [helper.make_opsetid(d, 1) for d in domains]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture(scope="module")
def token_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ids (int64, embedding of VOCAB rows) and a mask -> masked embeddings -> two Linears on
    (batch, tokens, features) activations, 80% of the weights zero."""
    gen = np.random.default_rng(0)

    def sparse(*shape: int) -> np.ndarray:
        w = gen.standard_normal(shape).astype(np.float32)
        return w * (gen.random(shape) > 0.8)

    inits = [numpy_helper.from_array(gen.standard_normal((VOCAB, 16)).astype(np.float32), "E"),
             numpy_helper.from_array(sparse(16, 32), "W1"),
             numpy_helper.from_array(gen.standard_normal(32).astype(np.float32), "b1"),
             numpy_helper.from_array(sparse(32, 8), "W2"),
             numpy_helper.from_array(np.array([2], np.int64), "axis")]
    nodes = [helper.make_node("Gather", ["E", "input_ids"], ["emb"], name="embed"),
             helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["m", "axis"], ["m3"]),
             helper.make_node("Mul", ["emb", "m3"], ["h"]),
             helper.make_node("MatMul", ["h", "W1"], ["h1"], name="fc1"),
             helper.make_node("Add", ["h1", "b1"], ["h2"]),
             helper.make_node("Relu", ["h2"], ["h3"]),
             helper.make_node("MatMul", ["h3", "W2"], ["y"], name="fc2")]
    ins = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
           helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 8])]
    return _model(nodes, ins, outs, inits, tmp_path_factory.mktemp("onnx") / "tokens.onnx")


@pytest.fixture(scope="module")
def custom_op_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A graph onnxruntime runs but the importer cannot: a com.microsoft op."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
             helper.make_node("FastGelu", ["h"], ["y"], name="fast_gelu_1",
                              domain="com.microsoft")]
    inits = [numpy_helper.from_array(np.eye(4, dtype=np.float32), "W")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits,
                  tmp_path_factory.mktemp("onnx") / "custom.onnx", domains=("com.microsoft",))


# --- specs ---------------------------------------------------------------------------------------

def test_input_flag_parses_batch_first_shape_dtype_and_range() -> None:
    assert parse_input_flag("input_ids:1x128:int64:0-30522") == InputSpec(
        "input_ids", (128,), "int64", 0, 30522)
    assert parse_input_flag("x:Bx3x8x8:float32") == InputSpec("x", (3, 8, 8))
    assert parse_input_flag("x:B,4:float32:-1-1").low == -1.0
    assert parse_input_flag("input_ids:Bx128:int64:0-30522").describe() == \
        "input_ids:Bx128:int64:0-30522"


@pytest.mark.parametrize("spec,words", [
    ("input_ids", "expected --input NAME:SHAPE:DTYPE"),
    ("a:1x0:int64", "SHAPE must be positive integers"),
    ("a:x2:int64", "SHAPE must be positive integers"),
    ("a:1x2:complex64", "unknown dtype 'complex64'"),
    ("a:1x2:int64:5-1", "LOW < HIGH"),
    ("a:1x2:int64:0.5-3", "integer range"),
])
def test_bad_input_flag_is_one_line_exit_2(spec: str, words: str, token_onnx: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SparsebenchError, match=words.replace("(", r"\(")):
        parse_input_flag(spec)
    assert main(["measure", str(token_onnx), "--input", spec, *FAST]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("spec,words", [
    ("token_ids:1x4:int64", "has no input named 'token_ids' (its inputs: input_ids, "
                            "attention_mask)"),
    ("input_ids:1x4:float32", "takes int64 for 'input_ids', not float32"),
    ("input_ids:1x4x2:int64", "--input input_ids does not fit the input 'input_ids'"),
])
def test_input_not_in_graph_or_wrong_dtype_exit_2(spec: str, words: str, token_onnx: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["measure", str(token_onnx), "--input", spec, *FAST]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1


def test_same_input_twice_is_an_error() -> None:
    with pytest.raises(SparsebenchError, match="given twice"):
        parse_input_flags(["a:1x2:int64", "a:1x3:int64"])


def test_onnx_inputs_names_dtypes_vocab_and_default_sequence(token_onnx: Path) -> None:
    loaded = load_model(token_onnx)
    assert [s.describe() for s in loaded.inputs] == [
        f"input_ids:Bx128:int64:0-{VOCAB}", "attention_mask:Bx128:int64:1-2"]
    assert loaded.input_shape == (128,)
    given = load_model(token_onnx, inputs=[parse_input_flag("input_ids:1x16:int64:3-7")])
    assert given.inputs[0] == InputSpec("input_ids", (16,), "int64", 3, 7)
    assert given.inputs[1].shape == (16,)  # the same symbolic dimension ("seq")


def test_make_inputs_defaults_and_seed() -> None:
    specs = [InputSpec("input_ids", (6,), "int64", 0, VOCAB),
             InputSpec("attention_mask", (6,), "int64", 1, 2),
             InputSpec("token_type_ids", (6,), "int32", 0, 1), InputSpec("x", (3,))]
    ids, mask, types, x = make_inputs(specs, 4, seed=3)
    assert ids.dtype == torch.int64 and ids.shape == (4, 6) and 0 <= int(ids.min()) \
        and int(ids.max()) < VOCAB and len(set(ids.flatten().tolist())) > 1
    assert bool((mask == 1).all()) and types.dtype == torch.int32 and not types.any()
    assert all(torch.equal(a, b) for a, b in zip(make_inputs(specs, 4, 3), (ids, mask, types, x)))
    one = make_inputs([InputSpec("input", (3, 5))], 2, seed=7)[0]
    assert torch.equal(one, torch.randn((2, 3, 5), generator=torch.Generator().manual_seed(7)))


def test_compare_outputs_leaf_by_leaf() -> None:
    from transformers.modeling_outputs import BaseModelOutput

    ref = (torch.tensor([1.0, -4.0]), {"ids": torch.tensor([3, 4])})
    assert compare((torch.tensor([1.0, -4.0]), {"ids": torch.tensor([3, 4])}), ref) == (0, 0)
    abs_err, rel_err = compare((torch.tensor([1.0, -3.0]), {"ids": torch.tensor([3, 4])}), ref)
    assert abs_err == 1.0 and rel_err == 0.25
    assert compare((torch.tensor([1.0, -4.0]), {"ids": torch.tensor([3, 6])}), ref) == (2.0, 2.0)
    model_out = BaseModelOutput(last_hidden_state=torch.ones(2, 3))
    assert compare(torch.ones(2, 3) * 1.5, model_out) == (0.5, 0.5)
    with pytest.raises(SparsebenchError, match="returned 2 output tensors, the dense reference 1"):
        compare((torch.ones(2), torch.ones(2)), torch.ones(2))


def test_compare_flattens_a_transformers_cache() -> None:
    """GPT-2 pickled returns a ModelOutput holding a DynamicCache (no to_tuple): its key and
    value tensors are leaves like the others, so a changed value is an error, not a refusal."""
    from transformers import DynamicCache
    from transformers.modeling_outputs import BaseModelOutputWithPast

    def output(value: float) -> BaseModelOutputWithPast:
        cache = DynamicCache()
        cache.update(torch.ones(1, 2, 3, 4), torch.full((1, 2, 3, 4), value), 0)
        return BaseModelOutputWithPast(last_hidden_state=torch.ones(1, 3), past_key_values=cache)

    assert len(leaves(output(2.0))) == 3
    assert compare(output(2.0), output(2.0)) == (0, 0)
    assert compare(output(3.0), output(2.0)) == (1.0, 0.5)


# --- every backend x format on several inputs --------------------------------------------------

def _combos() -> list[tuple[str, str]]:
    return [(b, f) for b in BACKENDS.names() for f in FORMATS.names()
            if get_backend(b).supports(f)]


def _check_every_combo(loaded, batch: int = 1, tol: float = 1e-4) -> set[str]:
    xs = make_inputs(loaded.inputs, batch, seed=1)
    with torch.inference_mode():
        ref = loaded.module(*xs)
    ran = set()
    for backend, fmt in _combos():
        converted = convert(loaded.module, fmt)
        try:
            prepared = get_backend(backend).prepare(converted, batch=batch)
        except Unsupported as exc:
            assert str(exc) and "\n" not in str(exc)
            continue
        _, rel = compare(prepared.run(*xs), ref)
        assert rel <= tol, (backend, fmt, prepared.impl, rel)
        ran.add(f"{fmt}/{backend}")
    return ran


def test_token_onnx_every_backend_and_format(token_onnx: Path) -> None:
    loaded = load_model(token_onnx, inputs=[parse_input_flag("input_ids:Bx8:int64"),
                                            parse_input_flag("attention_mask:Bx8:int64:0-2")])
    assert loaded.module is not None, loaded.onnx_error
    xs = make_inputs(loaded.inputs, 2, seed=1)
    graph = from_module(loaded.module, loaded.input_shape)
    assert graph.inputs == ["input_ids", "attention_mask"]
    want = loaded.module(*xs)
    assert compare(torch.from_numpy(reference_output(graph, xs)), want)[1] < 1e-6
    ran = _check_every_combo(loaded, batch=2)
    assert {"dense/torch", "csr/native", "csr/scipy", "bsr/native"} <= ran
    native = get_backend("native").prepare(convert(loaded.module, "csr"), batch=2)
    assert "swapped" not in native.impl and len(native.kernels) == 2  # both (B*T, F) Linears


class TwoInputs(nn.Module):
    """forward(x, y): two float inputs, Linears on (batch, tokens, features)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(16, 32), nn.Linear(8, 32), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.a(x) + self.b(y))
        return self.c(h), h.sum(-1)


def test_two_float_inputs_tuple_output_every_backend(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = TwoInputs().eval()
    with torch.no_grad():
        for layer in (module.a, module.b, module.c):
            layer.weight.mul_((torch.rand_like(layer.weight) > 0.8).float())
    path = tmp_path / "two.pt"
    torch.save(module, path)
    with pytest.raises(SparsebenchError, match=r"takes 2 inputs \(x, y\): give each one's shape"):
        load_model(path, trust=True)  # two float inputs of unknown shape
    loaded = load_model(path, trust=True, inputs=[parse_input_flag("x:Bx5x16:float32"),
                                                  parse_input_flag("y:Bx5x8:float32")])
    assert [s.name for s in loaded.inputs] == ["x", "y"]
    ran = _check_every_combo(loaded, batch=3)
    assert {"dense/torch", "dense/onnxruntime", "csr/native", "csr/torch-sparse"} <= ran


def _tiny_bert(tmp_path: Path) -> Path:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                     attn_implementation="eager")
    model = BertModel(cfg, add_pooling_layer=False).eval()
    with torch.no_grad():
        for m in model.encoder.modules():
            if isinstance(m, nn.Linear):
                w = m.weight
                w.mul_((w.abs() > w.abs().flatten().kthvalue(int(0.9 * w.numel())).values)
                       .float())
    path = tmp_path / "bert.pt"
    torch.save(model, path)
    return path


def test_hf_bert_pickle_signature_inputs_every_backend(tmp_path: Path) -> None:
    path = _tiny_bert(tmp_path)
    with pytest.raises(SparsebenchError, match="--trust"):
        load_model(path)
    loaded = load_model(path, trust=True, inputs=[parse_input_flag("input_ids:Bx16:int64")])
    assert [s.describe() for s in loaded.inputs] == [f"input_ids:Bx16:int64:0-{VOCAB}",
                                                     "attention_mask:Bx16:int64:1-2"]
    ran = _check_every_combo(loaded)
    assert {"dense/torch", "dense/onnxruntime", "csr/native", "csr/torch-sparse"} <= ran


# --- ONNX as given, exit codes --------------------------------------------------------------------

@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """measure's workers run in this process (the same run_job, no interpreter start-up)."""
    from sparsebench.measure import harness, worker

    monkeypatch.setattr(harness, "run_worker", lambda job, timeout, **_: worker.run_job(job))


def test_onnx_as_given_runs_on_ort_when_the_import_fails(custom_op_onnx: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str],
                                                         in_process: None) -> None:
    out = tmp_path / "r.json"
    code = main(["measure", str(custom_op_onnx), "--formats", "dense,csr", "--backends",
                 "onnxruntime,torch,native", "--json", str(out), *FAST])
    assert code == 0
    rows = {f"{r['format']}/{r['backend']}": r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"dense/onnxruntime", "dense/torch", "csr/native"}
    ort = rows["dense/onnxruntime"]
    assert ort["status"] == "ok" and ort["impl"] == "ort-cpu-dense-original"
    assert ort["weight_bytes"] == custom_op_onnx.stat().st_size
    for key in ("dense/torch", "csr/native"):
        reason = rows[key]["reason"]
        assert rows[key]["status"] == "skipped" and "com.microsoft.FastGelu" in reason \
            and "fast_gelu_1" in reason and "\n" not in reason
    capsys.readouterr()
    assert main(["measure", str(custom_op_onnx), "--formats", "dense", "--backends", "torch",
                 *FAST]) == 1
    assert "no execution succeeded (1 skipped)" in capsys.readouterr().err


def test_onnx_dense_row_runs_the_original_bytes(token_onnx: Path) -> None:
    """The dense/onnxruntime row of an ONNX file is the user's graph, not a re-export."""
    from sparsebench.measure.worker import run_job

    job = {"model": "tokens", "path": str(token_onnx), "format": "dense",
           "backend": "onnxruntime", "batch": 2, "threads": 1, "seed": 0,
           "timing": {"min_calls": 1, "min_seconds": 0, "warmup_calls": 0},
           "inputs": [{"name": "input_ids", "shape": [8], "dtype": "int64"}]}
    row = run_job(job)
    assert row["status"] == "ok" and row["impl"] == "ort-cpu-dense-original"
    assert row["max_rel_err"] < 1e-6


def test_profile_refuses_several_inputs(token_onnx: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", str(token_onnx), "--target", "cortex-m7"]) == 2
    err = capsys.readouterr().err
    assert "profile and export-c run models with one float32 input" in err \
        and "input_ids:Bx128:int64" in err and err.count("\n") == 1
