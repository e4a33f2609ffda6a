"""Embedded profiling: targets, encodings and their byte formulas, the arena plan, the graph,
the report and verdict, the C export (run on the host) and one real cross-build under QEMU."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparsebench.archs import create_model
from sparsebench.checkpoint import save_checkpoint
from sparsebench.cli import main
from sparsebench.errors import SparsebenchError
from sparsebench.embedded import quant
from sparsebench.embedded.export_c import export_c, weight_arrays, weight_arrays_int8
from sparsebench.formats import csr_nbytes
from sparsebench.embedded.arena import Buffer, plan, plan_graph
from sparsebench.embedded.encodings import (BUILDABLE, ENCODINGS, INT8_C_ENCODINGS, break_even,
                                             cheapest, layer_bytes, pad4, quantize_rows)
from sparsebench.embedded.lowering import trace
from sparsebench.embedded.summary import profile_model
from sparsebench.embedded.targets import builtin_names, list_targets, load_target

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "models"
HAS_CC = shutil.which("cc") is not None
HAS_ARM = all(shutil.which(t) for t in ("arm-none-eabi-gcc", "qemu-system-arm"))
HAS_FMNIST = Path("/usr/share/datasets/fashion-mnist").is_dir()
TARGET_KEYS = ('name = "tiny"\ndescription = "tiny MCU"\nclock_mhz = 48\nram_kib = 16\n'
               'flash_kib = 64\nfp32_mac_cycles = 4\nint8_mac_cycles = 1\n'
               'sparse_fp32_mac_cycles = 8\nsparse_int8_mac_cycles = 6\n')


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def zoo(name: str, tmp_path: Path) -> Path:
    """A zoo checkpoint, or a stand-in lenet5 with fc1 80% row-pruned when the zoo is absent."""
    path = ZOO / f"{name}.pt"
    if path.exists():
        return path
    torch.manual_seed(0)
    model = create_model("lenet5")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if name != "lenet5_dense":
        state["fc1.weight"][:96] = 0
        state["fc1.bias"][:96] = 0
    out = tmp_path / f"{name}.pt"
    save_checkpoint({"arch": "lenet5", "arch_kwargs": {"in_channels": 1, "input_size": 28,
                                                       "num_classes": 10, "dropout": 0.0},
                     "input_shape": [1, 28, 28], "state_dict": state, "method": "prune-l"}, out)
    return out


# ---------------------------------------------------------------------------------- targets


def test_shipped_targets_cite_sources_and_parse():
    names = builtin_names()
    assert {"cortex-m4", "cortex-m7", "cortex-m55", "cortex-a53", "cortex-a72", "host"} <= set(names)
    for t in list_targets():
        assert t.sources and t.ram_bytes > 0 and t.clock_mhz > 0, t.name
        assert t.build is not None, t.name
    m7 = load_target("cortex-m7")
    assert m7.flash_bytes == 1024 * 1024 and m7.ram_bytes == 320 * 1024
    assert m7.build.machine == "mps2-an500" and m7.weights_in == "flash"
    assert load_target("cortex-a53").flash_bytes is None


def test_targets_command_lists_them(capsys):
    code, out, _ = run_cli(["targets"], capsys)
    assert code == 0
    for name in ("cortex-m4", "cortex-m7", "cortex-m55", "cortex-a53", "cortex-a72", "host"):
        assert name in out
    code, out, _ = run_cli(["targets", "--json"], capsys)
    assert code == 0 and {t["name"] for t in json.loads(out)} >= {"cortex-m7"}


def test_user_target_file(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TARGET_KEYS)
    t = load_target(str(path))
    assert (t.name, t.ram_bytes, t.flash_bytes, t.weights_in) == ("tiny", 16384, 65536, "flash")


@pytest.mark.parametrize("text, message", [
    ('name = "x"\nclock_mhz = [1\n', "is not valid TOML"),
    ('name = "x"\n', "missing required key(s) description"),
    (TARGET_KEYS + "ram_kb = 3\n", "unknown key 'ram_kb'"),
    (TARGET_KEYS.replace("ram_kib = 16", 'ram_kib = "16"'), "'ram_kib' must be int or float"),
    (TARGET_KEYS.replace("clock_mhz = 48", "clock_mhz = -1"), "'clock_mhz' must be positive"),
    (TARGET_KEYS + '[build]\nkind = "baremetal-m"\ncc = "gcc"\n', "needs qemu, machine"),
])
def test_bad_target_file_is_one_line_exit_2(text, message, tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    code, _, err = run_cli(["profile", str(zoo("lenet5_prune_l", tmp_path)), "--target",
                            str(path), "--no-host"], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_unknown_target_is_exit_2(capsys, tmp_path):
    code, _, err = run_cli(["profile", str(zoo("lenet5_prune_l", tmp_path)), "--target",
                            "cortex-m9"], capsys)
    assert code == 2 and "unknown target 'cortex-m9'; choose from: cortex-a53" in err
    code, _, err = run_cli(["profile", str(zoo("lenet5_prune_l", tmp_path)), "--target",
                            str(tmp_path / "nope.toml")], capsys)
    assert code == 2 and "target file not found" in err


# -------------------------------------------------------------------------------- encodings


def test_encoding_bytes_worked_example():
    """Linear(6, 4) with 7 nonzeros and one empty row (the example of docs/formats.md)."""
    w = np.zeros((4, 6), np.float32)
    w[0, [0, 3]] = 1.0
    w[1, 5] = 2.0
    w[3, :4] = 3.0
    stats, b = layer_bytes(w, 4, (2, 2))
    assert (stats.nnz, stats.csr8_fillers, stats.nblocks) == (7, 0, 5)
    assert b["fp32-dense"] == 112                       # formats: dense 112
    assert b["fp32-csr16"] == 78 + 2                    # formats: csr-i16 78, + 2 alignment
    assert b["fp32-csr32"] == 92                        # formats: csr-i32 92
    assert b["int8-dense"] == 24 + 16 + 4 + 16          # values, 4 multipliers, shifts, bias
    assert b["fp32-bitmask"] == 4 + 28 + 16             # 24 bits -> 3 B -> 4, values, bias
    assert b["int8-csr8"] == 8 + 8 + 20 + 16 + 4 + 16   # values, idx, rowptr, requant, bias
    assert b["fp32-bsr"] == 80 + 12 + 12 + 16           # 5 2x2 blocks, 5 u16 idx, 3 ptrs, bias
    assert b["int8-bitmask"] == 4 + 8 + 16 + 4 + 16     # mask, values, requant, bias
    assert cheapest(b) == "fp32-bitmask"                # a tie at 48 B: goes to the first listed
    assert cheapest(b, INT8_C_ENCODINGS) == "int8-bitmask"
    assert cheapest(b, ("fp32-dense", "fp32-csr16")) == "fp32-csr16"


def test_csr8_fillers_for_long_gaps():
    w = np.zeros((2, 1000), np.float32)
    w[0, 999] = 1.0                  # gap 999: 3 fillers
    w[1, [0, 300, 600]] = 1.0        # gaps 0, 299, 299: 2 fillers
    stats, b = layer_bytes(w, 0)
    assert stats.csr8_fillers == 5
    assert b["fp32-csr8"] == 4 * 9 + pad4(9) + 4 * 3


def test_break_even_sparsities():
    assert break_even("int8-csr16", "int8-dense") == pytest.approx(2 / 3)   # the issue's ~67%
    assert break_even("fp32-csr16", "fp32-dense") == pytest.approx(1 / 3)
    assert break_even("fp32-csr32", "fp32-dense") == pytest.approx(1 / 2)
    assert break_even("fp32-csr16", "int8-dense") == pytest.approx(5 / 6)
    assert break_even("fp32-bitmask", "fp32-dense") == pytest.approx(1 / 32)
    assert break_even("fp32-csr16", "fp32-bitmask") == pytest.approx(15 / 16)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 12), cols=st.integers(1, 40), density=st.floats(0, 1),
       seed=st.integers(0, 2 ** 16), bias=st.booleans())
def test_export_arrays_match_the_byte_formulas(rows, cols, density, seed, bias):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * (rng.random((rows, cols)) < density)).astype(
        np.float32)
    op = trace(nn.Sequential(nn.Flatten(), nn.Linear(cols, rows, bias=bias)), (cols,)).ops[0]
    op.weight = w
    if bias:
        op.bias = rng.standard_normal(rows).astype(np.float32)
    _, sizes = layer_bytes(w, op.bias_len)
    layer = quant._qlayer(op, quant.QParams(0.05, -3), quant.QParams(0.1, 5))
    for enc in BUILDABLE:
        arrays, _ = weight_arrays_int8("fc", op, enc, layer) if enc.startswith("int8") else \
            weight_arrays("fc", op, enc)
        assert sum(a.nbytes for a in arrays) == sizes[enc], enc
    _, sizes = layer_bytes(w, op.bias_len, (3, 5))
    for enc in ("fp32-bsr", "int8-bsr"):
        arrays, _ = weight_arrays_int8("fc", op, enc, layer, (3, 5)) if "int8" in enc else \
            weight_arrays("fc", op, enc, (3, 5))
        assert sum(a.nbytes for a in arrays) == sizes[enc], enc
    nnz = int(np.count_nonzero(w))
    assert sizes["fp32-csr16"] - pad4(2 * nnz) + 2 * nnz == csr_nbytes(nnz, rows, 2, op.bias_len)
    assert all(v is None or v % 4 == 0 for v in sizes.values())
    q, scale = quantize_rows(w)
    assert np.all(np.abs(q.astype(np.float32) * scale[:, None] - w) <= scale[:, None] / 2 + 1e-7)


def test_int8_requantisation_is_tflites():
    """QuantizeMultiplier + MultiplyByQuantizedMultiplier: Q31 multiplier, rounding half away
    from zero, against exact rational arithmetic."""
    assert quant.quantize_multiplier(0.5) == (1 << 30, 0)
    assert quant.quantize_multiplier(0.25) == (1 << 30, -1)
    assert quant.quantize_multiplier(1.0) == (1 << 30, 1)
    assert quant.quantize_multiplier(0.0) == (0, 0)
    rng = np.random.default_rng(0)
    for m in np.exp(rng.uniform(np.log(1e-6), np.log(3.0), 200)):
        m0, shift = quant.quantize_multiplier(float(m))
        assert 1 << 30 <= m0 < 1 << 31 and abs(m0 * 2.0 ** (shift - 31) / m - 1) < 1e-9
        acc = rng.integers(-(1 << 24), 1 << 24, 64)
        got = quant.requantize(acc, m0, shift)
        exact = acc * (m0 * 2.0 ** (shift - 31))
        # one rounding for a left shift, two (<= 0.5 + 0.25) for a right shift, as TFLite
        bound = 0.5 if shift >= 0 else 0.5 + 2.0 ** (shift - 1)
        assert np.all(np.abs(got - exact) <= bound + 1e-9)
    # gemmlowp's doubling high multiply rounds halves up (-1.5 -> -1), the divide by a power
    # of two rounds them away from zero (-1.5 -> -2)
    assert quant.requantize(np.array([3, -3, 1, -1]), 1 << 30, 0).tolist() == [2, -1, 1, 0]
    assert quant.requantize(np.array([6, -6, 2, -2]), 1 << 30, -1).tolist() == [2, -2, 1, -1]
    assert quant.round_div(np.array([5, -5, 4, -4]), 2).tolist() == [3, -3, 2, -2]
    p = quant.choose_qparams(-1.0, 3.0)
    assert p.zero_point == -64 and p.quantize(np.array([0.0]))[0] == p.zero_point


# ------------------------------------------------------------------------------------ arena


def test_arena_first_fit_known_plan():
    bufs = [Buffer("a", 100, 0, 1), Buffer("b", 50, 1, 2), Buffer("c", 100, 2, 3),
            Buffer("d", 30, 3, 3)]
    p = plan(bufs)
    assert [b.offset for b in bufs] == [0, 100, 0, 100]
    assert p.size == 150 and p.lower_bound == 150


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 64), st.integers(0, 9), st.integers(0, 4)),
                min_size=1, max_size=12))
def test_arena_never_overlaps_live_buffers(spec):
    bufs = [Buffer(str(i), 16 * s, f, f + d) for i, (s, f, d) in enumerate(spec)]
    p = plan(bufs)
    for i, a in enumerate(bufs):
        for b in bufs[i + 1:]:
            if a.first <= b.last and b.first <= a.last:
                assert a.offset + a.size <= b.offset or b.offset + b.size <= a.offset
    assert p.size >= p.lower_bound


# ------------------------------------------------------------------------------------ graph


class _Block(nn.Module):
    """conv-bn-relu, conv-bn, residual add + relu, per-channel mul, pools, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.input_shape = (3, 16, 16)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, stride=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.down = nn.Conv2d(8, 4, 2, stride=2, dilation=1)
        self.register_buffer("mask", (torch.arange(8) % 3 != 0).float())
        self.fc = nn.Linear(4 * 2 * 2, 5)
        for bn in (self.bn1, self.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)) + y) * self.mask.view(1, -1, 1, 1)
        y = nn.functional.max_pool2d(y, 3, stride=2, padding=1)
        y = nn.functional.avg_pool2d(self.down(y), 1)
        y = nn.functional.adaptive_avg_pool2d(y, 2)
        return self.fc(torch.flatten(y, 1))


