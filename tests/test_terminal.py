"""What the terminal shows: tables that fit 80 and 100 columns without cutting a number, the
width of piped output, progress on stderr only, the plan before a run, and forked workers that
give the rows fresh interpreters give (each in its own new process)."""

from __future__ import annotations

import io
import os
import re

import pytest
from rich.console import Console

from sparsebench import ui
from sparsebench.backends import get_backend
from sparsebench.cli import main
from sparsebench.measure.harness import (SPAWN_SECONDS, MeasureConfig, estimate_seconds, plan,
                                         plan_line, run_plan)
from sparsebench.measure.report import print_report
from sparsebench.measure.results import ResultsFile, skipped_row
from sparsebench.shipped import DEFAULT_MODEL

LONG_MODEL = "vgg11_bn_prune_l_seed3_epochs160_cifar10_run_with_a_long_name"
LONG_REASON = ("conversion failed: layer features.0 has 3 input channels, the bsr-8x8 format needs "
               "the input dimension to be a multiple of the block width (8); use bsr-4x4 or csr")


def _ok(model: str, fmt: str, backend: str, p50: float, rss: int, weights: int, err: float,
        **extra: object) -> dict:
    row = skipped_row(model, fmt, backend, 32, 2, "")
    row.update(status="ok", reason=None, impl=f"{backend}-{fmt}-impl-with-a-long-name-avx512",
               latency_ms={"p10": p50 * 0.9, "p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.3},
               peak_rss_bytes=rss, setup_peak_rss_bytes=rss * 3, weight_bytes=weights,
               max_rel_err=err, max_abs_err=err, accuracy=91.23, **extra)
    return row


def _doc() -> dict:
    rows = [
        _ok(LONG_MODEL, "dense", "torch", 12345.678, 987 * 1024 ** 2, 512 * 1024 ** 2, 0.0),
        _ok(LONG_MODEL, "structured", "onnxruntime", 4321.5, 1236 * 1024 ** 2, 98 * 1024 ** 2,
            3.4e-7, layers={"converted": 11, "total": 13,
                            "dense": {"features.0": "3 input channels: nothing to remove",
                                      "classifier.6": "the output layer is kept whole"}}),
        _ok(LONG_MODEL, "csr", "torch-sparse", 99999.125, 2047 * 1024 ** 2, 77 * 1024 ** 2,
            1.26e-6, warnings=["non-finite weights in classifier.0"], streams=4,
            throughput_items_s=1.234, stream_p50_ms=123456.789, achieved_gflops=0.0123,
            roofline_flop_frac=0.000123, achieved_gbps=1.5, traffic_source="weights+io",
            roofline_bw_frac=0.0625),
        skipped_row(LONG_MODEL, "bsr-8x8", "native", 32, 2, LONG_REASON),
        _ok("lenet5", "csr", "native", 0.0213, 15 * 1024 ** 2, 100 * 1024, 2.4e-7,
            noise="load average 11.8 > 2 cores", streams=4, throughput_items_s=987654.321,
            stream_p50_ms=0.0456, achieved_gflops=48.25, roofline_flop_frac=0.4825,
            achieved_gbps=12.5, traffic_source="plan", roofline_bw_frac=0.625),
    ]
    rows.append(_ok("lenet5", "dense", "torch", 0.1524, 14 * 1024 ** 2, 241 * 1024, 0.0))
    models = {m: {"kind": "checkpoint", "method": "prune-l", "sparsity": 0.726,
                  "formats": {"dense": {"weight_bytes": 512 * 1024 ** 2},
                              "csr": {"weight_bytes": 77 * 1024 ** 2}}}
              for m in (LONG_MODEL, "lenet5")}
    return {"rows": rows, "models": models,
            "roofline": {"copy_gbps": 20.0, "gemm_gflops": {"2": 100.0}}}


NUMBERS = ("12345.678", "4321.500", "99999.125", "987.00 MiB", "1.21 GiB", "2.00 GiB",
           "512.00 MiB", "98.00 MiB", "77.00 MiB", "3.4e-07", "1.3e-06", "0.021", "0.152",
           "0.12x", "2.86x", "11/13", "100.0 KiB", "241.0 KiB",
           "987654", "0.046", "123456.789", "1.23")  # the last four: the throughput table


def _render(width: int, wide: bool = False) -> str:
    buf = io.StringIO()
    con = Console(file=buf, width=width, highlight=False, soft_wrap=True)
    print_report(_doc(), con, wide=wide)
    return buf.getvalue()


@pytest.mark.parametrize("width", [80, 100])
def test_measure_tables_fit_and_keep_every_number_whole(width):
    text = _render(width)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width
    for number in NUMBERS:  # each on one line, not cut or folded
        assert any(number in line for line in lines), (number, text)
    flat = " ".join(text.split())
    assert "[2] " + LONG_REASON in flat        # the reason in full, under the table
    assert "skipped [2]" in flat and "ok [1]" in flat and "noisy" in flat
    assert "[1] non-finite weights in classifier.0" in flat


def test_wide_table_has_the_detail():
    text = _render(80, wide=True)
    for detail in ("bsr-8x8", LONG_REASON, "csr-impl-with-a-long-name-avx512", "p99 ms",
                   "features.0: 3 input channels: nothing to remove", "noisy: load average",
                   "items/s", "of GEMM peak", "48.2", "48.2%", "12.5 plan", "1.5 w+io",
                   "62.5%", "ceilings: copy 20.0 GB/s"):
        assert detail in text, detail


def test_piped_output_follows_columns(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    assert not ui.console().is_terminal and ui.console().width == ui.PIPED_WIDTH == 100
    monkeypatch.setenv("COLUMNS", "87")
    assert ui.console().width == 87 and ui.console(stderr=True).width == 87


def _jobs(paths: dict[str, str], **kw: object) -> list[dict]:
    cfg = MeasureConfig(models=list(paths), timing={"min_calls": 3, "min_seconds": 0,
                                                    "warmup_calls": 1}, **kw)
    return plan(cfg, paths)


def test_plan_line_counts_the_executions():
    formats, backends = ["dense", "csr", "bsr"], ["torch", "scipy", "torch-sparse"]
    pairs = sum(get_backend(b).supports(f) for f in formats for b in backends)
    jobs = _jobs({"a.pt": "a", "b.pt": "b"}, formats=formats, backends=backends,
                 batches=[1, 8, 32], threads=[1, 2])
    assert len(jobs) == 2 * pairs * 3 * 2
    line = plan_line(jobs)
    assert line.startswith(f"plan: {len(jobs)} executions = 2 models x {pairs} format/backend "
                           "pairs x 3 batch sizes x 2 thread counts; estimated ")
    assert "an estimate" in line
    assert estimate_seconds(jobs, forked=False) == pytest.approx(
        estimate_seconds(jobs) + len(jobs) * SPAWN_SECONDS)
    slower = [{**j, "timing": {**j["timing"], "min_seconds": 2.0}} for j in jobs]
    assert estimate_seconds(slower) == pytest.approx(estimate_seconds(jobs) + 2.0 * len(jobs))


FAST = ["--min-calls", "3", "--min-time", "0", "--warmup", "1", "--data", "none"]


def test_stdout_has_results_only_and_progress_goes_to_stderr(capsys):
    code = main(["measure", str(DEFAULT_MODEL), "--backends", "torch", "--formats", "dense",
                 *FAST])
    out, err = capsys.readouterr()
    assert code == 0
    assert err.startswith("plan: 1 execution = 1 model x 1 format/backend pair")
    assert "lenet5_prune_l dense/torch b1 t1: torch-eager p50" in err   # the progress log
    assert "plan:" not in out and "b1 t1:" not in out and "\r" not in out and "\x1b" not in out
    assert not re.search("[━╸╺]", out) and "ETA" not in out
    assert out.startswith("executions (batch 1, threads 1)") and "dense/torch" in out


def test_forked_workers_give_the_rows_of_fresh_interpreters(tmp_path):
    paths = {str(DEFAULT_MODEL): "lenet", str(tmp_path / "missing.pt"): "missing"}
    jobs = [j for j in _jobs(paths, formats=["dense", "csr"], backends=["torch", "scipy"])
            if (j["format"], j["backend"]) in (("dense", "torch"), ("csr", "scipy"))
            and (j["model"] == "lenet" or j["format"] == "dense")]
    assert len(jobs) == 3
    rows = {}
    for fork in (True, False):
        results = ResultsFile(None, config={})
        run_plan(jobs, results, timeout=300, fork=fork)
        rows[fork] = results.rows
    same = ("model", "format", "backend", "batch", "threads", "status", "reason", "impl",
            "weight_bytes", "max_abs_err", "max_rel_err", "dense_macs", "sparse_macs",
            "warnings")
    assert [[r[k] for k in same] for r in rows[True]] == [[r[k] for k in same]
                                                           for r in rows[False]]
    assert [r["status"] for r in rows[True]] == ["ok", "ok", "skipped"]
    assert rows[True][2]["reason"].startswith("error: ")            # the missing file
    # every execution ran in a process of its own, neither this one nor a previous one's
    pids = [r["worker_pid"] for r in rows[True]]
    assert len(set(pids)) == len(pids) and os.getpid() not in pids
    for forked, fresh in zip(rows[True][:2], rows[False][:2]):
        assert forked["peak_rss_bytes"] is not None and fresh["peak_rss_bytes"] is not None
        # same accounting: without re-mapping the parent's library pages a forked child
        # counted ~10 MiB more (code pages faulted in again)
        assert abs(forked["peak_rss_bytes"] - fresh["peak_rss_bytes"]) < 5 * 1024 ** 2


def test_forked_workers_run_torch_on_two_threads(tmp_path):
    """The fork server's parent must start no OpenMP pool: a child forked after one has run
    hangs in its first parallel op (libgomp is not fork-safe). A hang is a timed-out row."""
    jobs = [j for j in _jobs({str(DEFAULT_MODEL): "lenet"}, formats=["dense"],
                             backends=["torch"], batches=[64], threads=[2])]
    assert len(jobs) == 1
    results = ResultsFile(None, config={})
    run_plan(jobs, results, timeout=120, fork=True)
    (row,) = results.rows
    assert (row["status"], row["threads"], row["batch"]) == ("ok", 2, 64), row.get("reason")


@pytest.mark.parametrize("width", [80, 100])
def test_profile_tables_fit(width, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", str(width))
    md = tmp_path / "p.md"
    code = main(["profile", str(DEFAULT_MODEL), "--target", "cortex-m7", "--no-host",
                 "--no-accuracy", "--markdown", str(md)])
    out = capsys.readouterr().out
    assert code == 0
    assert max(len(line) for line in out.splitlines()) <= width
    total = next(line for line in md.read_text().splitlines() if line.startswith("| **total"))
    numbers = re.findall(r"\*\*([0-9,]+)\*\*", total)
    assert len(numbers) >= 10
    for number in numbers:   # the whole model in every encoding, each number whole
        assert re.search(rf"(^|\s){number}(\s|$)", out, re.M), number


def test_sweep_tables_drop_the_detail_columns_and_name_what_varies():
    from sparsebench.sweep import compact

    head = ["execution", "impl", "batch", "threads", "0%", "90%"]
    lines = [["csr/native", "native-csr-avx512-i16-t1", "1", "2", "0.123", "0.045"],
             ["csr/native", "native-csr-avx512-i16-t1", "8", "2", "0.456", "0.078"]]
    assert compact(head, lines) == (["execution", "0%", "90%"],
                                    [["csr/native b1", "0.123", "0.045"],
                                     ["csr/native b8", "0.456", "0.078"]])


def test_execution_labels_break_after_the_slash_when_narrow():
    from sparsebench.measure.report import _split_labels

    def lines():
        return [["[bold]m[/]", "", "", ""], ["  structured/onnxruntime", "0.025", "62.84 MiB", "ok"],
                ["  csr/native", "0.024", "16.00 MiB", "ok"]]
    headers = ["execution", "p50 ms", "memory", "status"]
    narrow, wide = lines(), lines()
    _split_labels(narrow, headers, 40)
    _split_labels(wide, headers, 100)
    assert [r[0] for r in narrow[1:]] == ["  structured/\n    onnxruntime", "  csr/\n    native"]
    assert wide == lines()
