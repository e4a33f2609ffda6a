"""Claims grids: named configurations with their own flags, committed summaries, resumption,
the correlation subset, the gate lines, and the Ray executor."""

from __future__ import annotations

import json
import shutil

import pytest

from sparsebench import claims
from sparsebench.cli import main

COMMON = "--epochs 3 --limit-train 200 --limit-test 100 --fractions 0.5 --start 1 --end 2"


def _grid_file(tmp_path, extra: str = "") -> str:
    path = tmp_path / "grid.toml"
    path.write_text(f'''arch = "lenet300"
dataset = "synthetic"
seeds = [0]
train_args = "{COMMON}"
correlation_subset = ["ps-r1", "ps-r2"]
{extra}
[configs]
dense = "dense"
ps-r1 = "prune-s --retrain-period 1"
ps-r2 = "prune-s --retrain-period 2"
''')
    return str(path)


def test_grid_runs_each_configuration_with_its_own_flags_and_resumes(tmp_path, capsys):
    grid, runs, summ = _grid_file(tmp_path), tmp_path / "runs", tmp_path / "summ"
    md = tmp_path / "t.md"
    args = ["claims", "--grid", grid, "--runs", str(runs), "--summaries", str(summ),
            "--jobs", "2", "--markdown", str(md), "--gate"]
    assert main(args) == 0
    recs = {p.stem: json.loads(p.read_text()) for p in summ.glob("*.json")}
    assert sorted(recs) == ["lenet300-dense-s0", "lenet300-ps-r1-s0", "lenet300-ps-r2-s0"]
    # r=1: events at epochs 1 and 2; r=2: only at epoch 1 (end 2)
    assert [e["epoch"] for e in recs["lenet300-ps-r1-s0"]["history"]["events"]] == [1, 2]
    assert [e["epoch"] for e in recs["lenet300-ps-r2-s0"]["history"]["events"]] == [1]
    assert recs["lenet300-ps-r2-s0"]["config"]["schedules"][0]["period"] == 2
    assert "state_dict" not in recs["lenet300-dense-s0"]            # no weights committed
    out = capsys.readouterr().out
    assert "gate:" in out and "ps-r1 s0: 2 events, lowest post-event accuracy" in out
    text = md.read_text()
    assert "| ps-r1 | prune-s | 1 |" in text and "| ps-r2 | prune-s | 1 |" in text
    assert "Figure-2 set (ps-r1, ps-r2)" in text
    # the summaries alone regenerate the table, and nothing is trained again
    shutil.rmtree(runs)
    before = {p: p.stat().st_mtime_ns for p in summ.iterdir()}
    assert main(args) == 2                     # the table exists: not overwritten unasked
    assert "--markdown" in capsys.readouterr().err
    assert main(args + ["--force"]) == 0
    assert not list(runs.glob("*.pt"))
    assert {p: p.stat().st_mtime_ns for p in summ.iterdir()} == before
    assert md.read_text().split("\n", 1)[1] == text.split("\n", 1)[1]


@pytest.mark.parametrize("body, message", [
    ("arch = 1\n", "a grid needs arch, seeds and a [configs] table"),
    ('arch = "lenet5"\nseeds = [0]\n[configs]\nx = "nope"\n', "unknown method 'nope'"),
    ('arch = "lenet5"\nseeds = [0]\n[configs]\nx = "dense --seed 3"\n', "--seed is set by"),
    ('arch = "lenet5"\nseeds = []\n[configs]\nx = "dense"\n', "at least one seed"),
    ('arch = "lenet5"\nseeds = [0]\ncorrelation_subset = ["y"]\n[configs]\nx = "dense"\n',
     "subset names unknown configurations: y"),
    ("arch = [", "not a valid TOML grid"),
])
def test_bad_grids_are_one_line_errors(tmp_path, capsys, body, message):
    path = tmp_path / "g.toml"
    path.write_text(body)
    assert main(["claims", "--grid", str(path), "--table-only"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_config_flag_and_missing_grid(tmp_path, capsys):
    assert main(["claims", "--grid", str(tmp_path / "none.toml")]) == 2
    assert "grid file not found" in capsys.readouterr().err
    assert main(["claims", "--config", "a=dense", "--config", "a=dropout", "--table-only"]) == 2
    assert "configuration names repeat" in capsys.readouterr().err
    assert main(["claims", "--only", "zzz", "--table-only"]) == 2
    assert "--only names unknown configurations: zzz" in capsys.readouterr().err


def _row(stab: float, acc: float) -> dict:
    return {"mean_stability": stab, "best_test_acc": acc}


def test_correlation_and_difference_figures():
    neg = claims.correlations([_row(99, 80), _row(98, 81), _row(97, 83), _row(95, 84)])
    assert neg["n"] == 4 and neg["pearson_r"] < -0.9 and neg["kendall_tau"] == -1.0
    assert claims.correlations([_row(99, 80), _row(99, 81), _row(99, 82)]) is None
    diff, se = claims.difference([1.0, 2.0, 3.0], [0.0, 0.0, 3.0])
    # means 2 and 1; variances 1 and 3 over 3 runs each: se = sqrt(1/3 + 3/3)
    assert diff == pytest.approx(1.0) and se == pytest.approx((1 / 3 + 1) ** 0.5)


def test_ray_executor_runs_a_two_run_grid_on_a_local_instance(tmp_path):
    pytest.importorskip("ray")
    runs, summ = tmp_path / "runs", tmp_path / "summ"
    assert main(["claims", "--arch", "lenet300", "--dataset", "synthetic",
                 "--methods", "dense,prune-l", "--seeds", "0", "--train-args", COMMON,
                 "--runs", str(runs), "--summaries", str(summ), "--executor", "ray",
                 "--threads", "1", "--table-only"]) == 0  # table only: nothing trained yet
    assert not summ.exists()
    assert main(["claims", "--arch", "lenet300", "--dataset", "synthetic",
                 "--methods", "dense,prune-l", "--seeds", "0", "--train-args", COMMON,
                 "--runs", str(runs), "--summaries", str(summ), "--executor", "ray",
                 "--threads", "1"]) == 0
    recs = sorted(p.name for p in summ.glob("*.json"))
    assert recs == ["lenet300-dense-s0.json", "lenet300-prune-l-s0.json"]
    pl = json.loads((summ / "lenet300-prune-l-s0.json").read_text())
    assert [e["epoch"] for e in pl["history"]["events"]] == [1, 2]
    assert pl["summary"]["params_removed_frac"] > 0
