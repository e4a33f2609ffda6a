"""Smoke tests of ``deepsparse_compare.py`` on tiny models (no timing is asserted).

Like the rest of benchmarks/, not part of the default ``python -m pytest`` run (testpaths is
tests/): ``python -m pytest benchmarks/test_deepsparse_compare.py``. The DeepSparse side venv
is pointed at a folder that does not exist, except in the one test that uses a real one
($DEEPSPARSE_VENV or /work/venv-ds) and skips without it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "deepsparse_compare.py"
sys.path.insert(0, str(HERE))

import deepsparse_compare as dc  # noqa: E402

TINY = ["--quick", "--threads", "1", "--batch", "1,2"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=300, cwd=HERE.parent)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ds-work")


def table_rows(markdown: str, head: list[str] = dc.HEAD) -> list[list[str]]:
    """The cells of the rows of the Markdown table with this header."""
    lines = markdown.splitlines()
    start = lines.index("| " + " | ".join(head) + " |") + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("| "):
            break
        rows.append(line.strip("| ").split(" | "))
    return rows


def test_without_deepsparse(tmp_path: Path, workdir: Path) -> None:
    md, js = tmp_path / "t.md", tmp_path / "t.json"
    missing = tmp_path / "no-such-venv"
    proc = run(*TINY, "--models", "bert-base,ffn", "--venv", str(missing), "--workdir",
               str(workdir), "--markdown", str(md), "--json", str(js))
    assert proc.returncode == 0, proc.stderr
    reason = f"{missing}/bin/python does not exist"
    assert f"DeepSparse side venv not found / not usable: {reason}" in proc.stderr
    text = md.read_text()
    assert f"DeepSparse not available: DeepSparse side venv not found / not usable: {reason}" \
        in text
    rows = table_rows(text)
    assert [(r[0].split(",")[0], r[1], r[2]) for r in rows] == [
        ("BERT 1x64 seq 16", "1", "1"), ("BERT 1x64 seq 16", "1", "2"),
        ("ffn 64-256-64", "1", "1"), ("ffn 64-256-64", "1", "2")]
    for r in rows:
        ort_ms, ds_ms, sb_ms, impl, vs_ds, spread, vs_ort, err = r[3:]
        assert float(ort_ms) > 0 and float(sb_ms) > 0
        assert ds_ms == "n/a" and vs_ds == "n/a" and spread == "n/a"
        assert impl.startswith("csr-") and "-t1" not in impl
        assert re.fullmatch(r"\d+\.\d\dx", vs_ort)
        assert 0 <= float(err) <= dc.MAX_REL_ERR
    assert table_rows(proc.stdout) == rows  # the same table on stdout
    roof = table_rows(text, ["model", "threads", "batch", "GFLOP/s (nonzero)", "of GEMM peak",
                             "GB/s", "of copy bandwidth"])
    assert [r[:3] for r in roof] == [r[:3] for r in rows]
    assert all(float(r[3]) > 0 and r[4].endswith("%") for r in roof)

    doc = json.loads(js.read_text())
    assert doc["deepsparse"]["unavailable"] == reason
    assert doc["load"]["before"] and doc["load"]["after"]
    assert doc["machine"]["logical_cores"] and doc["versions"]["onnxruntime"]
    assert len(doc["rows"]) == len(rows)
    for row, cells in zip(doc["rows"], rows):
        assert row["deepsparse"] == {"status": "unavailable"}
        assert row["calls_per_round"] == 3
        for engine in ("ort", "sparsebench"):
            assert [len(r) for r in row[engine]["samples_ns"]] == [3, 3]  # 2 rounds x 3 calls
        assert row["sparsebench"]["impl"].startswith("native-csr-")
        assert row["sparsebench"]["achieved_gflops"] > 0
        assert cells[10] == f"{row['sparsebench']['max_rel_err']:.1e}"
        ort, sb = row["ort"]["latency_ms"]["p50"], row["sparsebench"]["latency_ms"]["p50"]
        assert cells[9] == f"{ort / sb:.2f}x"


def test_error_check_fails_the_row(tmp_path: Path, workdir: Path,
                                   monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture) -> None:
    """A row above the error limit is not timed, says FAIL, and the exit code is 1."""
    monkeypatch.setattr(dc, "MAX_REL_ERR", -1.0)  # every error (even 0) is above it
    md = tmp_path / "f.md"
    code = dc.main([*TINY, "--batch", "1", "--models", "ffn", "--venv", str(tmp_path / "none"),
                    "--workdir", str(workdir), "--markdown", str(md)])
    assert code == 1
    assert "FAILED ffn@90 t1 b1: sparsebench max relative error" in capsys.readouterr().err
    (row,) = table_rows(md.read_text())
    assert row[5] == "FAILED" and row[10].endswith(" FAIL") and row[9] == "n/a"
    assert float(row[3]) > 0  # ORT is still timed


@pytest.mark.parametrize("args, message", [
    (["--models", "bert-large"], "unknown model 'bert-large': expected all, one of bert-base"),
    (["--threads", "0"], "argument --threads: expected positive integers, got '0'"),
    (["--batch", "1,x"], "argument --batch: expected comma-separated integers, got '1,x'"),
    (["--rounds", "0"], "--rounds must be at least 1, got 0"),
    (["--bert-hidden", "100"], "--bert-hidden must be a multiple of 64"),
    (["--gap", "-1"], "--gap must be a number of seconds >= 0, got -1.0"),
    (["--ds-timeout", "0"], "--ds-timeout must be a number of seconds > 0, got 0.0"),
    (["--workdir", str(HERE)], "is inside the checkout"),
])
def test_bad_options(args: list[str], message: str) -> None:
    proc = run(*args)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stdout == ""


def test_existing_output_needs_force(tmp_path: Path) -> None:
    md = tmp_path / "old.md"
    md.write_text("keep me")
    proc = run("--models", "ffn", "--markdown", str(md), "--workdir", str(tmp_path / "w"))
    assert proc.returncode == 2 and "pass --force to overwrite it" in proc.stderr
    assert md.read_text() == "keep me" and not (tmp_path / "w").exists()


def test_round_speedups_and_their_spread() -> None:
    """The speedup round by round (median over median) and its interquartile range."""
    ds = {"samples_ns": [[30, 10, 20], [40, 40], [90, 60, 30], [10, 20]]}  # medians 20 40 60 15
    sb = {"samples_ns": [[10, 10, 10], [20, 20], [20, 30, 40], [10, 10]]}  # medians 10 20 30 10
    assert dc.round_speedups(ds, sb) == [2.0, 2.0, 2.0, 1.5]
    assert dc._spread(ds, sb) == "1.88-2.00x"
    assert dc._spread({"status": "unavailable"}, sb) == "n/a"
    assert dc._spread({"samples_ns": [[4]]}, {"samples_ns": [[2]]}) == "n/a"  # one round


def test_short_impl() -> None:
    assert dc.short_impl("native-csr-avx512-i16-t2") == "csr-avx512-i16"
    assert dc.short_impl("native-csr-avx2-i16+i32-t1+torch(Div,Erf)") == \
        "csr-avx2-i16+i32+torch(Div,Erf)"
    assert dc.short_impl("native-csr-avx512-i16-t1+torch(a,b,c,d)") == \
        "csr-avx512-i16+torch(4 ops)"
    assert dc.short_impl("native-csr-avx512-i32-t2-swapped-modules") == \
        "csr-avx512-i32-swapped-modules"


def test_with_deepsparse(tmp_path: Path, workdir: Path) -> None:
    """The side venv's server compiles and times the same file (skipped without the venv)."""
    venv = Path(dc.DEFAULT_VENV)
    if not (venv / "bin" / "python").exists():
        pytest.skip(f"no DeepSparse side venv at {venv} (docs/deepsparse.md)")
    js = tmp_path / "d.json"
    proc = run(*TINY, "--batch", "2", "--models", "ffn", "--venv", str(venv), "--workdir",
               str(workdir), "--json", str(js))
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(js.read_text())["rows"]
    ds = row["deepsparse"]
    assert ds["status"] == "ok", ds
    assert ds["engine"]["num_cores"] == 1 and ds["max_rel_err"] < 1e-4  # the same model
    assert [len(r) for r in ds["samples_ns"]] == [3, 3]
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("| ffn")]
    cells = line.strip("| ").split(" | ")
    assert re.fullmatch(r"\d+\.\d\dx", cells[7])
    assert re.fullmatch(r"\d+\.\d\d-\d+\.\d\dx", cells[8])  # two rounds: their spread
