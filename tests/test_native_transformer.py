"""Transformer blocks in the native plan: the exporters' erf GELU as one fused activation, the
add + LayerNorm and attention kernels against numpy/torch references, and tiny BERT exports
(TorchScript and dynamo exporters) running with (almost) no torch steps."""

from __future__ import annotations

import io
import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch

from conftest import needs_kernels, rel_err
from sparsebench.graph import from_module, run

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from sparsebench.graph.onnx_torch import to_torch  # noqa: E402

RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------- GELU pass

class _LastHidden(torch.nn.Module):
    """A HuggingFace BertModel as (input_ids, attention_mask) -> last hidden state."""

    def __init__(self, bert: torch.nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _const(name: str, value: float) -> Any:
    return numpy_helper.from_array(np.array([value], np.float32), name)


def _gelu_onnx(variant: str, sqrt2: float = math.sqrt(2.0), half: float = 0.5) -> Any:
    """x (1, 4, 16) -> MatMul(W) + b -> GELU written as the exporters write it."""
    w = RNG.standard_normal((16, 24)).astype(np.float32)
    b = RNG.standard_normal(24).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]),
             helper.make_node("Add", ["mm", "b"], ["h"])]
    mk = helper.make_node
    if variant.startswith("mul-"):   # x * (1/sqrt 2)
        nodes.append(mk("Mul", ["h", "inv_sqrt2"], ["d"]))
    else:                            # x / sqrt 2
        nodes.append(mk("Div", ["h", "sqrt2"], ["d"]))
    nodes += [mk("Erf", ["d"], ["e"]), mk("Add", ["e", "one"], ["a"])]
    tail = variant.split("-", 1)[1] if "-" in variant else variant
    if tail == "ts":            # (x * (1 + erf)) * 0.5
        nodes += [mk("Mul", ["h", "a"], ["m"]), mk("Mul", ["m", "half"], ["y"])]
    elif tail == "dynamo":      # x * (0.5 * (1 + erf))
        nodes += [mk("Mul", ["half", "a"], ["m"]), mk("Mul", ["h", "m"], ["y"])]
    else:                       # (x * 0.5) * (1 + erf)
        nodes += [mk("Mul", ["h", "half"], ["m"]), mk("Mul", ["a", "m"], ["y"])]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
             _const("sqrt2", sqrt2), _const("inv_sqrt2", 1 / sqrt2), _const("one", 1.0),
             _const("half", half)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, (1, 4, 16))], [helper.make_empty_tensor_value_info("y")], inits)
    return to_torch(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.parametrize("variant", ["ts", "dynamo", "halfx", "mul-ts", "mul-dynamo",
                                     "mul-halfx"])
def test_exported_gelu_becomes_one_gelu_node(variant: str) -> None:
    module = _gelu_onnx(variant)
    graph = from_module(module, (4, 16))
    assert [n.kind for n in graph.nodes] == ["linear", "gelu"]
    x = torch.randn(1, 4, 16)
    with torch.inference_mode():
        want = module(x)
        env = run(graph, x)
    assert rel_err(env[graph.output], want) < 1e-6
    pre = env[graph.nodes[0].output]  # the Linear's output: the matched x really was x
    assert rel_err(env[graph.output], torch.nn.functional.gelu(pre)) < 1e-6


@pytest.mark.parametrize("sqrt2,half", [(1.4142, 0.5), (math.sqrt(2.0), 0.5001)])
def test_gelu_near_miss_is_left_alone(sqrt2: float, half: float) -> None:
    graph = from_module(_gelu_onnx("ts", sqrt2, half), (4, 16))
    assert "gelu" not in [n.kind for n in graph.nodes]
    assert "Erf" in [n.label for n in graph.nodes]


# ----------------------------------------------------------------------------- kernels

def _f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _max_rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - want).max() / max(np.abs(want).max(), 1e-30))


