"""Throughput mode (`measure --streams N`), the roofline of every row and the batch axis up to
32: fields, their arithmetic, messages and exit codes (never a timing)."""

from __future__ import annotations

import json
import math
import os

import pytest

from sparsebench.cli import main
from sparsebench.measure.streams import Streams, stream_fields
from sparsebench.measure.timing import TimingPolicy, clock, time_stream
from sparsebench.shipped import DEFAULT_MODEL

from conftest import needs_kernels

FAST = ["--min-calls", "3", "--min-time", "0", "--warmup", "1", "--data", "none"]
LENET_IO_BYTES = 4 * (1 * 28 * 28 + 10)  # one float32 image in, ten logits out (batch 1)


def test_time_stream_starts_at_the_shared_time_and_counts_its_calls():
    calls = []
    policy = TimingPolicy(warmup_calls=0, min_calls=5, min_seconds=0)
    start = clock() + 20_000_000  # 20 ms ahead
    samples, first, end = time_stream(lambda: calls.append(clock()), start, policy)
    assert len(samples) == 5 and first >= start and end >= first
    assert all(c >= start for c in calls[-5:]) and len(calls) > 5  # warm-up calls before it


def test_stream_fields_are_batch_times_calls_over_the_wall():
    ms = 1_000_000
    fields = stream_fields(2, [[1 * ms, 3 * ms], [2 * ms] * 3], [(0, 10 * ms), (5 * ms, 20 * ms)],
                           batch=8)
    assert fields["streams"] == 2 and fields["stream_calls"] == 5
    assert fields["stream_wall_s"] == pytest.approx(0.020)
    assert fields["throughput_items_s"] == pytest.approx(8 * 5 / 0.020)
    assert fields["stream_p50_ms"] == pytest.approx(2.0)
    assert stream_fields(3) == {"streams": 3, "stream_calls": None, "stream_wall_s": None,
                                "throughput_items_s": None, "stream_p50_ms": None}


def _failing(job):
    raise RuntimeError("cannot prepare this")


def test_streams_are_processes_that_report_or_say_why_not():
    job = {"timing": {"warmup_calls": 1, "min_calls": 4, "min_seconds": 0}}
    streams = Streams(job, 3, lambda job: (lambda: os.getpid()))
    try:
        pids = {pid for pid, _, _ in streams.children}
        assert len(pids) == 3 and os.getpid() not in pids
        assert streams.ready() is None
        fields, failed = streams.measure(2, TimingPolicy(**job["timing"]))
    finally:
        streams.close()
    assert failed is None and fields["streams"] == 3 and fields["stream_calls"] >= 12
    assert fields["throughput_items_s"] == pytest.approx(
        2 * fields["stream_calls"] / fields["stream_wall_s"])
    streams = Streams(job, 2, _failing)
    try:
        assert streams.ready() == "RuntimeError: cannot prepare this"
        fields, failed = streams.measure(1, TimingPolicy())
    finally:
        streams.close()
    assert failed == "RuntimeError: cannot prepare this" and fields["throughput_items_s"] is None


@needs_kernels
def test_measure_streams_rows_throughput_and_roofline(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 1)  # 2 streams x 1 thread > 1 core: the warning
    out = tmp_path / "r.json"
    code = main(["measure", str(DEFAULT_MODEL), "--backends", "torch,onnxruntime,native",
                 "--formats", "dense,csr", "--streams", "2", "--json", str(out), *FAST])
    stdout, err = capsys.readouterr()
    assert code == 0
    warning = [line for line in err.splitlines() if "warning" in line]
    assert warning == ["sparsebench: warning: --streams 2 x --threads 1 = 2 threads is more than "
                       "the 1 cores of this machine: the streams will compete for them"]
    doc = json.loads(out.read_text())
    rows = {f"{r['format']}/{r['backend']}": r for r in doc["rows"]}
    assert set(rows) == {"dense/torch", "dense/onnxruntime", "csr/native"}
    roof = doc["roofline"]
    assert roof["copy_gbps"] > 0 and roof["gemm_gflops"]["1"] > 0
    for name, r in rows.items():
        assert r["status"] == "ok" and r["reason"] is None, (name, r["reason"])
        assert r["streams"] == 2 and r["stream_calls"] >= 2 * 3  # --min-calls per stream
        assert r["throughput_items_s"] > 0 and r["stream_p50_ms"] > 0
        assert r["throughput_items_s"] == pytest.approx(r["batch"] * r["stream_calls"]
                                                        / r["stream_wall_s"])
        p50_s = r["latency_ms"]["p50"] / 1e3
        assert r["achieved_gflops"] == pytest.approx(2 * r["sparse_macs"] * r["batch"] / p50_s
                                                     / 1e9)
        assert r["achieved_gbps"] == pytest.approx(r["traffic_bytes"] / p50_s / 1e9)
        assert r["roofline_flop_frac"] == pytest.approx(r["achieved_gflops"]
                                                        / roof["gemm_gflops"]["1"])
        assert r["roofline_bw_frac"] == pytest.approx(r["achieved_gbps"] / roof["copy_gbps"])
    for name in ("dense/torch", "dense/onnxruntime"):  # no plan of their own: the estimate
        assert rows[name]["traffic_source"] == "weights+io"
        assert rows[name]["traffic_bytes"] == rows[name]["weight_bytes"] + LENET_IO_BYTES
    assert rows["csr/native"]["traffic_source"] == "plan"
    assert "items/s with 2 streams" in err  # the progress log
    assert "throughput (2 concurrent streams, --threads each)" in stdout
    assert max(len(line) for line in stdout.splitlines()) <= 100


@pytest.mark.parametrize("argv, message", [
    (["--streams", "0"], "--streams must be between 1 and 64, got 0"),
    (["--streams", "65"], "--streams must be between 1 and 64, got 65"),
    (["--streams", "x"], "argument --streams: invalid int value: 'x'"),
    (["--streams", "2", "--ab", "base.pt"], "--streams does not combine with --ab"),
])
def test_bad_streams_are_one_line_and_exit_2(argv, message, capsys):
    code = main(["measure", str(DEFAULT_MODEL), *argv])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and message in err, err


def test_batch_32_runs_every_backend_and_format(tmp_path):
    out = tmp_path / "r.json"
    assert main(["measure", str(DEFAULT_MODEL), "--batch", "32", "--json", str(out),
                 *FAST]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 11 and {r["batch"] for r in rows} == {32}
    for r in rows:
        if r["backend"] == "native" and r["status"] != "ok" and "native" in (r["reason"] or ""):
            continue  # no compiler here: the native rows say so (test_native_skip.py)
        assert r["status"] == "ok", (r["format"], r["backend"], r["reason"])
        assert r["max_rel_err"] < 1e-4, (r["format"], r["backend"], r["max_rel_err"])
        assert not math.isnan(r["achieved_gflops"]) and r["achieved_gflops"] > 0
