"""`sparsebench compare` (the regression gate), interleaved A/B and the injected slowdown."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sparsebench.cli import main
from sparsebench.gate import GateConfig, compare_docs
from sparsebench.gate.report import markdown
from sparsebench.gate.stats import latency_change, split_blocks, verdict
from sparsebench.measure.results import SCHEMA, SCHEMA_VERSION, load_results
from test_measure import FAST, _lenet5_checkpoint

MACHINE = {"cpu": "Test CPU @ 3GHz", "logical_cores": 2, "isa": ["avx2"]}


def samples(n: int = 2000, scale: float = 1.0, seed: int = 0, drift: np.ndarray | None = None
            ) -> list[int]:
    """Right-skewed latencies around 1 ms (lognormal noise, occasional slow calls)."""
    rng = np.random.default_rng(seed)
    x = 1e6 * rng.lognormal(0.0, 0.05, n) * (1 + (rng.random(n) < 0.03) * rng.exponential(1, n))
    if drift is not None:
        x = x * drift
    return [int(v) for v in x * scale]


def row(model: str = "m", fmt: str = "dense", backend: str = "torch", data: list[int] | None = None,
        **extra) -> dict:
    data = samples() if data is None else data
    r = {"model": model, "format": fmt, "backend": backend, "impl": "torch-eager", "batch": 1,
         "threads": 1, "status": "ok", "reason": None,
         "latency_ms": {"p50": float(np.median(data)) / 1e6}, "samples": len(data),
         "samples_ns": data, "peak_rss_bytes": 50 * 2 ** 20, "weight_bytes": 1000,
         "warnings": []}
    r.update(extra)
    return r


def doc(rows: list[dict], **extra) -> dict:
    d = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "machine": dict(MACHINE),
         "versions": {"torch": "2.13.0"}, "config": {}, "models": {}, "rows": rows}
    d.update(extra)
    return d


def write(path: Path, content: dict | str) -> str:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


# ------------------------------------------------------------------------------- statistics


def test_identical_distributions_are_unchanged():
    c = latency_change(samples(seed=1), samples(seed=2))
    assert c.p_value > 0.01 and c.low < 1 < c.high and abs(c.ratio - 1) < 0.01
    assert verdict(c, 0.01, 0.10) == "unchanged" and c.blocks == (20, 20)


@pytest.mark.parametrize("scale,expected", [(1.3, "slower"), (1 / 1.3, "faster")])
def test_a_30_percent_shift_is_found(scale, expected):
    c = latency_change(samples(seed=1), samples(seed=2, scale=scale))
    assert c.p_value < 1e-4 and c.ratio == pytest.approx(scale, rel=0.02)
    assert c.low < c.ratio < c.high
    assert verdict(c, 0.01, 0.10) == expected
    assert verdict(c, 0.01, 0.10, rule="point") == expected


def test_a_significant_3_percent_shift_below_threshold_is_unchanged():
    c = latency_change(samples(seed=1), samples(seed=2, scale=1.03))
    assert c.p_value < 0.01 and 1 < c.low and c.high < 1.10
    assert verdict(c, 0.01, 0.10) == "unchanged"
    assert verdict(c, 0.01, 0.02) == "slower"


def test_rules_for_the_size_of_a_change():
    from sparsebench.gate.stats import Change

    def change(ratio, low, high, p=1e-5):
        return Change(ratio, low, high, p, "wilcoxon/blocks", (20, 20), (100, 100))

    near = change(1.08, 1.05, 1.11)  # the CI reaches 10% and the ratio is past 5%
    assert verdict(near, 0.01, 0.10) == "slower" and verdict(near, 0.01, 0.10, "ci") == "slower"
    assert verdict(near, 0.01, 0.10, rule="point") == "unchanged"
    small = change(1.04, 1.01, 1.12)  # imprecise, but the ratio is below half the threshold
    assert verdict(small, 0.01, 0.10) == "unchanged" and verdict(small, 0.01, 0.1, "ci") == "slower"
    fast = change(1 / 1.08, 1 / 1.11, 1 / 1.05)
    assert verdict(fast, 0.01, 0.10) == "faster"
    with pytest.raises(ValueError, match="unknown rule"):
        verdict(near, 0.01, 0.1, "median")
    assert verdict(Change(1.08, 0.99, 1.2, 1e-5, "x", (20, 20), (1, 1)), 0.01, 0.1) == "unchanged"
    assert verdict(Change(1.3, 1.2, 1.4, 0.02, "x", (20, 20), (1, 1)), 0.01, 0.1) == "unchanged"


def test_drift_within_a_run_is_not_significant_with_blocks():
    # the same code, but each run drifts slowly (autocorrelated): per-call tests cry wolf
    t = np.linspace(0, 1, 2000)
    base = samples(seed=1, drift=1 + 0.04 * np.sin(6 * t))
    new = samples(seed=2, drift=1 + 0.04 * np.sin(6 * t + 2))
    blocks = latency_change(base, new)
    calls = latency_change(base, new, blocks=0)
    assert calls.p_value < 0.01 < blocks.p_value
    assert calls.test == "mann-whitney/calls" and blocks.test == "mann-whitney/blocks"


def test_paired_blocks_cancel_shared_drift():
    drift = 1 + 0.5 * (np.arange(2000) // 100 % 2)  # the machine halves its speed every 100 calls
    base = samples(seed=1, drift=drift)
    new = samples(seed=2, drift=drift, scale=1.12)
    paired = latency_change(base, new, paired=True)
    assert paired.test == "wilcoxon/blocks" and paired.p_value < 1e-4
    assert paired.ratio == pytest.approx(1.12, rel=0.05) and verdict(paired, 0.01, 0.1) == "slower"


def test_smallest_reachable_p_value():
    from sparsebench.gate.stats import min_p_value

    assert min_p_value((7, 7), paired=True) == 2 / 128
    assert min_p_value((8, 8), paired=True) < 0.01
    assert min_p_value((3, 3), paired=False) == 0.1 and min_p_value((20, 20), False) < 1e-9


def test_block_splitting():
    assert [len(b) for b in split_blocks(range(10), 3)] == [4, 3, 3]
    assert [len(b) for b in split_blocks(range(10), 0)] == [1] * 10
    assert [len(b) for b in split_blocks(range(10), 20)] == [1] * 10
    assert [list(b) for b in split_blocks(range(5), 20, sizes=[2, 3])] == [[0, 1], [2, 3, 4]]
    with pytest.raises(ValueError, match="do not cover"):
        split_blocks(range(5), 20, sizes=[2, 2])


def test_process_blocks_are_used_when_given():
    base = samples(600, seed=1)
    c = latency_change(base, samples(600, seed=2), base_sizes=[100] * 6, new_sizes=[100] * 6,
                       paired=True)
    assert c.blocks == (6, 6) and c.test == "wilcoxon/blocks"


# ----------------------------------------------------------------------------- rows and bytes


def test_exact_byte_counts_compare_exactly():
    same = samples(seed=1)
    c = compare_docs(doc([row(data=same)]), doc([row(data=same, weight_bytes=1001)]))
    assert c.rows[0].latency == "unchanged" and c.rows[0].weight_delta == 1
    assert c.rows[0].regressions == ["weights +1 B"] and c.exit_code == 1
    c = compare_docs(doc([row(data=same)]), doc([row(data=same, weight_bytes=999)]))
    assert c.exit_code == 0 and c.rows[0].weight_delta == -1


def test_peak_rss_has_its_own_tolerance():
    same = samples(seed=1)
    base = doc([row(data=same, peak_rss_bytes=40 * 2 ** 20)])
    grown = compare_docs(base, doc([row(data=same, peak_rss_bytes=60 * 2 ** 20)]))
    assert grown.rows[0].regressions == ["peak RSS +20.0 MiB"]
    small = compare_docs(base, doc([row(data=same, peak_rss_bytes=43 * 2 ** 20)]))
    assert small.exit_code == 0  # +7.5%: within 25%
    tiny = compare_docs(doc([row(data=same, peak_rss_bytes=2 ** 20)]),
                        doc([row(data=same, peak_rss_bytes=3 * 2 ** 20)]))
    assert tiny.exit_code == 0  # +200% but only 2 MiB: below the 4 MiB floor
    assert compare_docs(base, doc([row(data=same, peak_rss_bytes=None)])).exit_code == 0


def test_rows_in_one_file_or_skipped_in_base_are_reported_not_failed():
    base = doc([row(), row(fmt="csr", backend="scipy"), row(fmt="bsr", backend="scipy"),
                row(fmt="bsr-4x4", backend="scipy", status="skipped", reason="no kernel")])
    new = doc([row(data=samples(seed=3)), row(fmt="structured"),
               row(fmt="bsr-4x4", backend="scipy", data=samples(seed=4))])
    c = compare_docs(base, new)
    assert c.exit_code == 0 and len(c.rows) == 1
    assert c.only_base == [("m", "csr", "scipy", 1, 1), ("m", "bsr", "scipy", 1, 1)]
    assert c.only_new == [("m", "structured", "torch", 1, 1)]
    assert c.skipped == [(("m", "bsr-4x4", "scipy", 1, 1), "skipped in BASE: no kernel")]
    text = markdown(c)
    assert "only in BASE: 2 rows (m csr scipy 1 1, m bsr scipy 1 1; all listed in --json)" in text
    assert "not compared: m bsr-4x4" in text


def test_unmatched_rows_are_one_line_each_side():
    base = doc([row(fmt=f"f{i}") for i in range(121)] + [row()])
    c = compare_docs(base, doc([row(data=samples(seed=3))]))
    lines = [x for x in markdown(c).splitlines() if "only in" in x]
    assert lines == ["- only in BASE: 121 rows (m f0 torch 1 1, m f1 torch 1 1, m f2 torch 1 1 "
                     "and 118 more; all listed in --json)"]


@pytest.mark.parametrize("new_row,reason", [
    (row(status="skipped", reason="error: worker crashed (Killed)"),
     "skipped in NEW: error: worker crashed (Killed)"),
    (row(status="skipped", reason="error: timed out after 900s"),
     "skipped in NEW: error: timed out after 900s"),
    (row(data=[1_000_000]), "too few samples in NEW (1)"),
    (row(data=samples(scale=1.5), samples_ns=[]), "no raw samples in NEW (2000 calls reported)"),
    (row(data=samples(3, scale=1.5)), "too few samples: 3 blocks cannot reach p < 0.01"),
])
def test_the_gate_fails_closed(new_row, reason, tmp_path, capsys):
    """A row ok in BASE that NEW did not measure, or measured too little to judge, fails."""
    base = row(data=samples(3)) if new_row["samples"] == 3 else row()  # --min-calls 3 on both
    c = compare_docs(doc([base]), doc([new_row]))
    assert c.exit_code == 1 and c.rows[0].unjudged[0].startswith(reason)
    assert "not judged" in markdown(c) and reason in markdown(c)
    paths = [write(tmp_path / "b.json", doc([base])), write(tmp_path / "n.json", doc([new_row]))]
    assert main(["compare", *paths]) == 1
    assert "FAIL: 1 of 1 rows not judged" in capsys.readouterr().out
    assert main(["compare", *paths, "--allow-missing"]) == 0
    assert "(passed: --allow-missing)" in capsys.readouterr().out


# ------------------------------------------------------------------------ command line, exits


@pytest.fixture
def files(tmp_path):
    def make(base_rows, new_rows, **new_extra) -> list[str]:
        return [write(tmp_path / "base.json", doc(base_rows)),
                write(tmp_path / "new.json", doc(new_rows, **new_extra))]
    return make


def test_exit_0_when_unchanged_and_markdown(files, tmp_path, capsys):
    md = tmp_path / "gate.md"
    out = tmp_path / "gate.json"
    paths = files([row(data=samples(seed=1))], [row(data=samples(seed=2))])
    assert main(["compare", *paths, "--markdown", str(md), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "pass: 1 rows compared, no regression" in text and "unchanged" in text
    page = md.read_text()
    assert page.startswith("### :white_check_mark: sparsebench compare")
    assert "| model | format | backend |" in page and "| m | dense | torch | 1 | 1 |" in page
    assert json.loads(out.read_text())["exit_code"] == 0


def test_exit_1_on_a_slowdown(files, tmp_path, capsys):
    md = tmp_path / "gate.md"
    paths = files([row(data=samples(seed=1))], [row(data=samples(seed=2, scale=1.25))])
    assert main(["compare", *paths, "--markdown", str(md)]) == 1
    assert "FAIL: 1 of 1 rows regressed" in capsys.readouterr().out
    assert "**FAIL: latency x1.2" in md.read_text() and md.read_text().startswith("### :x:")


def test_faster_is_not_a_failure(files, capsys):
    paths = files([row(data=samples(seed=1))], [row(data=samples(seed=2, scale=0.7))])
    assert main(["compare", *paths]) == 0
    assert "1 faster" in capsys.readouterr().out


def test_threshold_and_alpha_flags(files, capsys):
    paths = files([row(data=samples(seed=1))], [row(data=samples(seed=2, scale=1.04))])
    assert main(["compare", *paths]) == 0
    assert main(["compare", *paths, "--threshold", "0.02"]) == 1
    assert main(["compare", *paths, "--threshold", "0.02", "--alpha", "1e-300"]) == 1
    assert "cannot reach p < 1e-300" in capsys.readouterr().out  # fails closed: cannot judge
    assert main(["compare", *paths, "--alpha", "2"]) == 2
    assert "--alpha must be in (0, 1)" in capsys.readouterr().err


def test_machine_mismatch_is_refused_unless_allowed(files, capsys):
    other = {**MACHINE, "logical_cores": 8}
    paths = files([row(data=samples(seed=1))], [row(data=samples(seed=2))], machine=other)
    assert main(["compare", *paths]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "machines differ (logical_cores 2 vs 8)" in err
    assert "--allow-machine-mismatch" in err
    assert main(["compare", *paths, "--allow-machine-mismatch"]) == 0
    assert "compared anyway" in capsys.readouterr().out


@pytest.mark.parametrize("case,message", [
    ("text", "is not valid JSON"),
    ("other-json", "is not a sparsebench results file"),
    ("version", "has results schema version 2; this sparsebench reads version 1"),
    ("empty", "results file is empty"),
    ("no-rows", "has no result rows"),
    ("no-match", "base.json has m dense torch 1 1, "),
    ("all-skipped", "no row was measured in both files (1 matching rows were skipped in"),
    ("missing", "results file not found"),
    ("three", "compare takes BASE.json NEW.json, or one A/B file; got 3 files"),
    ("single", "is not an A/B results file"),
    ("ab-in-pair", "is an A/B results file: compare it on its own"),
])
def test_bad_input_one_line_exit_2(tmp_path, capsys, case, message):
    base = write(tmp_path / "base.json", doc([row(status="skipped", reason="unavailable")]
                                             if case == "all-skipped" else [row()]))
    new = {
        "text": "not json {", "other-json": {"schema": "something-else", "rows": []},
        "version": doc([row()], schema_version=2), "empty": "", "no-rows": doc([]),
        "no-match": doc([row(model="x")]),
        "all-skipped": doc([row(status="skipped", reason="unavailable")]),
        "ab-in-pair": doc([row(subject="base"), row(subject="new")], ab={"mode": "x"}),
    }.get(case, doc([row()]))
    new_path = write(tmp_path / "new.json", new)
    args = {"missing": [base, str(tmp_path / "nope.json")], "three": [base, new_path, base],
            "single": [base]}.get(case, [base, new_path])
    assert main(["compare", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sparsebench: error: ") and err.count("\n") == 1
    assert message in err


# ------------------------------------------------------------------------- A/B end to end


def test_ab_interleaved_end_to_end(tmp_path, capsys):
    ckpt = str(_lenet5_checkpoint(tmp_path / "lenet.pt"))
    out = tmp_path / "ab.json"
    assert main(["measure", ckpt, "--ab", ckpt, "--formats", "dense", "--backends", "torch",
                 "--json", str(out), "--inject-slowdown", "0.5", *FAST[:4], "--min-calls", "40",
                 "--data", "none"]) == 0
    d = load_results(out)
    assert d["ab"]["mode"] == "interleaved-calls" and d["ab"]["base_name"] == "lenet@base"
    base, new = d["rows"]
    assert (base["subject"], new["subject"]) == ("base", "new")
    assert base["samples"] == new["samples"] >= 40 and base["peak_rss_bytes"] is None
    assert new["injected_slowdown"]["fraction"] == 0.5 and "injected_slowdown" not in base
    assert base["max_rel_err"] <= 1e-4 and new["weight_bytes"] == base["weight_bytes"]
    capsys.readouterr()
    code = main(["compare", str(out)])
    text = capsys.readouterr().out
    assert code in (0, 1) and "A/B (interleaved-calls)" in text and "wilcoxon" in text


def test_ab_alternating_processes(tmp_path, monkeypatch):
    """Checkout mode: workers of the two checkouts alternate; each process is one block."""
    from sparsebench.measure import harness
    from sparsebench.measure.ab import ABRunner
    from sparsebench.measure.results import ResultsFile

    repo = str(Path(__file__).resolve().parents[1])
    calls = []

    def fake_worker(job, timeout, module="sparsebench.measure.worker", root=None):
        subject = "base" if root else "new"
        calls.append((subject, job["inject_slowdown"]))
        data = samples(50, seed=len(calls), scale=1.0 if root else 1.3)
        return row(model=job["model"], data=data, peak_rss_bytes=len(calls) * 2 ** 20)

    monkeypatch.setattr(harness, "run_worker", fake_worker)
    runner = ABRunner(repo, 10, [str(tmp_path / "m.pt")])
    results = ResultsFile(None, {})
    job = {"model": "m", "path": str(tmp_path / "m.pt"), "format": "dense", "backend": "torch",
           "batch": 1, "threads": 1, "inject_slowdown": 0.2}
    runner.base_name = "m@base"
    runner([job], results, 60.0)
    assert [c[0] for c in calls[:4]] == ["base", "new", "new", "base"]
    assert {c for c in calls if c[0] == "base"} == {("base", None)}
    base, new = results.rows
    assert (base["model"], base["subject"], new["subject"]) == ("m@base", "base", "new")
    assert base["ab"] == "alternating-processes" and base["block_sizes"] == [50] * 10
    assert new["samples"] == 500 and base["peak_rss_bytes"] is not None
    c = compare_docs(*[doc([r]) for r in (base, new)], mode="alternating-processes")
    assert c.rows[0].change.test == "wilcoxon/blocks" and c.rows[0].change.blocks == (10, 10)
    assert c.rows[0].latency == "slower" and not c.rows[0].notes
    few = {**base, "samples_ns": base["samples_ns"][:350], "block_sizes": [50] * 7}
    few_new = {**new, "samples_ns": new["samples_ns"][:350], "block_sizes": [50] * 7}
    c = compare_docs(doc([few]), doc([few_new]), mode="alternating-processes")
    # 2/2^7 > 0.01: 7 pairs can never be significant, so the gate cannot vouch: it fails
    assert c.rows[0].latency == "not compared" and c.exit_code == 1
    assert c.rows[0].unjudged == ["too few samples: 7 blocks cannot reach p < 0.01 (measure "
                                  "longer or more rounds)"]


@pytest.mark.parametrize("args,message", [
    (["{ckpt}", "{ckpt}", "--ab", "{ckpt}"], "--ab compares one model against another; got 2"),
    (["{ckpt}", "--ab", "{missing}"], "not found"),
    (["{ckpt}", "--ab", "{dir}"], "without sparsebench/__init__.py"),
    (["{ckpt}", "--ab", "{ckpt}", "--ab-rounds", "1"], "--ab-rounds must be at least 2"),
    (["{ckpt}", "--inject-slowdown", "-1"], "--inject-slowdown must be in [0, 10]"),
])
def test_ab_bad_input_one_line_exit_2(tmp_path, capsys, args, message):
    ckpt = str(_lenet5_checkpoint(tmp_path / "c.pt"))
    (tmp_path / "d").mkdir()
    subs = {"{ckpt}": ckpt, "{missing}": str(tmp_path / "nope.pt"), "{dir}": str(tmp_path / "d")}
    assert main(["measure", *[subs.get(a, a) for a in args], *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_injected_slowdown_scales_every_call():
    import time

    from sparsebench.measure.inject import slowed
    from sparsebench.measure.timing import TimingPolicy, time_calls

    def call() -> None:
        end = time.perf_counter_ns() + 200_000
        while time.perf_counter_ns() < end:
            pass

    run, info = slowed(call, 0.5)
    assert info["fraction"] == 0.5 and run() is None
    policy = TimingPolicy(warmup_calls=1, warmup_seconds=0, min_calls=20, min_seconds=0)
    ratio = np.median(time_calls(run, policy)) / 200_000
    assert 1.45 < ratio < 2.0  # 1.5 plus clock overhead; more only if the process is preempted


# ------------------------------------------------------------- pytest-benchmark -> compare


def _bench_json(path: Path, scale: float, seed: int, data: bool = True) -> str:
    rounds = [t / 1e9 for t in samples(400, scale=scale, seed=seed)]
    bench = {"machine_info": {"cpu": {"brand_raw": "Test CPU @ 3GHz", "count": 2},
                              "python_version": "3.11"},
             "commit_info": {"id": "abc"},
             "benchmarks": [{"fullname": "benchmarks/test_x.py::test_csr[b1]", "group": "kernels",
                             "stats": {"data": rounds} if data else {"mean": 1.0}}]}
    return write(path, bench)


def test_pytest_benchmark_runs_convert_and_gate(tmp_path, capsys):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from to_results import main as to_results

    base, same, slow = (tmp_path / "base-r.json", tmp_path / "same-r.json", tmp_path / "slow-r.json")
    assert to_results([_bench_json(tmp_path / "b.json", 1.0, 1), str(base)]) == 0
    assert to_results([_bench_json(tmp_path / "s.json", 1.0, 2), str(same)]) == 0
    assert to_results([_bench_json(tmp_path / "w.json", 1.3, 3), str(slow)]) == 0
    rows = load_results(str(base))["rows"]
    assert [(r["model"], r["backend"], r["samples"]) for r in rows] == [
        ("benchmarks/test_x.py::test_csr[b1]", "kernels", 400)]
    capsys.readouterr()
    assert main(["compare", str(base), str(same)]) == 0
    assert main(["compare", str(base), str(slow)]) == 1
    # without --benchmark-save-data there are no samples to test: one line, exit 2
    assert to_results([_bench_json(tmp_path / "n.json", 1.0, 4, data=False),
                       str(tmp_path / "n-r.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("has no raw data; run pytest with --benchmark-save-data")
    assert len(err.splitlines()) == 1