def test_graph_folds_batchnorm_fuses_relu_and_aliases_flatten():
    model = create_model("lenet5").eval()
    g = trace(model, model.input_shape)
    assert [op.kind for op in g.ops] == ["conv", "maxpool", "conv", "maxpool", "linear",
                                        "linear", "linear"]
    assert [op.act for op in g.ops] == ["relu", None, "relu", None, "relu", "relu", None]
    assert g.ops[4].in_shape == (16, 5, 5)            # flatten is an alias, not an op
    assert g.ops[0].dense_macs == 6 * 25 * 28 * 28
    g = trace(_Block().eval(), (3, 16, 16))
    kinds = [op.kind for op in g.ops]
    assert "bn" not in kinds and kinds.count("add") == 1 and "mul_const" in kinds
    assert g.ops[0].bias is not None                  # BN folded into a bias-free conv


def test_arena_plan_of_lenet5():
    model = create_model("lenet5").eval()
    p = plan_graph(trace(model, model.input_shape))
    # conv1's 6x28x28 output and its input are live together; nothing else is larger
    assert p.size == 4 * (6 * 28 * 28 + 6 * 14 * 14) == p.lower_bound


# ----------------------------------------------------------------------------------- report


def test_profile_table_json_markdown(tmp_path, capsys):
    out, md = tmp_path / "p.json", tmp_path / "p.md"
    code, text, _ = run_cli(["profile", str(zoo("lenet5_prune_l", tmp_path)), "--target",
                             "cortex-m7", "--json", str(out), "--markdown", str(md)], capsys)
    assert code == 0
    for key in ("fp32-csr16", "int8-bitmask", "fp32-bsr4x4", "arena:", "ESTIMATED",
                "measured on this host", "verdict: FITS cortex-m7"):
        assert key in " ".join(text.split()), key  # wrapped lines joined
    doc = json.loads(out.read_text())
    assert doc["schema"] == "sparsebench-profile" and doc["verdict"]["fits"]
    assert [layer["name"] for layer in doc["layers"]] == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    for layer in doc["layers"]:
        assert set(layer["bytes"]) == set(ENCODINGS)
        assert layer["bytes"][layer["best"]] == min(v for v in layer["bytes"].values() if v)
    assert doc["totals"]["fp32-dense"] == 4 * 61706    # every parameter, fp32, dense
    assert doc["arena"]["bytes"] == 4 * (6 * 28 * 28 + 6 * 14 * 14)
    assert doc["host"]["p50_ms"] > 0
    assert "| layer | matrix | sparsity | fp32-dense |" in md.read_text()
    verdict = next(c for c in doc["choices"] if c["policy"] == "best")
    assert set(verdict["per_layer"].values()) <= set(BUILDABLE)     # what --build can write
    assert verdict["ram_needed"] == doc["arena"]["int8_activations_bytes"]   # int8 arena
    if HAS_FMNIST and (ZOO / "lenet5_prune_l.pt").exists():   # the real test set
        acc = doc["accuracy"]
        assert acc["samples"] == 10_000 and abs(acc["int8"] - acc["fp32"]) <= 1.0
        assert "accuracy on the fashion-mnist test set (10,000 images): fp32" in text