@needs_kernels
@pytest.mark.parametrize("rows", [1, 7, 128])
@pytest.mark.parametrize("cols", [1, 63, 768])
def test_add_layernorm_matches_torch(rows: int, cols: int) -> None:
    from sparsebench import native

    x, r = _f32(rows, cols) * 3 + 2, _f32(rows, cols)
    gamma, beta = _f32(cols), _f32(cols)
    for residual, threads in ((None, 1), (r, 2)):
        s = torch.from_numpy(x).double() + (0 if residual is None else torch.from_numpy(r))
        want = torch.nn.functional.layer_norm(s, (cols,), torch.from_numpy(gamma).double(),
                                              torch.from_numpy(beta).double(), 1e-12).numpy()
        op = native.AddLayerNorm(gamma, beta, eps=1e-12, threads=threads)
        assert _max_rel(op.run(x, residual=residual), want) <= 1e-5
    plain = native.AddLayerNorm(np.ones(cols, np.float32)).run(x.copy())
    s = torch.from_numpy(x).double()
    assert _max_rel(plain, torch.nn.functional.layer_norm(s, (cols,), eps=1e-5).numpy()) <= 1e-5


def _attention_ref(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None,
                   heads: int, scale: float) -> np.ndarray:
    (b, tq, w), tk = q.shape, k.shape[1]
    dh = w // heads
    qt, kt, vt = (torch.from_numpy(a).double().view(b, t, heads, dh).transpose(1, 2)
                  for a, t in ((q, tq), (k, tk), (v, tk)))
    s = qt @ kt.transpose(-1, -2) * scale
    if mask is not None:
        s = s + torch.from_numpy(mask).double()
    return (s.softmax(-1) @ vt).transpose(1, 2).reshape(b, tq, w).numpy()


@needs_kernels
@pytest.mark.parametrize("batch,seq,heads,dh", [(1, 1, 1, 1), (2, 7, 3, 5), (1, 128, 2, 64),
                                                (1, 33, 2, 80)])
@pytest.mark.parametrize("mask_kind", ["none", "zeros", "full"])
def test_attention_matches_torch(batch: int, seq: int, heads: int, dh: int,
                                 mask_kind: str) -> None:
    from sparsebench import native

    q, k, v = (_f32(batch, seq, heads * dh) for _ in range(3))
    mask = None
    if mask_kind == "zeros":  # BERT's padding mask: 0 or the most negative float per key
        mask = np.where(RNG.random((batch, 1, 1, seq)) < 0.4, np.float32(-3.4028234e38),
                        np.float32(0)).astype(np.float32)
        mask[..., 0] = 0
    elif mask_kind == "full":
        mask = _f32(1, heads, seq, seq)
    scale = 1 / math.sqrt(dh)
    got = native.Attention(heads, scale, threads=2).run(q, k, v, mask)
    assert _max_rel(got, _attention_ref(q, k, v, mask, heads, scale)) <= 1e-5


@needs_kernels
def test_gather_rows_matches_torch() -> None:
    from sparsebench import native
    from sparsebench.errors import SparsebenchError

    table = _f32(10, 7)
    ids = torch.tensor([[0, 9, -1, 3], [5, 5, -10, 2]])
    want = torch.from_numpy(table)[torch.where(ids < 0, ids + 10, ids)].numpy()
    op = native.GatherRows(table)
    assert np.array_equal(op.run(ids), want)
    assert np.array_equal(op.run(ids.int().numpy()), want)  # int32 ids are converted
    out = np.zeros((2, 4, 7), np.float32)
    for bad in (10, -11):
        with pytest.raises(SparsebenchError, match="outside the table's 10 rows"):
            op.run(torch.tensor([[0, 1, bad, 2], [0, 0, 0, 0]]), out)
        assert not out.any()  # nothing written


