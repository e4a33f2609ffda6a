"""`sparsebench sweep MODEL_FILE`: the user's own model pruned one-shot with prune-l/s/r at
weight or filter granularity, measured, and written back in its own kind (ONNX in, ONNX out)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sparsebench.cli import main
from sparsebench.loading import load_model
from sparsebench.pruning.oneshot import chains_of, one_shot_prune
from sparsebench.sweep import pruned_layers

QUICK = ["--min-calls", "2", "--min-time", "0.01", "--warmup", "1", "--no-plot"]


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 24), nn.GELU(),
                         nn.Linear(24, 4)).eval()


def _onnx_mlp(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.onnx"
    torch.onnx.export(_mlp(), (torch.zeros(1, 16),), str(path), input_names=["x"],
                      output_names=["y"], dynamo=False)
    return path


def _sweep(model: Path, tmp_path: Path, *extra: str, formats: str = "csr",
           backends: str = "scipy") -> dict:
    out = tmp_path / "sweep.json"
    rc = main(["sweep", str(model), "--sparsities", "50,90", "--formats", formats,
               "--backends", backends, "--json", str(out),
               "--save-models", str(tmp_path / "pruned"), *QUICK, *extra])
    assert rc == 0
    return json.loads(out.read_text())


class _Args:
    """The sweep's arguments that ``make_models`` reads."""

    def __init__(self, model: Path, target: str, granularity: str) -> None:
        self.model, self.target, self.granularity = str(model), target, granularity
        self.arch, self.input_shape, self.trust, self.seed = None, None, False, 0


def _onnx_weights(path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def test_sweep_of_an_onnx_file(tmp_path: Path) -> None:
    src = _onnx_mlp(tmp_path)
    doc = _sweep(src, tmp_path, "--target", "prune-l", formats="dense",
                 backends="onnxruntime")
    assert doc["sweep"]["target"] == "prune-l" and doc["sweep"]["granularity"] == "weight"
    assert doc["sweep"]["sparsity_of"] == {"mlp-s50": 50, "mlp-s90": 90}
    assert {r["status"] for r in doc["rows"]} == {"ok"} and len(doc["rows"]) == 2
    assert sorted(p.name for p in (tmp_path / "pruned").iterdir()) == ["mlp-s50.onnx",
                                                                        "mlp-s90.onnx"]
    kinds = {m["kind"] for m in doc["models"].values()}
    assert kinds == {"onnx"}  # ORT dense ran the pruned ONNX bytes themselves


@pytest.mark.parametrize("target,granularity", [("prune-s", "weight"), ("prune-r", "weight"),
                                                ("prune-l", "filter")])
def test_onnx_in_onnx_out(tmp_path: Path, target: str, granularity: str) -> None:
    import onnxruntime as ort

    from sparsebench.sweep import make_models

    src = _onnx_mlp(tmp_path)
    base, paths, trust = make_models(_Args(src, target, granularity), [50.0, 90.0],
                                     tmp_path / "pruned")
    assert base == "mlp" and not trust
    saved = sorted(Path(p) for p in paths)
    assert [p.name for p in saved] == ["mlp-s50.onnx", "mlp-s90.onnx"]
    original = load_model(src)
    sources = original.module.weight_sources
    layers = pruned_layers(original.module)
    assert len(layers) == 2
    before = _onnx_weights(src)
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))
    for path, s in zip(saved, (0.5, 0.9)):
        pruned = copy.deepcopy(original.module)
        chains = chains_of(pruned, (16,)) if granularity == "filter" else None
        one_shot_prune(pruned, s, layers, target=target, granularity=granularity, chains=chains)
        with torch.no_grad():
            want = pruned(x).numpy()
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = np.concatenate([sess.run(None, {"x": x[i:i + 1].numpy()})[0] for i in range(3)])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        weights = _onnx_weights(path)
        for layer in layers:  # the initializers hold the pruned torch weights
            name, transposed = sources[layer]
            w = pruned.get_submodule(layer).weight.detach().numpy()
            assert np.array_equal(weights[name] == 0, (w.T if transposed else w) == 0)
        first, second = (sources[n][0] for n in layers)
        units = before[first].shape[0] if not sources[layers[0]][1] else before[first].shape[1]
        if granularity == "weight":  # exactly the requested sparsity in each pruned layer
            for name in (first, second):
                assert int((weights[name] == 0).sum()) == round(s * weights[name].size)
        else:  # whole neurons: rows of the first layer gone, exactly round(s * units)
            rows = weights[first] if not sources[layers[0]][1] else weights[first].T
            dead = (rows == 0).all(1)
            assert int(dead.sum()) == round(s * units)
            if target == "prune-l":  # the largest-norm neurons went
                norms = np.linalg.norm(before[first].reshape(rows.shape), axis=1)
                assert norms[dead].min() >= norms[~dead].max()
        head = sources[next(n for n, m in original.module.named_modules()
                            if isinstance(m, nn.Linear) and n not in layers)][0]
        if granularity == "weight":
            assert np.array_equal(weights[head], before[head])  # the head stays as it was
        else:  # its units are not pruned; only its inputs from the removed neurons are zero
            w = pruned.get_submodule(layers[1]).weight.detach()
            fed = ~(w == 0).all(1).numpy()
            cols = weights[head] if sources[layers[1]][1] else weights[head].T
            assert np.array_equal(cols[fed], (before[head] if sources[layers[1]][1]
                                              else before[head].T)[fed])
            assert not cols[~fed].any()