def test_profile_verdict_does_not_fit_exits_1(tmp_path, capsys):
    path = tmp_path / "tiny.toml"
    path.write_text(TARGET_KEYS)
    code, out, _ = run_cli(["profile", str(zoo("lenet5_dense", tmp_path)), "--target",
                            str(path), "--no-host", "--encoding", "fp32-dense"], capsys)
    assert code == 1
    out = " ".join(out.split())   # the lines wrap at the console's width
    assert "DOES NOT FIT tiny with fp32-dense everywhere" in out
    assert "flash short by" in out and "RAM short by" in out


def test_pruning_shrinks_the_sparse_encodings_only(tmp_path):
    from sparsebench.loading import load_model

    target = load_target("cortex-m4")
    sizes = {}
    for name in ("lenet5_dense", "lenet5_prune_l"):
        m = load_model(zoo(name, tmp_path))
        p = profile_model(m.module, m.input_shape, target)
        sizes[name] = {c.policy: c.weight_bytes for c in p.choices}
    assert sizes["lenet5_dense"]["fp32-dense"] == sizes["lenet5_prune_l"]["fp32-dense"]
    assert sizes["lenet5_prune_l"]["lossless"] < sizes["lenet5_dense"]["lossless"]
    assert sizes["lenet5_prune_l"]["best"] < sizes["lenet5_prune_l"]["int8-dense"]


