"""torch models as people save them (issue 12 item 4) and no silent no-ops (item 7).

torch.nn.utils.prune state, HF Conv1D / MultiheadAttention / TransformerEncoderLayer
projections converted by every sparse format and backend (outputs against the model as given),
recurrent layers listed as dense, TorchScript files from plain torch, torch.export archives,
and the ``layers`` count every row carries.
"""

from __future__ import annotations

import json
import zipfile

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from conftest import rel_err
from sparsebench.archs import create_model, default_input
from sparsebench.backends import BACKENDS, get_backend
from sparsebench.cli import main
from sparsebench.errors import SparsebenchError
from sparsebench.formats import FORMATS, convert, csr_nbytes
from sparsebench.loading import load_model
from sparsebench.measure.worker import run_job

SPARSE = [f for f in FORMATS.names() if f in ("csr", "bsr", "structured")]
FAST = {"min_calls": 1, "warmup_calls": 0, "min_seconds": 0}


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def job(path, fmt: str, backend: str, **extra) -> dict:
    return {"model": "m", "path": str(path), "format": fmt, "backend": backend, "batch": 2,
            "threads": 1, "timing": FAST, **extra}


# --- torch.nn.utils.prune -------------------------------------------------------------------

def _pruned_lenet300() -> nn.Module:
    torch.manual_seed(0)
    model = create_model("lenet300", *default_input("lenet300")).eval()
    for mod in model.modules():
        if isinstance(mod, nn.Linear):
            prune.l1_unstructured(mod, "weight", amount=0.9)
    return model


def _expected_csr_bytes(model: nn.Module) -> int:
    """4*nnz + 2*nnz (int16 columns) + 4*(rows+1) + 4*bias per layer, from the masks."""
    total = 0
    for mod in model.modules():
        if isinstance(mod, nn.Linear):
            nnz = int(mod.weight_mask.sum())
            total += csr_nbytes(nnz, mod.out_features, 2, mod.out_features)
    return total


@pytest.fixture(scope="module")
def pruned_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("prune")
    model = _pruned_lenet300()
    torch.save(model, d / "hooks.pt")
    torch.save(model.state_dict(), d / "state.pt")
    return model, d / "hooks.pt", d / "state.pt"


def test_prune_state_is_applied_at_load(pruned_files):
    model, hooks, state = pruned_files
    x = torch.randn(3, 1, 28, 28)
    with torch.inference_mode():
        ref = model(x)
    expected = _expected_csr_bytes(model)
    assert expected == 163012  # 26,620 kept weights of 266,200
    for loaded in (load_model(hooks, trust=True), load_model(state, arch="lenet300")):
        names = [n for n, _ in loaded.module.named_parameters()]
        assert not any(n.endswith("_orig") for n in names)
        assert not any(n.endswith("_mask") for n, _ in loaded.module.named_buffers())
        assert any("prune masks" in note for note in loaded.notes)
        weights = [m.weight for m in loaded.module.modules() if isinstance(m, nn.Linear)]
        zeros = sum(int((w == 0).sum()) for w in weights)
        assert zeros / sum(w.numel() for w in weights) == pytest.approx(0.9, abs=1e-6)
        with torch.inference_mode():
            assert torch.equal(loaded.module(x), ref)
        csr = convert(loaded.module, "csr")
        assert csr.weight_bytes == expected
        assert csr.layer_counts == {"converted": 3, "total": 3, "dense": {}}


def test_prune_hooks_pickle_needs_trust(pruned_files, capsys):
    _, hooks, state = pruned_files
    code, _, err = run_cli(["info", str(hooks)], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "torch.nn.utils.prune.L1Unstructured" in err and "--trust" in err
    for args in (["info", str(hooks), "--trust"], ["info", str(state), "--arch", "lenet300"]):
        code, out, err = run_cli(args, capsys)
        assert code == 0, err
        total = next(line for line in out.splitlines() if "total" in line)
        assert "27,030" in total and "89.9%" in total  # 26,620 weights + 410 biases of 266,610
        csr = next(line for line in out.splitlines() if line.strip("│ ").startswith("csr"))
        assert "163,012" in csr and "3/3" in csr


# --- layers beyond Conv2d/Linear --------------------------------------------------------------

class _Encoder(nn.Module):
    def __init__(self, batch_first: bool = True) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0,
                                                batch_first=batch_first)
        self.head = nn.Linear(32, 5)
        self.input_shape = (6, 32)

    def forward(self, x):
        if not self.layer.self_attn.batch_first:
            return self.head(self.layer(x.transpose(0, 1)).transpose(0, 1))
        return self.head(self.layer(x))


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.input_shape = (6, 32)

    def forward(self, x):
        out, _ = self.attn(x, x, x, attn_mask=torch.ones(6, 6, dtype=torch.bool).triu(1))
        return out