@needs_kernels
@pytest.mark.parametrize("shape,b_shape", [((1,), None), ((7, 63), (7, 63)), ((2, 5, 63), (63,)),
                                           ((3, 128, 768), (1, 128, 768)), ((4, 9), (1,))])
def test_scale_add_matches_numpy(shape: tuple[int, ...], b_shape: tuple[int, ...] | None) -> None:
    from sparsebench import native

    a = _f32(*shape)
    b = None if b_shape is None else _f32(*b_shape)
    for alpha, threads in ((1.0, 1), (-0.37, 2)):
        want = alpha * a.astype(np.float64) + (0 if b is None else b)
        assert _max_rel(native.ScaleAdd(alpha, threads).run(a, b), want) <= 1e-6


@needs_kernels
def test_attention_query_with_every_key_masked_gives_zeros() -> None:
    """As the SDPA exports' Where(IsNaN(P), 0, P) after the softmax."""
    from sparsebench import native

    q, k, v = (_f32(1, 5, 8) for _ in range(3))
    mask = np.zeros((1, 1, 5, 5), np.float32)
    mask[0, 0, 2] = -np.inf
    got = native.Attention(2, 0.5).run(q, k, v, mask)
    assert not got[0, 2].any()
    rows = [0, 1, 3, 4]  # the other queries: a plain softmax
    ref = _attention_ref(q[:, rows], k, v, None, 2, 0.5)
    assert _max_rel(got[:, rows], ref) <= 1e-5


@needs_kernels
def test_transformer_kernel_arguments_are_checked() -> None:
    from sparsebench import native
    from sparsebench.errors import SparsebenchError

    q = _f32(1, 4, 8)
    att = native.Attention(2, 0.5)
    with pytest.raises(SparsebenchError, match="must not overlap"):
        att.run(q, q, q, out=q)
    with pytest.raises(SparsebenchError, match="does not broadcast"):
        att.run(q, q, q, mask=_f32(1, 1, 1, 3))
    with pytest.raises(SparsebenchError, match="2 heads"):
        native.Attention(2, 0.5).run(_f32(1, 4, 7), _f32(1, 4, 7), _f32(1, 4, 7))
    with pytest.raises(SparsebenchError, match="last axis 8"):
        native.AddLayerNorm(np.ones(8, np.float32)).run(_f32(3, 5))
    with pytest.raises(SparsebenchError, match="residual"):
        native.AddLayerNorm(np.ones(8, np.float32)).run(_f32(3, 8), residual=_f32(2, 8))
    with pytest.raises(SparsebenchError, match="does not broadcast"):
        native.ScaleAdd().run(_f32(3, 8), _f32(3, 1))


# ----------------------------------------------------------------------------- plans

SEQ = 16


@pytest.fixture(scope="module")
def bert_exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny BERT (2 layers, hidden 64, 2 heads) exported by both torch exporters, with eager
    attention and with transformers' default SDPA attention (q and k scaled before the
    MatMul, Where(IsNaN) after the softmax), and at opset 14 (LayerNorm decomposed into
    ReduceMean/Sub/Pow/Sqrt/Div/Mul/Add)."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    models = {}
    for attn in ("eager", "sdpa"):
        torch.manual_seed(0)
        cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=128, vocab_size=100,
                                      max_position_embeddings=32, attn_implementation=attn)
        models[attn] = transformers.BertModel(cfg, add_pooling_layer=False).eval()

    ids, mask = torch.randint(0, 100, (1, SEQ)), torch.ones(1, SEQ, dtype=torch.int64)
    folder = tmp_path_factory.mktemp("bert")
    paths = {}
    for name, dynamo, opset, attn in (("ts", False, 17, "eager"), ("ts14", False, 14, "eager"),
                                      ("dynamo", True, 18, "eager"), ("sdpa-ts", False, 17, "sdpa"),
                                      ("sdpa-dynamo", True, 18, "sdpa")):
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_LastHidden(models[attn]).eval(), (ids, mask), buf, dynamo=dynamo,
                              input_names=["input_ids", "attention_mask"],
                              opset_version=opset,
                              **({"external_data": False} if dynamo else {}))
        paths[name] = folder / f"bert-{name}.onnx"
        paths[name].write_bytes(buf.getvalue())
    return paths