# ----------------------------------------------------------------------------------- export


def _ffn_checkpoint(path: Path) -> Path:
    model = create_model("ffn", 16, 1, d_model=16, d_hidden=32)
    save_checkpoint({"arch": "ffn", "arch_kwargs": {"in_channels": 16, "input_size": 1,
                                                    "num_classes": 10, "dropout": 0.0,
                                                    "d_model": 16, "d_hidden": 32},
                     "input_shape": [16], "state_dict": model.state_dict()}, path)
    return path


def test_export_c_names_the_layer_it_cannot_handle(tmp_path, capsys):
    code, _, err = run_cli(["export-c", str(_ffn_checkpoint(tmp_path / "ffn.pt")), "--out",
                            str(tmp_path / "c")], capsys)
    assert code == 2
    assert "export-c cannot handle layer 'gelu' (F.gelu: no C kernel for this op)" in err
    code, _, err = run_cli(["export-c", str(zoo("lenet5_prune_l", tmp_path)), "--encoding",
                            "int8-bsr4x4", "--out", str(tmp_path / "c")], capsys)
    assert code == 2 and "'int8-bsr4x4' is not supported" in err and "--block" in err
    assert not (tmp_path / "c").exists()
    with pytest.raises(SparsebenchError, match=r"int8 export cannot handle layer 'add' "
                       r"\(residual add\)"):
        quant.check_int8(trace(_Block().eval(), (3, 16, 16)))
    with pytest.raises(SparsebenchError, match="mix fp32 and int8"):
        export_c(create_model("lenet5").eval(), (1, 28, 28), tmp_path / "mix",
                 encoding={"conv1": "int8-dense", "conv2": "fp32-dense", "fc1": "fp32-dense",
                           "fc2": "fp32-dense", "fc3": "fp32-dense"})