def test_pickled_module_in_pickled_module_out(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 3))
    model.input_shape = (1, 8, 8)
    src = tmp_path / "net.pt"
    torch.save(model, src)
    doc = _sweep(src, tmp_path, "--target", "prune-r")
    assert {r["status"] for r in doc["rows"]} == {"ok"}
    assert doc["sweep"]["pruned_layers"] == ["2", "5"]  # not the first conv, not the head
    for s in (50, 90):
        pruned = torch.load(tmp_path / "pruned" / f"net-s{s}.pt", weights_only=False)
        for layer in ("2", "5"):
            w = pruned.get_submodule(layer).weight
            assert int((w == 0).sum()) == round(s / 100 * w.numel())
        assert bool((pruned[0].weight == model[0].weight).all())
        assert bool((pruned[7].weight == model[7].weight).all())
        kept = pruned[2].weight != 0  # prune-r: the survivors keep their values
        assert bool((pruned[2].weight[kept] == model[2].weight[kept]).all())


@pytest.mark.parametrize("target", ["prune-l", "prune-s", "prune-r"])
def test_one_shot_targets_at_weight_granularity(target: str) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(50, 20)
    layer.weight.data[0, :5] = 0.0  # already zero: counts towards the sparsity
    mags = layer.weight.detach().abs().clone()
    model = nn.Sequential(layer)
    one_shot_prune(model, 0.6, ["0"], target=target, seed=3)
    w = layer.weight.detach()
    assert int((w == 0).sum()) == 600
    gone, kept = mags[(w == 0) & (mags > 0)], mags[w != 0]
    if target == "prune-s":
        assert float(gone.max()) <= float(kept.min())
    elif target == "prune-l":
        assert float(gone.min()) >= float(kept.max())
    else:  # random: neither the largest nor the smallest
        assert float(gone.max()) > float(kept.min()) and float(gone.min()) < float(kept.max())


def test_filter_granularity_removes_ffn_neurons_whole() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 8), nn.Linear(8, 2)).eval()
    x = torch.randn(4, 8)
    masks = one_shot_prune(model, 0.75, ["0"], granularity="filter",
                           chains=chains_of(model, (8,)))
    dead = (model[0].weight == 0).all(1)
    assert int(dead.sum()) == 24
    assert bool((model[0].bias[dead] == 0).all()) and bool((model[2].weight[:, dead] == 0).all())
    assert bool((model[2].weight[:, ~dead] != 0).all()) and set(masks) == {"0.weight", "2.weight"}
    with torch.no_grad():  # the output is that of the FFN without those neurons
        h = nn.functional.gelu(x @ model[0].weight[~dead].T + model[0].bias[~dead])
        want = model[3](h @ model[2].weight[:, ~dead].T + model[2].bias)
        assert torch.allclose(model(x), want, atol=1e-6)