def _native_plan(path: Any, threads: int = 1) -> tuple[Any, float]:
    """(prepared csr/native plan, max rel err vs the dense module on a padded input)."""
    from sparsebench.backends import get_backend
    from sparsebench.formats import convert
    from sparsebench.loading import load_model
    from sparsebench.model_io import compare

    loaded = load_model(path)
    ids = torch.randint(0, 100, (1, SEQ))
    mask = torch.ones(1, SEQ, dtype=torch.int64)
    mask[0, 11:] = 0   # padding: the mask really masks
    with torch.inference_mode():
        want = loaded.module(ids, mask)
    prepared = get_backend("native").prepare(convert(loaded.module, "csr"), batch=1,
                                             threads=threads)
    return prepared, compare(prepared.run(ids, mask), want)[1]


@needs_kernels
@pytest.mark.parametrize("exporter,threads", [("ts", 1), ("ts14", 1), ("dynamo", 1),
                                             ("sdpa-ts", 1), ("sdpa-dynamo", 1), ("ts", 2)])
def test_bert_export_runs_its_blocks_natively(bert_exports: dict[str, Any], exporter: str,
                                              threads: int) -> None:
    prepared, err = _native_plan(bert_exports[exporter], threads)
    assert err <= 1e-4, prepared.impl
    assert "+native(attention,gather,keymask,layernorm)" in prepared.impl
    # nothing left to torch: the mask's integer/bool chain is one native key-mask step (one
    # per layer in the SDPA exports, which give each layer its own Where)
    assert prepared.torch_ops == [], prepared.impl
    names = prepared._names[1]
    assert names.count("attention") == 2 and names.count("add+layernorm") == 5
    assert names[0] == "embedding"  # the word-embedding lookup
    assert sum(n.endswith("+gelu") for n in names) == 2  # GELU fused into the Linear
    assert len(prepared.kernels) == 12


