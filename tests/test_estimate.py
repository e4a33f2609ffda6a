"""The calibrated estimate: features the C kernels loop over, the fit, the shipped coefficients,
and the estimate of the zoo models against their stored emulated instruction counts."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sparsebench.cli import main
from sparsebench.errors import SparsebenchError
from sparsebench.embedded.calibrate import (CONV_SHAPES, LINEAR_SHAPES, Layer, calibration_set,
                                            features_of, fit_family)
from sparsebench.embedded.encodings import encoding_label
from sparsebench.embedded.estimate import (FAMILY_FEATURES, estimate_model, load_calibration,
                                           op_family, op_features)
from sparsebench.embedded.export_c import choose_encodings
from sparsebench.embedded.lowering import trace
from sparsebench.embedded.summary import profile_model
from sparsebench.embedded.targets import TARGET_DIR, builtin_names, load_target

ROOT = Path(__file__).resolve().parents[1]
HAS_ARM = all(shutil.which(t) for t in ("arm-none-eabi-gcc", "qemu-system-arm"))
CALIBRATED = [n for n in builtin_names() if load_target(n).calibration]
TOLERANCE = 0.25     # the bar: the estimate within 25% of the emulated count


def test_conv_features_count_what_the_kernels_loop_over():
    conv = nn.Conv2d(2, 3, 3, padding=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 1.0      # the corner tap: reads padding on 2 edges
        conv.weight[1, 1, 1, 1] = 2.0      # the centre tap: always inside the image
    op = trace(nn.Sequential(conv), (2, 5, 5)).ops[0]
    f = op_features(op, "fp32-csr16")
    assert f["out"] == 3 * 25 and f["nz"] == 2 * 25 and f["taps"] == 2
    assert f["valid"] == 4 * 4 + 25               # corner: 4 rows x 4 cols of outputs inside
    assert f["tap_rows"] == 4 + 5                  # output rows each tap's loop visits
    dense = op_features(op, "fp32-dense")
    assert dense["macs"] == 3 * 18 * 25 and dense["taps"] == 3 * 18
    assert dense["row_trips"] == 3 * 2 * 3 * 25    # filters x channels x kernel rows x outputs
    assert dense["row_inside"] == 3 * 2 * 3 * (4 + 5 + 4) * 5
    # every tap of every filter: 4 corners x 16, 4 edges x 20, the centre x 25
    assert dense["valid"] == 3 * 2 * (4 * 16 + 4 * 20 + 25)


def test_csr8_fillers_and_bsr_blocks_are_trips():
    lin = nn.Linear(600, 4, bias=False)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[0, 0] = lin.weight[0, 599] = 1.0    # a gap of 598: two filler entries
    op = trace(nn.Sequential(lin), (600,)).ops[0]
    assert op_features(op, "int8-csr8")["nz"] == 2
    assert op_features(op, "fp32-bsr", (4, 4))["macs"] == 2 * 16
    assert op_family(op, "int8-csr8") == "int8-csr8/linear"


def test_every_family_has_a_calibration_layer_of_that_family():
    fams = {f for f, _ in calibration_set()}
    assert fams == set(FAMILY_FEATURES)
    # a conv layer of the set lowers to exactly one op of the family it calibrates
    feats = features_of("int8-bitmask/conv", Layer("conv", CONV_SHAPES[1]))[0]
    assert feats["scan"] > feats["nz"] > 0 and feats["valid"] <= feats["nz"]
    assert features_of("fp32/maxpool", Layer("maxpool", (4, 16, 2, 2)))[0]["window"] == 256 * 4


def test_fit_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    truth = {"call": 120.0, "out": 14.0, "macs": 3.5}
    points = []
    for _ in range(6):
        f = {"call": 1.0, "out": float(rng.integers(10, 1000)),
             "macs": float(rng.integers(1000, 100000))}
        points.append({"features": f, "instructions": sum(truth[k] * f[k] for k in truth)})
    got = fit_family("fp32-dense/linear", points)
    assert got["max_rel_residual"] < 1e-6
    for key, value in truth.items():
        assert got["coefficients"][key] == pytest.approx(value, rel=1e-4)


def test_bad_calibration_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "x.calibration.json"
    bad.write_text("{not json")
    with pytest.raises(SparsebenchError, match="cannot be read"):
        load_calibration(str(bad))
    bad.write_text(json.dumps({"schema": "other"}))
    with pytest.raises(SparsebenchError, match="is not a sparsebench-calibration file"):
        load_calibration(str(bad))
    board = tmp_path / "b.toml"
    board.write_text('name = "b"\ndescription = "b"\nclock_mhz = 10\nram_kib = 1\n'
                     'fp32_mac_cycles = 1\nint8_mac_cycles = 1\nsparse_fp32_mac_cycles = 1\n'
                     'sparse_int8_mac_cycles = 1\ncalibration = "missing.json"\n')
    with pytest.raises(SparsebenchError, match="calibration file not found"):
        load_target(str(board))


def test_calibrate_command_bad_input_is_exit_2(capsys):
    from sparsebench.embedded.calibrate import main as calibrate_main

    assert calibrate_main(["--target", "cortex-m7", "--family", "nope/conv"]) == 2
    assert "unknown kernel family nope/conv" in capsys.readouterr().err
    assert calibrate_main(["--target", "cortex-m7"]) == 2          # never overwrites unasked
    assert "exists (use --force to overwrite)" in capsys.readouterr().err
    assert calibrate_main(["--target", "no-such-board"]) == 2
    assert "unknown target 'no-such-board'" in capsys.readouterr().err


# ------------------------------------------------------------------- the shipped coefficients

def test_cortex_m4_and_m7_are_calibrated():
    assert {"cortex-m4", "cortex-m7"} <= set(CALIBRATED)


@pytest.mark.parametrize("name", CALIBRATED)
def test_shipped_calibration_loads_covers_every_family_and_fits(name):
    target = load_target(name)
    cal = load_calibration(target.calibration)
    assert cal.target == name and "python -m sparsebench.embedded.calibrate" in cal.command
    assert set(cal.coefficients) == set(FAMILY_FEATURES)
    assert not cal.stale, "the C kernels changed since the fit: re-run the calibration"
    data = json.loads(Path(target.calibration).read_text())
    for family, entry in data["families"].items():
        assert set(entry["coefficients"]) == set(FAMILY_FEATURES[family])
        assert all(c >= 0 for c in entry["coefficients"].values())
        assert entry["max_rel_residual"] < TOLERANCE, family
    assert Path(target.calibration).parent == TARGET_DIR


def _validation_rows() -> list[tuple[str, dict]]:
    rows = []
    for name in CALIBRATED:
        data = json.loads(Path(load_target(name).calibration).read_text())
        rows += [(name, row) for row in data.get("validation", [])]
    return rows


@functools.lru_cache(maxsize=None)
def _profile(path: str, target: str):
    from sparsebench.loading import load_model

    loaded = load_model(path)
    return profile_model(loaded.module, loaded.input_shape, load_target(target))


@pytest.mark.parametrize("name,row", _validation_rows(),
                         ids=lambda v: v if isinstance(v, str) else
                         f"{v['model']}-{v['build_encoding']}")
def test_zoo_estimate_within_25_percent_of_the_stored_emulated_count(name, row):
    """The zoo models were never part of the fit; their emulated counts were recorded by
    ``calibrate --validate`` (QEMU counts are deterministic for a given build)."""
    path = ROOT / "models" / row["model"]
    if not path.exists():
        pytest.skip(f"{path} not in this checkout")
    target = load_target(name)
    prof = _profile(str(path), name)
    enc = row["build_encoding"]
    per_layer = choose_encodings(prof.graph, prof.verdict.per_layer if enc == "verdict"
                                 else enc, prof.block)
    assert ", ".join(f"{k}={encoding_label(v, prof.block)}"
                     for k, v in per_layer.items()) == row["encodings"]
    est = estimate_model(prof.graph, per_layer, target, prof.block)
    assert est.instructions is not None and not est.uncalibrated
    assert abs(est.instructions - row["emulated"]) / row["emulated"] < TOLERANCE


def test_profile_prints_the_estimate_as_instructions_with_its_source(tmp_path, capsys):
    path = ROOT / "models" / "lenet5_prune_l.pt"
    if not path.exists():
        pytest.skip("zoo model not in this checkout")
    code = main(["profile", str(path), "--target", "cortex-m7", "--no-host", "--no-accuracy",
                 "--json", str(tmp_path / "p.json")])
    out = capsys.readouterr().out
    assert code == 0
    assert "instructions ESTIMATED on cortex-m7 (QEMU calibration cortex-m7.calibration.json" in \
        " ".join(out.split())
    doc = json.loads((tmp_path / "p.json").read_text())
    best = next(c for c in doc["choices"] if c["policy"] == "best")
    assert best["estimated_instructions"] > 0
    assert best["estimate_source"] == "QEMU calibration cortex-m7.calibration.json"
    assert "Instructions, not cycles" in doc["estimate_note"]


def test_uncalibrated_targets_keep_the_roofline():
    target = load_target("host")
    assert target.calibration is None
    model = nn.Sequential(nn.Linear(LINEAR_SHAPES[0][0], 8)).eval()
    graph = trace(model, (LINEAR_SHAPES[0][0],))
    est = estimate_model(graph, {graph.ops[0].weight_key: "fp32-dense"}, target)
    assert est.instructions is None and est.source == "roofline" and est.seconds > 0


@pytest.mark.slow
@pytest.mark.skipif(not HAS_ARM, reason="needs arm-none-eabi-gcc and qemu-system-arm")
def test_live_build_matches_the_estimate_within_25_percent(tmp_path, capsys):
    path = ROOT / "models" / "lenet5_prune_s.pt"
    if not path.exists():
        pytest.skip("zoo model not in this checkout")
    out = tmp_path / "p.json"
    code = main(["profile", str(path), "--target", "cortex-m4", "--build", "--build-encoding",
                 "int8-csr16", "--no-host", "--no-accuracy", "--calibration", "50", "--json",
                 str(out)])
    raw = capsys.readouterr().out
    text = " ".join(raw.split())
    assert code == 0
    b = json.loads(out.read_text())["build"]
    assert abs(b["estimate_error"]) < TOLERANCE and b["estimated_instructions"] > 0
    assert b["estimate_source"] == "QEMU calibration cortex-m4.calibration.json"
    assert "estimate from QEMU calibration cortex-m4.calibration.json" in text
    assert f"{b['estimated_instructions']:,.0f} est." in text
    assert f"({100 * b['estimate_error']:+.1f}%)" in text
    # the build table's label column is not squeezed to one letter per line by long cells
    assert "instructions per inference" in raw and "flash bytes (text + rodata" in raw