@pytest.mark.parametrize("argv,message", [
    (["--target", "prune-x"], "unknown target 'prune-x'; choose from: prune-l, prune-s, prune-r"),
    (["--sparsities", "50,100"], "percentages in [0, 100)"),
    (["--granularity", "heads"], "unknown granularity 'heads'"),
])
def test_bad_options_are_one_line(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    src = tmp_path / "m.pt"
    torch.save(_mlp(), src)
    assert main(["sweep", str(src), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_file_that_is_not_a_model(tmp_path: Path, capsys) -> None:
    junk = tmp_path / "notes.onnx"
    junk.write_bytes(b"hello, this is not a model\n" * 4)
    assert main(["sweep", str(junk), "--no-plot"]) == 2
    err = capsys.readouterr().err
    assert "is not a valid ONNX model" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "sweep-notes.png").exists()


def test_saved_models_are_never_overwritten_unasked(tmp_path: Path, capsys) -> None:
    (tmp_path / "pruned").mkdir()
    (tmp_path / "pruned" / "keep.txt").write_text("mine")
    src = tmp_path / "m.pt"
    torch.save(_mlp(), src)
    assert main(["sweep", str(src), "--save-models", str(tmp_path / "pruned"), "--no-plot"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "pruned" / "keep.txt").read_text() == "mine"


class _TimmStyleAttention(nn.Module):
    """timm's Attention layout: one packed qkv Linear, an output proj, ``num_heads``."""

    def __init__(self, dim: int = 16, num_heads: int = 4) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        heads = nn.functional.scaled_dot_product_attention(q, k, v)  # b, heads, n, d
        if drop is not None:  # the reference: those heads' outputs removed
            heads = heads * (~drop).view(1, -1, 1, 1)
        return self.proj(heads.transpose(1, 2).reshape(b, n, c))


def test_filter_granularity_prunes_attention_heads() -> None:
    from sparsebench.pruning.oneshot import attention_heads, ffn_pairs

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), _TimmStyleAttention(), nn.Linear(16, 2)).eval()
    mha = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, batch_first=True).eval()
    assert [b.heads for b in attention_heads(model)] == [4]
    assert [b.out for b in attention_heads(mha)] == ["self_attn.out_proj"]
    x = torch.randn(2, 5, 8)
    before = copy.deepcopy(model)
    masks = one_shot_prune(model, 0.5, ["1.qkv", "1.proj"], granularity="filter")
    assert set(masks) == {"1.qkv.weight", "1.proj.weight"}
    dead = (model[1].proj.weight.reshape(16, 4, 4) == 0).all(2).all(0)
    assert int(dead.sum()) == 2  # round(0.5 * 4) whole heads
    qkv = model[1].qkv.weight.reshape(3, 4, 4, 16)
    assert bool((qkv[:, dead] == 0).all()) and bool((qkv[:, ~dead] != 0).all())
    assert bool((model[1].qkv.bias.reshape(3, 4, 4)[:, dead] == 0).all())
    assert bool((model[1].proj.weight.reshape(16, 4, 4)[:, ~dead] != 0).all())
    with torch.no_grad():  # the output is the unpruned model's without those heads
        want = before[2](before[1](before[0](x), drop=dead))
        assert torch.allclose(model(x), want, atol=1e-6)
    assert [(p.name, p.consumer) for p in ffn_pairs(mha)] == [("linear1", "linear2")]
    one_shot_prune(mha, 0.75, ["self_attn.out_proj", "linear1"], granularity="filter",
                   chains=ffn_pairs(mha))
    w = mha.self_attn.in_proj_weight.reshape(3, 4, 4, 16)
    assert int((w == 0).all(3).all(2).all(0).sum()) == 3  # heads: 3 of 4
    gone = (mha.linear1.weight == 0).all(1)
    assert int(gone.sum()) == 24  # FFN neurons: 24 of 32, with their linear2 columns
    assert bool((mha.linear2.weight[:, gone] == 0).all())
    assert bool((mha.linear2.weight[:, ~gone] != 0).all())
    assert bool(torch.isfinite(mha(torch.randn(2, 5, 16))).all())