def _attention_onnx(softmax_axis: int, mask_first: bool = False, heads: int = 2, dh: int = 8,
                    seq: int = 5) -> Any:
    """q, k, v inputs (1, seq, heads*dh) through BERT's attention ops, then a Linear."""
    mk = helper.make_node
    w = heads * dh

    def shape(name: str, dims: tuple[int, ...]) -> Any:
        return numpy_helper.from_array(np.array(dims, np.int64), name)

    nodes = [mk("Reshape", [n, "split"], [f"{n}r"]) for n in "qkv"]
    nodes += [mk("Transpose", ["qr"], ["qt"], perm=[0, 2, 1, 3]),
              mk("Transpose", ["kr"], ["kt"], perm=[0, 2, 3, 1]),
              mk("Transpose", ["vr"], ["vt"], perm=[0, 2, 1, 3]),
              mk("MatMul", ["qt", "kt"], ["s"]), mk("Div", ["s", "sqrt_dh"], ["ss"]),
              mk("Add", ["mask", "ss"] if mask_first else ["ss", "mask"], ["sm_in"]),
              mk("Softmax", ["sm_in"], ["p"], axis=softmax_axis), mk("MatMul", ["p", "vt"], ["o"]),
              mk("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]),
              mk("Reshape", ["ot", "merge"], ["om"]), mk("MatMul", ["om", "w"], ["y"])]
    inits = [shape("split", (1, seq, heads, dh)), shape("merge", (1, seq, w)),
             numpy_helper.from_array(np.array(math.sqrt(dh), np.float32), "sqrt_dh"),
             numpy_helper.from_array(_f32(1, 1, 1, seq), "mask"),
             numpy_helper.from_array(_f32(w, 6), "w")]
    graph = helper.make_graph(nodes, "att", [helper.make_tensor_value_info(
        n, TensorProto.FLOAT, (1, seq, w)) for n in "qkv"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, (1, seq, 6))], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@needs_kernels
@pytest.mark.parametrize("axis,mask_first,fused", [(-1, False, True), (3, True, True),
                                                   (2, False, False)])
def test_attention_pattern_needs_softmax_over_keys(axis: int, mask_first: bool, fused: bool,
                                                   tmp_path: Any) -> None:
    from sparsebench.backends import get_backend
    from sparsebench.formats import convert
    from sparsebench.loading import load_model

    path = tmp_path / "att.onnx"
    path.write_bytes(_attention_onnx(axis, mask_first).SerializeToString())
    loaded = load_model(path)
    xs = [torch.randn(1, 5, 16) for _ in range(3)]
    with torch.inference_mode():
        want = loaded.module(*xs)
    prepared = get_backend("native").prepare(convert(loaded.module, "csr"), batch=1)
    assert rel_err(prepared.run(*xs), want) <= 1e-5
    assert ("attention" in prepared._names[1]) is fused, prepared.impl
    assert ("Softmax" in prepared.torch_ops) is not fused


def _layernorm_onnx(power: float, cols: int = 12) -> Any:
    """x (1, 3, cols) + r -> LayerNorm written out as opset < 17 exports do -> a Linear."""
    mk = helper.make_node

    def c(name: str, value: Any) -> Any:
        return numpy_helper.from_array(np.asarray(value, np.float32), name)

    nodes = [mk("Add", ["x", "r"], ["s"]), mk("ReduceMean", ["s"], ["m"], axes=[-1]),
             mk("Sub", ["s", "m"], ["d"]), mk("Pow", ["d", "two"], ["p"]),
             mk("ReduceMean", ["p"], ["v"], axes=[-1]), mk("Add", ["v", "eps"], ["ve"]),
             mk("Sqrt", ["ve"], ["sd"]), mk("Div", ["d", "sd"], ["n"]),
             mk("Mul", ["n", "gamma"], ["ng"]), mk("Add", ["ng", "beta"], ["ln"]),
             mk("MatMul", ["ln", "w"], ["y"])]
    inits = [c("two", power), c("eps", 1e-5), c("gamma", _f32(cols)), c("beta", _f32(cols)),
             c("w", _f32(cols, 4))]
    graph = helper.make_graph(nodes, "ln", [helper.make_tensor_value_info(
        n, TensorProto.FLOAT, (1, 3, cols)) for n in "xr"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, (1, 3, 4))], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


@needs_kernels
@pytest.mark.parametrize("power,fused", [(2.0, True), (4.0, False)])
def test_decomposed_layernorm_is_one_step(power: float, fused: bool, tmp_path: Any) -> None:
    from sparsebench.backends import get_backend
    from sparsebench.formats import convert
    from sparsebench.loading import load_model

    path = tmp_path / "ln.onnx"
    path.write_bytes(_layernorm_onnx(power).SerializeToString())
    loaded = load_model(path)
    xs = [torch.randn(1, 3, 12) * 3 + 1, torch.randn(1, 3, 12)]
    with torch.inference_mode():
        want = loaded.module(*xs)
    prepared = get_backend("native").prepare(convert(loaded.module, "csr"), batch=1)
    assert rel_err(prepared.run(*xs), want) <= 1e-5
    assert (prepared._names[1][0] == "add+layernorm") is fused, prepared.impl
    assert ("ReduceMean" in prepared.torch_ops) is not fused


@needs_kernels
def test_leftover_add_and_scale_run_natively(tmp_path: Any) -> None:
    """x @ W, * 0.5, + a (1, 4, 6) constant, + x2 @ W2: every elementwise step native."""
    mk = helper.make_node
    nodes = [mk("MatMul", ["x", "w"], ["h"]), mk("Mul", ["h", "half"], ["hs"]),
             mk("Add", ["hs", "c"], ["hc"]), mk("MatMul", ["x", "w2"], ["g"]),
             mk("Add", ["hc", "g"], ["y"])]
    inits = [numpy_helper.from_array(a, n) for n, a in (
        ("w", _f32(5, 6)), ("w2", _f32(5, 6)), ("half", np.array(0.5, np.float32)),
        ("c", _f32(1, 4, 6)))]
    graph = helper.make_graph(nodes, "e", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, (1, 4, 5))], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, (1, 4, 6))], inits)
    path = tmp_path / "e.onnx"
    path.write_bytes(helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    from sparsebench.backends import get_backend
    from sparsebench.formats import convert
    from sparsebench.loading import load_model

    loaded = load_model(path)
    x = torch.randn(1, 4, 5)
    with torch.inference_mode():
        want = loaded.module(x)
    prepared = get_backend("native").prepare(convert(loaded.module, "csr"), batch=1)
    assert rel_err(prepared.run(x), want) <= 1e-6
    assert prepared.torch_ops == [] and "+native(eltwise)" in prepared.impl, prepared.impl
    assert [n for n in prepared._names[1] if "matmul" not in n] == ["scale", "add", "add"]


def _plan_onnx(tmp_path: Any, nodes: list[Any], inputs: list[Any], out: Any, inits: list[Any],
               opset: int = 17) -> tuple[Any, Any]:
    """(the loaded ONNX module, its csr/native plan at batch 1)."""
    from sparsebench.backends import get_backend
    from sparsebench.formats import convert
    from sparsebench.loading import load_model

    path = tmp_path / "m.onnx"
    graph = helper.make_graph(nodes, "m", inputs, [out], inits)
    path.write_bytes(helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString())
    loaded = load_model(path)
    return loaded.module, get_backend("native").prepare(convert(loaded.module, "csr"), batch=1)


@needs_kernels
@pytest.mark.parametrize("opset,axis,shape,native_step", [
    (17, None, (1, 6), True), (17, 1, (1, 6), True), (11, None, (1, 6), True),
    (17, -1, (1, 3, 6), True), (17, 1, (1, 3, 6), False), (11, None, (1, 3, 6), False)])
def test_classifier_softmax_runs_natively(opset: int, axis: int | None, shape: tuple[int, ...],
                                          native_step: bool, tmp_path: Any) -> None:
    """x @ W, a Reshape, then Softmax: over the last axis it is a native step (and the Reshape
    a view); over another axis (or opset < 13's flattening axis 1 of a 3-D tensor) torch."""
    mk = helper.make_node
    attrs = {} if axis is None else {"axis": axis}
    nodes = [mk("MatMul", ["x", "w"], ["h"]), mk("Reshape", ["h", "shape"], ["r"]),
             mk("Softmax", ["r"], ["y"], **attrs)]
    flat = (1, int(np.prod(shape[1:-1])), 5)
    inits = [numpy_helper.from_array(_f32(5, shape[-1]), "w"),
             numpy_helper.from_array(np.array(shape, np.int64), "shape")]
    module, prepared = _plan_onnx(
        tmp_path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, flat)],
        helper.make_tensor_value_info("y", TensorProto.FLOAT, shape), inits, opset)
    x = torch.randn(*flat) * 4
    with torch.inference_mode():
        want = module(x)
    assert rel_err(prepared.run(x), want) <= 1e-5
    assert ("softmax" in prepared._names[1]) is native_step, prepared.impl
    assert ("Softmax" in prepared.torch_ops) is not native_step
    assert "Reshape" not in prepared.torch_ops  # a view of the MatMul's buffer