class _Gpt2Mlp(nn.Module):
    """GPT-2's attention input and MLP projections (HF Conv1D: weight (in, out))."""

    def __init__(self) -> None:
        super().__init__()
        from transformers.pytorch_utils import Conv1D

        self.c_fc, self.c_proj = Conv1D(48, 32), Conv1D(32, 48)
        nn.init.normal_(self.c_fc.bias)
        self.input_shape = (6, 32)

    def forward(self, x):
        return self.c_proj(torch.relu(self.c_fc(x)))


class _Recurrent(nn.Module):
    def __init__(self, cell: type = nn.LSTM) -> None:
        super().__init__()
        self.rnn = cell(16, 16, batch_first=True)
        self.input_shape = (4, 16)

    def forward(self, x):
        return self.rnn(x)[0]


class _Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn, self.fc = nn.GRU(16, 16, batch_first=True), nn.Linear(16, 8)
        self.input_shape = (4, 16)

    def forward(self, x):
        return self.fc(self.rnn(x)[0])


def _pruned(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_((torch.rand(p.shape, generator=gen) > 0.9).float())
    return model.eval()


LAYER_MODELS = {  # name -> (factory, layers the sparse formats convert)
    "encoder-layer": (_Encoder, 7),          # q, k, v, out_proj, linear1, linear2, head
    "encoder-layer-seq-first": (lambda: _Encoder(False), 7),
    "multihead-attention": (_Attention, 4),
    "hf-conv1d": (_Gpt2Mlp, 2),
}


def _executions():
    for fmt in SPARSE:
        for name in BACKENDS.names():
            if get_backend(name).supports(fmt):
                yield fmt, name


@pytest.mark.parametrize("fmt,backend", list(_executions()))
@pytest.mark.parametrize("model_name", list(LAYER_MODELS))
def test_projections_are_converted_and_match_the_model(model_name, fmt, backend):
    if model_name == "hf-conv1d":
        pytest.importorskip("transformers")
    reason = get_backend(backend).unavailable()
    if reason:
        pytest.skip(reason)
    factory, layers = LAYER_MODELS[model_name]
    model = _pruned(factory())
    x = torch.randn(2, *model.input_shape)
    with torch.inference_mode():
        ref = model(x)
    converted = convert(model, fmt)
    counts = converted.layer_counts
    assert counts["total"] == layers
    if fmt != "structured":
        assert counts == {"converted": layers, "total": layers, "dense": {}}
        assert len(converted.layers) == layers
        nnz = sum(int((p != 0).sum()) for p in model.parameters() if p.dim() == 2)
        assert sum(s.nnz for s in converted.storage) == nnz  # every weight matrix is a layer
    y = get_backend(backend).prepare(converted, threads=1, batch=2).run(x)
    assert rel_err(y, ref) <= 1e-4


@pytest.mark.parametrize("kwargs", [{}, {"kdim": 12, "vdim": 20}, {"bias": False},
                                    {"batch_first": False}])
def test_split_attention_computes_multihead_attention(kwargs):
    from sparsebench.formats.layers import SplitAttention

    torch.manual_seed(0)
    kwargs = {"batch_first": True, **kwargs}
    mha = nn.MultiheadAttention(16, 4, **kwargs).eval()
    split = SplitAttention.from_attention(mha).eval()
    lead = (lambda n: (2, n)) if mha.batch_first else (lambda n: (n, 2))
    q, k, v = torch.randn(*lead(5), 16), torch.randn(*lead(7), mha.kdim), \
        torch.randn(*lead(7), mha.vdim)
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[1, -2:] = True
    for extra in ({}, {"key_padding_mask": padding}, {"attn_mask": torch.randn(5, 7)},
                  {"attn_mask": torch.ones(5, 7, dtype=torch.bool).triu(1),
                   "average_attn_weights": False}):
        with torch.inference_mode():
            (a, wa), (b, wb) = mha(q, k, v, **extra), split(q, k, v, **extra)
        assert rel_err(b, a) <= 1e-6 and rel_err(wb, wa) <= 1e-6


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN])
def test_recurrent_layers_stay_dense_with_a_reason(cell):
    model = _pruned(_Recurrent(cell))
    for fmt in SPARSE:
        converted = convert(model, fmt)
        assert converted.layer_counts["converted"] == 0
        assert converted.layer_counts["total"] == 1
        assert "recurrent weights are not converted" in converted.layer_counts["dense"]["rnn"]
        assert converted.no_layer_reason().startswith(f"{fmt} converted no layer (kept dense: "
                                                      f"{cell.__name__} recurrent")
    assert convert(model, "dense").no_layer_reason() is None