def _make_and_run(out: Path) -> str:
    subprocess.run(["make", "-s", "-C", str(out), "CFLAGS=-std=c99 -O1 -Wall -Wextra -Werror"],
                   check=True, capture_output=True)
    proc = subprocess.run([str(out / "sb_test")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.skipif(not HAS_CC or shutil.which("make") is None, reason="needs cc and make")
def test_export_c_runs_on_the_host(tmp_path, capsys):
    out = tmp_path / "lenet5"
    code, text, _ = run_cli(["export-c", str(zoo("lenet5_prune_l", tmp_path)), "--out",
                             str(out)], capsys)
    assert code == 0 and "fp32-csr16" in text
    assert "sb: PASS" in _make_and_run(out)
    # every op kind the C runtime has: folded BN, residual add, per-channel mul, pools
    exp = export_c(_Block().eval(), (3, 16, 16), tmp_path / "block", encoding="csr")
    assert "sbk_add" in (exp.out_dir / "sb_model.c").read_text()
    assert "sb: PASS" in _make_and_run(exp.out_dir)
    lenet300 = create_model("lenet300").eval()
    with torch.no_grad():
        lenet300.fc1.weight[:, ::2] = 0
    exp = export_c(lenet300, lenet300.input_shape, tmp_path / "l300", encoding="dense")
    assert set(exp.encodings.values()) == {"fp32-dense"}
    assert "sb: PASS" in _make_and_run(exp.out_dir)


class _Int8Net(nn.Module):
    """Every op the int8 runtime has: padded/strided/dilated convs, a standalone ReLU, max and
    avg pooling (with padding, both count_include_pad settings), adaptive pooling, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.input_shape = (2, 12, 12)
        self.c1 = nn.Conv2d(2, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 8, 3, stride=2, padding=2, dilation=2, bias=False)
        self.fc = nn.Linear(8 * 2 * 2, 7)
        with torch.no_grad():
            self.c2.weight[:, :, 1] = 0
            self.fc.weight[:, ::3] = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.c1(x))
        y = nn.functional.max_pool2d(y, 2, stride=1, padding=1)
        y = torch.relu(nn.functional.avg_pool2d(self.c2(y), 3, 1, 1, count_include_pad=False))
        y = nn.functional.avg_pool2d(y, 2, 1, 1)
        y = nn.functional.adaptive_avg_pool2d(y, 2)
        return self.fc(torch.flatten(y, 1))


@pytest.mark.skipif(not HAS_CC or shutil.which("make") is None, reason="needs cc and make")
@pytest.mark.parametrize("enc", INT8_C_ENCODINGS + ("int8", "fp32-csr8", "fp32-csr32",
                                                    "fp32-bitmask", "fp32-bsr"))
def test_int8_and_sparse_exports_are_bit_exact_on_the_host(enc, tmp_path):
    """The C int8 kernels reproduce the Python integer reference exactly (main.c compares every
    output), the weight arrays are the analytic bytes, and the fp32 gather kernels match torch."""
    from sparsebench.loading import load_model

    torch.manual_seed(0)
    for model in (_Int8Net().eval(), load_model(zoo("lenet5_prune_l", tmp_path)).module):
        shape = tuple(getattr(model, "input_shape", (1, 28, 28)))
        graph = trace(model, shape)
        samples = np.random.default_rng(1).standard_normal((32, *shape)).astype(np.float32)
        qm = quant.calibrate(graph, samples, "32 normal samples")
        block = (3, 2) if isinstance(model, _Int8Net) else (4, 4)   # padded blocks too
        exp = export_c(model, shape, tmp_path / type(model).__name__, encoding=enc, qmodel=qm,
                       test_input=samples[3], block=block)
        analytic = sum(layer_bytes(op.weight, op.bias_len, block)[1][
            exp.encodings[op.weight_key or op.name]] for op in graph.weight_ops())
        assert exp.weight_bytes == analytic
        text = _make_and_run(exp.out_dir)
        assert "sb: PASS" in text
        if enc.startswith("int8"):
            assert "sb: mismatches = 0" in text
            got = [int(line.rsplit("= ", 1)[1]) for line in text.splitlines()
                   if line.startswith("sb: qoutput[")]
            assert got == exp.expected_q.tolist() and len(got) == exp.expected.size


# ------------------------------------------------------------------------------------ build


def test_build_without_the_tools_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "board.toml"
    path.write_text(TARGET_KEYS + '[build]\nkind = "linux-user"\ncc = "no-such-gcc"\n'
                    'qemu = "no-such-qemu"\n')
    code, _, err = run_cli(["profile", str(zoo("lenet5_prune_l", tmp_path)), "--target",
                            str(path), "--build"], capsys)
    assert code == 2
    assert "--build for tiny needs no-such-gcc and no-such-qemu, not found on PATH" in err


@pytest.mark.skipif(not HAS_ARM, reason="needs arm-none-eabi-gcc and qemu-system-arm "
                    "(apt-get install gcc-arm-none-eabi qemu-system-arm; .ci/run installs them)")
def test_build_cortex_m7_matches_the_analytic_sizes_and_torch(tmp_path, capsys):
    out = tmp_path / "p.json"
    code, text, _ = run_cli(["profile", str(zoo("lenet5_prune_l", tmp_path)), "--target",
                             "cortex-m7", "--build", "--build-encoding", "auto", "--no-host",
                             "--no-accuracy", "--json", str(out)], capsys)
    assert code == 0, text
    b = json.loads(out.read_text())["build"]
    assert b["output_ok"] and b["max_abs_err"] <= 1e-4 and b["status"] == "PASS"
    assert b["weights_measured"] == b["weights_analytic"] > 0      # exact, to the byte
    assert b["arena_measured"] == b["arena_analytic"] == b["analytic_ram"]
    assert b["flash"] == b["weights_measured"] + b["test_vector"] + b["runtime_flash"]
    assert 0 < b["runtime_flash"] < 16 * 1024 and b["runtime_ram"] < 64   # the runtime's own
    assert 0 < b["stack_used"] < b["stack_reserved"]
    assert b["instructions"] > 100_000
    assert "cross-build for cortex-m7" in text and "emulated output max abs error" in text


@pytest.mark.skipif(not HAS_ARM, reason="needs arm-none-eabi-gcc and qemu-system-arm")
def test_build_int8_csr8_on_cortex_m7_is_bit_exact_and_the_analytic_size(tmp_path, capsys):
    """The issue's acceptance: image flash = analytic weights + test vector + runtime, the
    emulated int8 output equal to the Python integer reference, accuracy within 1 point."""
    out = tmp_path / "p.json"
    code, text, _ = run_cli(["profile", str(zoo("lenet5_prune_l", tmp_path)), "--target",
                             "cortex-m7", "--build", "--build-encoding", "int8-csr8",
                             "--no-host", "--calibration", "200", "--json", str(out)], capsys)
    assert code == 0, text
    doc = json.loads(out.read_text())
    b = doc["build"]
    assert b["int8"] and b["bit_exact"] and b["output_ok"] and b["status"] == "PASS"
    assert b["emulated_q"] == b["reference_q"] and b["outputs"] == 10
    assert set(b["encodings"].split(", ")) == {f"{k}=int8-csr8" for k in
                                               ("conv1", "conv2", "fc1", "fc2", "fc3")}
    assert b["weights_measured"] == b["weights_analytic"] == doc["totals"]["int8-csr8"]
    assert b["flash"] == b["weights_measured"] + b["test_vector"] + b["runtime_flash"]
    assert b["test_vector"] == 784 + 12                        # int8 input and output
    assert b["arena_measured"] == b["arena_analytic"] == doc["arena"]["int8_activations_bytes"]
    assert 0 < b["runtime_flash"] < 16 * 1024 and b["runtime_ram"] < 64
    assert "bit-exact with the Python integer reference (10/10 outputs equal)" in text
    if HAS_FMNIST and (ZOO / "lenet5_prune_l.pt").exists():
        assert abs(doc["accuracy"]["int8"] - doc["accuracy"]["fp32"]) <= 1.0
    # by default --build builds what the verdict names (one value type, all buildable)
    code, text, _ = run_cli(["profile", str(zoo("lenet5_prune_l", tmp_path)), "--target",
                             "cortex-m7", "--build", "--no-host", "--no-accuracy", "--json",
                             str(out), "--force", "--calibration", "50"], capsys)
    assert code == 0, text
    doc = json.loads(out.read_text())
    verdict = next(c for c in doc["choices"] if c["policy"] == "best")
    assert doc["build"]["encodings"] == ", ".join(f"{k}={v}"
                                                  for k, v in verdict["per_layer"].items())
    assert doc["build"]["weights_measured"] == verdict["weight_bytes"]
    assert doc["build"]["arena_measured"] == verdict["ram_needed"] and doc["build"]["bit_exact"]


def test_unbuildable_encodings_and_bad_calibration_are_exit_2(tmp_path, capsys):
    ckpt = str(zoo("lenet5_prune_l", tmp_path))
    code, _, err = run_cli(["profile", ckpt, "--target", "host", "--build-encoding", "int8-bsr8",
                            "--build", "--no-host"], capsys)
    assert code == 2 and "give the block with --block" in err and len(err.splitlines()) == 1
    wide = nn.Sequential(nn.Flatten(), nn.Linear(70_000, 2))
    with pytest.raises(SparsebenchError, match="layer '1' cannot be built as int8-csr16: 70000 "
                       "columns are too many for 16-bit"):
        from sparsebench.embedded.export_c import choose_encodings

        choose_encodings(trace(wide, (70_000,)), "int8-csr16")
    code, _, err = run_cli(["profile", ckpt, "--target", "host", "--calibration", "0"], capsys)
    assert code == 2 and "--calibration 0" in err
    code, _, err = run_cli(["export-c", ckpt, "--encoding", "int8", "--calibration", "-1",
                            "--out", str(tmp_path / "c")], capsys)
    assert code == 2 and "--calibration -1" in err and not (tmp_path / "c").exists()


@pytest.mark.skipif(not HAS_CC or shutil.which("make") is None, reason="needs cc and make")
def test_export_c_int8_cli_runs_on_the_host(tmp_path, capsys):
    out = tmp_path / "q"
    code, text, _ = run_cli(["export-c", str(zoo("lenet5_prune_l", tmp_path)), "--encoding",
                             "int8", "--calibration", "50", "--out", str(out)], capsys)
    assert code == 0 and "int8 (TFLite scheme), calibrated on 50" in text
    assert "#define SB_INT8 1" in (out / "sb_model.h").read_text()
    assert "sb: mismatches = 0" in _make_and_run(out)


@pytest.mark.skipif(not HAS_ARM, reason="needs arm-none-eabi-gcc and qemu-system-arm")
def test_build_for_a_board_too_small_says_so(tmp_path, capsys):
    path = tmp_path / "small.toml"
    m7 = (ROOT / "sparsebench" / "embedded" / "targets" / "cortex-m7.toml").read_text()
    path.write_text(m7.replace("flash_length = 0x00400000", "flash_length = 0x00008000"))
    code, _, err = run_cli(["profile", str(zoo("lenet5_dense", tmp_path)), "--target", str(path),
                            "--build", "--build-encoding", "auto", "--no-host"], capsys)
    assert code == 2 and "does not fit the emulated board's FLASH" in err, err


def test_export_c_rejects_nonfinite_weights(tmp_path):
    model = create_model("lenet300").eval()
    with torch.no_grad():
        model.fc2.weight[0, 0] = float("nan")
    with pytest.raises(SparsebenchError, match="'fc2' holds NaN/Inf"):
        export_c(model, model.input_shape, tmp_path / "c")


def test_profile_reads_torchscript_and_never_advises_onnx(tmp_path, capsys):
    """profile accepts TorchScript (exported to ONNX internally): its input shape inferred (or
    given with --input-shape), the same bytes as the checkpoint it was traced from."""
    from sparsebench.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = zoo("lenet5_prune_l", tmp_path)
    model = model_from_checkpoint(load_checkpoint(ckpt)).eval()
    ts = tmp_path / "ts.pt"
    torch.jit.trace(model, torch.zeros(1, 1, 28, 28)).save(str(ts))
    docs = []
    for n, (path, extra) in enumerate(((ts, []), (ts, ["--input-shape", "1,28,28"]),
                                       (ckpt, []))):
        out = tmp_path / f"{path.stem}{n}.json"
        code, _, err = run_cli(["profile", str(path), *extra, "--target", "cortex-m7",
                                "--no-host", "--json", str(out)], capsys)
        assert code == 0, err
        docs.append(json.loads(out.read_text()))
    assert docs[0]["totals"] == docs[1]["totals"] == docs[2]["totals"]
    _, text, _ = run_cli(["profile", "--help"], capsys)
    assert "TorchScript" in " ".join(text.split())