def _mask_onnx(boolean: bool, seq: int = 6) -> tuple[list[Any], list[Any]]:
    """scores (1, 1, seq, seq) + the mask of an int64 (1, seq) key mask: Where(Cast(m, bool),
    0, -inf) unsqueezed to (1, 1, 1, seq) (boolean) or (1 - m) * -10000 (affine), then * 2
    (so the mask is not the output)."""
    mk = helper.make_node
    if boolean:
        nodes = [mk("Cast", ["m"], ["mb"], to=TensorProto.BOOL),
                 mk("Unsqueeze", ["mb", "axes"], ["mu"]),
                 mk("Where", ["mu", "zero", "ninf"], ["mask"])]
    else:
        nodes = [mk("Cast", ["m"], ["mf"], to=TensorProto.FLOAT),
                 mk("Sub", ["one", "mf"], ["inv"]), mk("Mul", ["inv", "big"], ["ms"]),
                 mk("Unsqueeze", ["ms", "axes"], ["mask"])]
    nodes += [mk("Add", ["s", "mask"], ["sm"]), mk("Mul", ["sm", "two"], ["y"])]
    inits = [numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
             numpy_helper.from_array(np.array(-np.inf, np.float32), "ninf"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(-10000.0, np.float32), "big"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two")]
    inputs = [helper.make_tensor_value_info("s", TensorProto.FLOAT, (1, 1, seq, seq)),
              helper.make_tensor_value_info("m", TensorProto.INT64, (1, seq))]
    return nodes, [inits, inputs]


@needs_kernels
@pytest.mark.parametrize("boolean", [True, False])
def test_key_mask_chain_is_one_native_step(boolean: bool, tmp_path: Any) -> None:
    """A boolean mask chain on an integer input becomes one key-mask step, checked on probe
    masks; an affine one ((1 - m) * -10000: a mask value of 2 gives +10000) stays in torch.
    Both give the module's output for real masks."""
    seq = 6
    nodes, (inits, inputs) = _mask_onnx(boolean, seq)
    module, prepared = _plan_onnx(
        tmp_path, nodes, inputs, helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, (1, 1, seq, seq)), inits)
    assert ("key mask" in prepared._names[1]) is boolean, prepared.impl
    assert (prepared.torch_ops == []) is boolean, prepared.impl
    for m in ([[1, 1, 1, 1, 0, 0]], [[1, 0, 1, 0, 1, 1]], [[0] * seq]):
        s, mask = torch.randn(1, 1, seq, seq), torch.tensor(m, dtype=torch.int64)
        with torch.inference_mode():
            want = module(s, mask)
        got = prepared.run(s, mask)
        assert torch.equal(torch.isinf(got), torch.isinf(want))
        finite = torch.isfinite(want)
        assert not finite.any() or rel_err(got[finite], want[finite]) <= 1e-5
    if boolean:  # the kernel's own checks: a mask of the wrong shape
        from sparsebench import native
        from sparsebench.errors import SparsebenchError

        call = native.KeyMask(0.0, -1.0).bind(lambda: torch.ones(1, seq + 1, dtype=torch.int64),
                                              np.zeros((1, 1, 1, seq), np.float32))
        with pytest.raises(SparsebenchError, match="key mask has shape"):
            call()


@needs_kernels
def test_softmax_and_key_mask_kernels_match_torch() -> None:
    from sparsebench import native

    x = _f32(7, 1000) * 30
    x[2, :] = -np.inf
    x[3, 5] = np.nan
    want = torch.softmax(torch.from_numpy(x), -1).numpy()
    got = native.Softmax(2).run(x)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    assert np.abs(got[ok] - want[ok]).max() <= 1e-6
    m = torch.tensor([[1, 0, 3, 0], [0, 0, 1, 1]])
    out = np.zeros((2, 1, 3, 4), np.float32)
    native.KeyMask(0.5, -2.0).bind(lambda: m, out)()
    want = np.broadcast_to(np.where(m.numpy()[:, None, None, :] != 0, 0.5, -2.0), out.shape)
    assert np.array_equal(out, want)
    out[...] = 0
    native.KeyMask(0.5, -2.0).bind(lambda: m.to(torch.int32).numpy(), out)()  # converted
    assert np.array_equal(out, want)


@needs_kernels
def test_dynamic_batch_bert_runs_at_batch_2(tmp_path: Any) -> None:
    """A TorchScript export with a dynamic batch axis: three embedding lookups (the position
    table broadcast over the batch is a native add), masks per sequence."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, vocab_size=50,
                                  max_position_embeddings=16, attn_implementation="eager")
    bert = transformers.BertModel(cfg, add_pooling_layer=False).eval()

    ids, mask = torch.randint(0, 50, (2, 8)), torch.ones(2, 8, dtype=torch.int64)
    mask[0, 5:] = 0
    mask[1, 2:] = 0
    path = tmp_path / "bert-dyn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_LastHidden(bert).eval(), (ids, mask), str(path), dynamo=False,
                          input_names=["input_ids", "attention_mask"], opset_version=17,
                          dynamic_axes={"input_ids": {0: "b"}, "attention_mask": {0: "b"}})
    from sparsebench.backends import get_backend
    from sparsebench.formats import convert
    from sparsebench.loading import load_model

    loaded = load_model(path)
    with torch.inference_mode():
        want = loaded.module(ids, mask)
    prepared = get_backend("native").prepare(convert(loaded.module, "csr"), batch=2)
    assert rel_err(prepared.run(ids, mask), want) <= 1e-4
    assert "+native(attention,eltwise,gather,keymask,layernorm)" in prepared.impl
    # the export's shape arithmetic is fixed once the batch is: stored, not run per call; the
    # two sequences' masks are one native key-mask step
    assert prepared.torch_ops == [], prepared.torch_ops


@needs_kernels
@pytest.mark.parametrize("threads", [1, 2])
def test_bert_batch_runs_per_sample_or_as_one_batch_alike(tmp_path: Any, threads: int) -> None:
    """A transformer at batch > 1 may run its batch-1 plan per sample (or on 1-thread lanes at
    2 threads), chosen by timing at prepare time: every mode, forced, matches the dense module
    sample for sample, with a mask that differs between the samples."""
    transformers = pytest.importorskip("transformers")
    from sparsebench.backends import get_backend
    from sparsebench.formats import convert
    from sparsebench.loading import load_model
    from sparsebench.model_io import compare

    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=128, vocab_size=100,
                                  max_position_embeddings=32, attn_implementation="eager")
    bert = _LastHidden(transformers.BertModel(cfg, add_pooling_layer=False).eval()).eval()
    ids, mask = torch.randint(0, 100, (1, SEQ)), torch.ones(1, SEQ, dtype=torch.int64)
    path = tmp_path / "bert-dyn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(bert, (ids, mask), str(path), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"],
                          dynamic_axes={"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}})
    loaded = load_model(path)
    batch = 3
    prepared = get_backend("native").prepare(convert(loaded.module, "csr"), batch=batch,
                                             threads=threads)
    assert "attention" in prepared.impl and prepared.torch_ops == [], prepared.impl
    ids = torch.randint(0, 100, (batch, SEQ))
    mask = torch.ones(batch, SEQ, dtype=torch.int64)
    mask[1, 9:] = 0
    mask[2, 3:] = 0
    with torch.inference_mode():
        want = loaded.module(ids, mask)
    assert compare(prepared.run(ids, mask), want)[1] <= 1e-4, prepared.impl  # the chosen mode
    prepared._build(1)
    prepared._build(batch)
    lanes = [type(prepared)(prepared.converted, prepared.graph, 1, 1, prepared.label)
             for _ in range(2)]
    for per_sample, lane in ((set(), []), ({batch}, []), ({batch}, lanes)):
        prepared._per_sample, prepared._lanes = per_sample, lane
        assert compare(prepared.run(ids, mask), want)[1] <= 1e-4, (per_sample, len(lane))