def test_rows_skip_a_format_that_converted_nothing_and_count_layers(tmp_path):
    only_rnn, mixed = tmp_path / "rnn.pt", tmp_path / "mixed.pt"
    torch.save(_pruned(_Recurrent()), only_rnn)
    torch.save(_pruned(_Mixed()), mixed)
    row = run_job(job(only_rnn, "csr", "torch-sparse", trust=True))
    assert row["status"] == "skipped"
    assert row["reason"].startswith("csr converted no layer (kept dense: LSTM recurrent")
    assert row["layers"]["converted"] == 0 and row["layers"]["total"] == 1
    row = run_job(job(mixed, "csr", "torch-sparse", trust=True))
    assert row["status"] == "ok" and row["max_rel_err"] <= 1e-4
    assert row["layers"]["converted"] == 1 and row["layers"]["total"] == 2
    assert list(row["layers"]["dense"]) == ["rnn"]
    json.dumps(row)  # the results file stores it as JSON
    row = run_job(job(mixed, "dense", "torch", trust=True))
    assert row["status"] == "ok" and row["layers"] == {"converted": 2, "total": 2, "dense": {}}


# --- TorchScript and torch.export from plain torch ----------------------------------------------

def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(8 * 16 * 16, 10)).eval()


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_from_plain_torch_gets_its_input_shape(tmp_path, how, capsys):
    model = _cnn()
    path = tmp_path / f"{how}.pt"
    made = torch.jit.script(model) if how == "script" else torch.jit.trace(
        model, torch.zeros(1, 3, 32, 32))
    made.save(str(path))
    loaded = load_model(path)
    assert loaded.kind == "torchscript" and loaded.input_shape == (3, 32, 32)
    assert any("inferred from the first layer" in n for n in loaded.notes)
    row = run_job(job(path, "dense", "torch"))
    assert row["status"] == "ok", row["reason"]
    assert row["max_rel_err"] == 0 and row["layers"]["total"] == 2
    row = run_job(job(path, "csr", "torch-sparse"))  # its graph, exported to ONNX, converted
    assert row["status"] == "ok", row["reason"]
    assert row["max_rel_err"] <= 1e-4 and row["layers"]["converted"] == 2
    code, out, _ = run_cli(["info", str(path)], capsys)
    assert code == 0 and "input 3x32x32" in out


def test_torchscript_that_fits_several_inputs_asks_for_the_shape(tmp_path, capsys):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2)).eval()
    path = tmp_path / "any_size.pt"
    torch.jit.script(model).save(str(path))
    with pytest.raises(SparsebenchError, match="runs on several input sizes.*--input-shape"):
        load_model(path)
    code, _, err = run_cli(["info", str(path)], capsys)
    assert code == 2 and err.count("\n") == 1 and "--input-shape" in err
    assert load_model(path, input_shape=(3, 20, 20)).input_shape == (3, 20, 20)


def _exported(tmp_path, dynamic: bool = False) -> tuple[nn.Module, object]:
    model = _pruned(_cnn())
    path = tmp_path / "cnn.pt2"
    shapes = ({0: torch.export.Dim("batch", min=1, max=64)},) if dynamic else None
    torch.export.save(torch.export.export(model, (torch.zeros(2, 3, 32, 32)[: 2 if dynamic
                                                                            else 1],),
                                          dynamic_shapes=shapes), str(path))
    return model, path


def test_torch_export_archive_is_measured_like_a_module(tmp_path):
    model, path = _exported(tmp_path)
    loaded = load_model(path)  # raw tensors only: no full unpickling, no --trust
    assert loaded.kind == "exported-program" and loaded.input_shape == (3, 32, 32)
    assert any("static batch of 1" in n for n in loaded.notes)
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        ref = model(x)
    converted = convert(loaded.module, "csr")
    assert converted.layer_counts == {"converted": 2, "total": 2, "dense": {}}
    assert converted.weight_bytes == convert(model, "csr", example=x).weight_bytes
    y = get_backend("torch-sparse").prepare(converted, threads=1, batch=1).run(x)
    assert rel_err(y, ref) <= 1e-4


def test_torch_export_archive_with_a_dynamic_batch_is_measured(tmp_path):
    _, path = _exported(tmp_path, dynamic=True)
    assert not any("static batch" in n for n in load_model(path).notes)
    for fmt, backend in (("dense", "torch"), ("csr", "torch-sparse")):
        row = run_job(job(path, fmt, backend))  # batch 2
        assert row["status"] == "ok", row["reason"]
        assert row["max_rel_err"] <= 1e-4 and row["layers"]["converted"] == 2


def test_torch_export_archive_with_pickles_needs_trust(tmp_path):
    _, path = _exported(tmp_path)
    pickled = tmp_path / "pickled.pt2"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(pickled, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("model_weights_config.json"):
                config = json.loads(data)
                next(iter(config["config"].values()))["use_pickle"] = True
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    with pytest.raises(SparsebenchError, match="needs full unpickling .*pass --trust"):
        load_model(pickled)
