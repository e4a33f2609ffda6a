"""The HTML report: `sparsebench report FILE.json` and `--html` on measure, sweep, compare and
profile. The page holds each row's numbers, one latency distribution per row with samples, the
sweep curve and crossovers, the gate verdict and the machine; it is self-contained; bad inputs
are one line and exit 2; a headless Chromium renders it without console errors."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sparsebench.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "three-models.json"
ZOO = ROOT / "models" / "lenet5_prune_l.pt"
MACHINE = {"cpu": "Test CPU 9000", "isa": ["avx2"], "logical_cores": 2, "physical_cores": 2,
           "memory_bytes": 8 * 1024 ** 3, "system": "Linux", "arch": "x86_64"}


def _row(model: str, fmt: str, backend: str, ms: float, n: int = 60, seed: int = 0,
         **extra: object) -> dict:
    rng = random.Random(seed)
    samples = sorted(int(ms * 1e6 * rng.uniform(0.9, 1.3)) for _ in range(n))
    p50 = samples[n // 2] / 1e6
    row = {"model": model, "format": fmt, "backend": backend, "impl": f"{backend}-{fmt}",
           "batch": 1, "threads": 1, "status": "ok", "reason": None,
           "latency_ms": {"p50": p50, "p90": samples[int(0.9 * n)] / 1e6},
           "samples": n, "samples_ns": samples, "peak_rss_bytes": 20 * 1024 ** 2 + seed,
           "weight_bytes": 1000 if fmt == "csr" else 4000, "max_rel_err": 1e-7,
           "accuracy": None, "warnings": []}
    row.update(extra)
    return row


def _results(rows: list[dict], models: dict | None = None, **extra: object) -> dict:
    names = sorted({r["model"] for r in rows})
    return {"schema": "sparsebench-results", "schema_version": 1, "created": "2026-01-01",
            "machine": MACHINE, "versions": {"torch": "x"}, "git_commit": "abc123",
            "config": {"formats": ["dense", "csr"]}, "rows": rows,
            "models": models if models is not None else {
                n: {"method": "magnitude", "sparsity": 0.5,
                    "formats": {"dense": {"weight_bytes": 4000},
                                "csr": {"weight_bytes": 1000}}} for n in names}, **extra}


def _write(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path


def _lanes(page: str) -> list[str]:
    return re.findall(r'<g class="dist-lane" data-row="([^"]*)"', page)


def _self_contained(page: str) -> None:
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert "<script" not in page and "<link" not in page
    assert not re.search(r'\s(src|href)="(?!#|data:)', page)  # only in-page anchors


# ----------------------------------------------------------------------------- measure


def test_report_of_measure_results_shows_every_row_its_distribution_and_the_machine(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "r.html"
    assert main(["report", str(EXAMPLE), "--html", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    page = out.read_text()
    _self_contained(page)
    doc = json.loads(EXAMPLE.read_text())
    rows = doc["rows"]
    for r in rows:  # each execution's table row, with its p50 and p90 from the JSON
        cells = (f"<td>{r['model']}</td><td>{r['format']}</td><td>{r['backend']}</td>"
                 f"<td>{r['impl']}</td><td class=\"n\">{r['batch']}</td>"
                 f"<td class=\"n\">{r['threads']}</td>")
        assert cells in page
        row_html = page[page.index(cells):].split("</tr>")[0]
        assert f"{r['latency_ms']['p50']:.3f}" in row_html
        assert f"{r['latency_ms']['p90']:.3f}" in row_html
    with_samples = [str(i) for i, r in enumerate(rows) if r["samples_ns"]]
    assert sorted(_lanes(page), key=int) == with_samples  # one distribution per row
    for r in rows[:3]:  # the lane's tooltip counts that row's samples
        assert f"{len(r['samples_ns'])} samples" in page
    assert page.count('class="chart speedup"') == 2  # batch 1 and batch 32
    assert 'class="chart size"' in page and 'class="chart memory"' in page
    m = doc["machine"]
    assert m["cpu"] in page and "2 logical, 2 physical" in page and doc["git_commit"] in page
    for name in doc["models"]:
        assert name in page


def test_skipped_rows_odd_values_and_ab_files_render(tmp_path: Path) -> None:
    rows = [_row("m", "dense", "torch", 1.0, subject="base"),
            _row("m", "dense", "torch", 1.2, seed=1, subject="new"),
            {**_row("m", "csr", "scipy", 0.5), "status": "skipped", "reason": "no scipy here",
             "latency_ms": None, "samples_ns": [], "peak_rss_bytes": None},
            {**_row("m", "bsr", "torch", 0.7), "max_rel_err": "nan", "weight_bytes": "inf",
             "warnings": ["NaN weights"]}]
    path = _write(tmp_path / "ab.json", _results(rows, ab={"mode": "interleaved-calls"}))
    out = tmp_path / "ab.html"
    assert main(["report", str(path), "--html", str(out)]) == 0
    page = out.read_text()
    assert "skipped: no scipy here" in page and "NaN weights" in page
    assert "<th>subject</th>" in page and "[base]" in page and "[new]" in page
    assert sorted(_lanes(page)) == ["0", "1", "3"]


# ----------------------------------------------------------------------------- sweep


def _sweep_doc() -> dict:
    times = {("dense", "onnxruntime"): {0: 1.0, 50: 1.0, 90: 1.0, 95: 1.0},
             ("csr", "native"): {0: 3.0, 50: 1.5, 90: 0.5, 95: 0.3},
             ("csr", "scipy"): {0: 5.0, 50: 3.0, 90: 2.0, 95: 1.5}}
    rows, sparsity_of = [], {}
    for (fmt, backend), points in times.items():
        for p, ms in points.items():
            name = f"ffn-s{p:g}"
            sparsity_of[name] = p
            rows.append(_row(name, fmt, backend, ms, seed=int(p)))
    crossovers = [{"format": "csr", "backend": "native", "batch": 1, "threads": 1,
                   "crossover": 90, "first_faster": 90, "max_speedup": 3.3},
                  {"format": "csr", "backend": "scipy", "batch": 1, "threads": 1,
                   "crossover": None, "first_faster": None, "max_speedup": 0.7}]
    return _results(rows, sweep={
        "name": "ffn", "sparsities": [0, 50, 90, 95], "command": "sparsebench sweep --arch ffn",
        "sparsity_of": sparsity_of, "pruned_layers": ["fc1", "fc2"],
        "baseline": ["dense", "onnxruntime"], "crossovers": crossovers})


def test_sweep_report_has_the_curves_and_the_crossovers(tmp_path: Path) -> None:
    doc = _sweep_doc()
    out = tmp_path / "s.html"
    assert main(["report", str(_write(tmp_path / "s.json", doc)), "--html", str(out)]) == 0
    page = out.read_text()
    _self_contained(page)
    assert page.count('class="chart lines"') == 2  # latency and speedup vs sparsity
    assert page.count('<g class="vmark">') == 1  # only csr/native crosses over
    assert "csr/native from 90%" in page
    table = page[page.index("<th>crossover</th>"):].split("</table>")[0]
    assert ">90%</td>" in table and ">never</td>" in table
    assert len(_lanes(page)) == len(doc["rows"])
    assert "sparsebench sweep --arch ffn" in page and MACHINE["cpu"] in page


# ----------------------------------------------------------------------------- compare


def test_compare_html_shows_the_gate_verdict_and_both_distributions(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = _write(tmp_path / "base.json", _results(
        [_row("m", "dense", "torch", 1.0, n=400), _row("m", "csr", "scipy", 1.0, n=400, seed=2)]))
    new = _write(tmp_path / "new.json", _results(
        [_row("m", "dense", "torch", 1.5, n=400, seed=3),
         _row("m", "csr", "scipy", 1.0, n=400, seed=4)]))
    out, cj = tmp_path / "gate.html", tmp_path / "gate.json"
    assert main(["compare", str(base), str(new), "--html", str(out), "--json", str(cj)]) == 1
    page = out.read_text()
    _self_contained(page)
    assert 'class="verdict fail"' in page and "FAIL: 1 of 2 rows regressed" in page
    assert "FAIL: latency x1." in page and "slower" in page
    assert len(_lanes(page)) == 2 and '<g class="interval">' in page
    assert MACHINE["cpu"] in page and f"machine ({base})" in page
    # the same comparison from its JSON: verdict and table, no raw samples to draw
    capsys.readouterr()
    out2 = tmp_path / "gate2.html"
    assert main(["report", str(cj), "--html", str(out2)]) == 0
    page2 = out2.read_text()
    assert "FAIL: 1 of 2 rows regressed" in page2 and _lanes(page2) == []
    assert "has no raw samples" in page2


# ----------------------------------------------------------------------------- profile


def test_profile_html(tmp_path: Path) -> None:
    out, pj = tmp_path / "p.html", tmp_path / "p.json"
    code = main(["profile", str(ZOO), "--target", "cortex-m7", "--no-host", "--json", str(pj),
                 "--html", str(out)])
    assert code == 0
    page = out.read_text()
    _self_contained(page)
    prof = json.loads(pj.read_text())
    assert 'class="verdict pass"' in page and "FITS cortex-m7" in page
    for layer in prof["layers"]:
        assert f"<td>{layer['name']}</td>" in page
    assert 'class="chart flash"' in page and 'class="chart ram"' in page
    out2 = tmp_path / "p2.html"
    assert main(["report", str(pj), "--html", str(out2)]) == 0
    assert "FITS cortex-m7" in out2.read_text()


# ----------------------------------------------------------------------------- end to end


def test_measure_html_end_to_end_and_the_path_is_checked_before_measuring(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out, js = tmp_path / "m.html", tmp_path / "m.json"
    args = ["measure", str(ZOO), "--formats", "dense,csr", "--backends", "torch,scipy",
            "--data", "none", "--min-calls", "5", "--min-time", "0.05", "--json", str(js)]
    assert main([*args, "--html", str(out)]) == 0
    page = out.read_text()
    doc = json.loads(js.read_text())
    assert len(_lanes(page)) == sum(1 for r in doc["rows"] if r["samples_ns"]) >= 2
    assert f"wrote {out}" in capsys.readouterr().out
    js.unlink()
    before = out.read_bytes()
    assert main([*args, "--html", str(out)]) == 2  # exists, no --force: refused before work
    assert "exists: pass --force" in capsys.readouterr().err
    assert out.read_bytes() == before and not js.exists()
    assert main([*args, "--html", str(tmp_path)]) == 2  # a directory
    assert "is a directory" in capsys.readouterr().err and not js.exists()


def test_sweep_html_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "sweep.html"
    assert main(["sweep", "--arch", "lenet5", "--sparsities", "0,90", "--formats", "dense,csr",
                 "--backends", "onnxruntime,scipy", "--min-calls", "5", "--min-time", "0.05",
                 "--no-plot", "--html", str(out)]) == 0
    page = out.read_text()
    assert page.count('class="chart lines"') == 2 and _lanes(page)
    assert "lenet5-s90" in page


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("content,message", [
    (None, "not found"),
    ("", "is empty"),
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "is not a results file"),
    ('{"hello": "world"}', "is not a results file"),
    ('{"schema": "sparsebench-results", "schema_version": 7, "rows": []}', "schema version 7"),
    ('{"schema": "sparsebench-results", "schema_version": 1, "rows": [1, 2]}',
     "not a valid sparsebench results"),
    ('{"schema": "sparsebench-results", "schema_version": 1, "rows": []}', "no result rows"),
    ('{"schema": "sparsebench-profile", "schema_version": 1, "target": []}',
     "not a valid sparsebench profile"),
    ('{"base": 1, "new": 2, "mode": "files", "rows": [3], "exit_code": 0}',
     "not a valid sparsebench comparison"),
])
def test_bad_report_inputs_are_one_line_and_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture, content: str | None,
        message: str) -> None:
    path = tmp_path / "in.json"
    if content is not None:
        path.write_text(content)
    out = tmp_path / "out.html"
    assert main(["report", str(path), "--html", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_report_never_overwrites_without_force_and_writes_atomically(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = _write(tmp_path / "r.json", _results([_row("m", "dense", "torch", 1.0)]))
    out = tmp_path / "r.html"
    out.write_text("keep me")
    assert main(["report", str(src), "--html", str(out)]) == 2
    assert "exists: pass --force" in capsys.readouterr().err and out.read_text() == "keep me"
    assert main(["report", str(src), "--html", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert main(["report", str(src), "--html", str(out), "--force"]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left
    (tmp_path / "sub").mkdir()
    monkey = tmp_path / "sub"
    import os

    cwd = os.getcwd()
    os.chdir(monkey)
    try:  # default output: the input's name with .html, in the current folder
        assert main(["report", str(src)]) == 0
    finally:
        os.chdir(cwd)
    assert (monkey / "r.html").exists()


# ----------------------------------------------------------------------------- the browser


def _console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium package")
def test_chromium_renders_the_report_without_console_errors(tmp_path: Path) -> None:
    image = pytest.importorskip("matplotlib.image")
    page = tmp_path / "report.html"
    sweep = _write(tmp_path / "sweep.json", _sweep_doc())
    assert main(["report", str(EXAMPLE), str(sweep), "--html", str(page)]) == 0
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--no-first-run", "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr",
         "--v=0", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
         "--window-size=1280,1600", page.as_uri()],
        capture_output=True, text=True, timeout=180)
    assert shot.exists(), proc.stderr[-2000:]
    assert _console_lines(proc.stderr) == []  # no script errors, nothing blocked by the CSP
    pixels = image.imread(str(shot))
    assert pixels.shape[:2] == (1600, 1280)
    rgb = (pixels[..., :3] * 255).round().astype("uint8").reshape(-1, 3)
    colours = {tuple(c) for c in rgb[::7]}
    assert len(colours) > 50  # text, tables and charts, not a blank page
    white = (rgb.min(axis=1) > 245).mean()
    assert white < 0.97


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium package")
def test_chromium_check_sees_a_console_error(tmp_path: Path) -> None:
    """The console check above is not vacuous: a blocked load and a script error show up."""
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" '
                    "content=\"default-src 'none'\"></head><body>"
                    '<img src="https://example.invalid/x.png"></body></html>')
    proc = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--v=0",
         f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=180)
    assert _console_lines(proc.stderr), proc.stderr[-2000:]
