"""Issue 10: bad values are one line and exit 2 before any work, outputs are never lost or
overwritten unasked, the size guard, honest execution memory, noise flags, exit codes and
signals."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from sparsebench.archs import create_model
from sparsebench.cli import _recorded_run, main
from sparsebench.measure.report import model_summaries, noise_note, speedup
from sparsebench.measure.results import claim_results, load_results
from sparsebench.measure.timing import noise_flag
from test_measure import FAST, _lenet5_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _results_file(path: Path, rows: int = 2) -> Path:
    """A small but real results file (from `measure --json`)."""
    ckpt = _lenet5_checkpoint(path.parent / "seed.pt")
    batches = ",".join(str(b) for b in range(1, rows + 1))
    assert main(["measure", str(ckpt), "--formats", "dense", "--backends", "torch", "--batch",
                 batches, "--json", str(path), *FAST]) == 0
    return path


@pytest.fixture
def world(tmp_path):
    """Files the bad-input cases point at."""
    ckpt = _lenet5_checkpoint(tmp_path / "c.pt")
    (tmp_path / "dir").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "main.c").write_text("int main(void) { return 42; }\n")
    (tmp_path / "notes.json").write_text('{"mine": "not sparsebench"}')
    (tmp_path / "plain.txt").write_text("keep me\n")
    results = tmp_path / "r.json"
    results.write_text(json.dumps({"schema": "sparsebench-results", "schema_version": 1,
                                   "machine": {}, "config": {}, "models": {},
                                   "rows": [{"model": "m", "format": "dense",
                                             "backend": "torch", "batch": 1, "threads": 1,
                                             "status": "ok"}]}))
    nan = create_model("lenet300").eval()
    with torch.no_grad():
        nan.fc2.weight[0, 0] = float("nan")
    torch.save(nan, tmp_path / "nan.pt")
    return {"ckpt": str(ckpt), "dir": str(tmp_path / "dir"), "full": str(tmp_path / "full"),
            "notes": str(tmp_path / "notes.json"), "plain": str(tmp_path / "plain.txt"),
            "results": str(results), "nan": str(tmp_path / "nan.pt")}


M = ["measure", "{ckpt}", *FAST]
S = ["sweep", "--arch", "lenet300", "--sparsities", "0,50", "--formats", "dense",
     "--backends", "torch", "--no-plot", "--min-calls", "3", "--min-time", "0"]
TRAIN = ["train", "--arch", "lenet300", "--dataset", "synthetic", "--limit-train", "64",
         "--limit-test", "32", "--epochs", "1", "--quiet"]
BAD = [
    (M + ["--threads", "abc"], "argument --threads: expected comma-separated integers, got 'abc'"),
    (M + ["--batch", "1,abc"], "argument --batch: expected comma-separated integers"),
    (M + ["--batch", "1.5"], "argument --batch: expected comma-separated integers, got '1.5'"),
    (S + ["--threads", "x"], "argument --threads: expected comma-separated integers, got 'x'"),
    (M + ["--json", "{dir}"], "--json path is a directory"),
    (["profile", "{ckpt}", "--target", "cortex-m7", "--no-host", "--json", "{dir}"],
     "--json path is a directory"),
    (["compare", "{results}", "{results}", "--json", "{dir}"], "--json path is a directory"),
    (["compare", "{results}", "{results}", "--markdown", "{dir}"],
     "--markdown path is a directory"),
    (["info", "{ckpt}", "--card", "{dir}"], "--card path is a directory"),
    (TRAIN + ["--lr", "-1", "--out", "{dir}/x.pt"], "--lr must be a positive number, got -1.0"),
    (TRAIN + ["--out", "{dir}"], "--out path is a directory"),
    (TRAIN + ["--momentum", "1.5", "--out", "{dir}/x.pt"], "--momentum must be in [0, 1)"),
    (["export-c", "{ckpt}", "--out", "{plain}"], "is an existing file, not a folder"),
    (["export-c", "{ckpt}", "--out", "{full}"], "is not empty: pass --force"),
    ([a for a in S if a != "--no-plot"] + ["--plot", "{dir}"], "--plot path is a directory"),
    (S + ["--save-models", "{plain}"], "is an existing file, not a folder"),
    (M + ["--min-time", "-1"], "--min-time must be a number of at least 0, got -1.0"),
    (M + ["--min-calls", "0"], "--min-calls must be a number of at least 1, got 0"),
    (M + ["--warmup", "-5"], "--warmup must be a number of at least 0, got -5"),
    (M + ["--timeout", "0"], "--timeout must be a positive number"),
    (M + ["--max-memory", "lots"], "--max-memory: expected a size like 4G"),
    (M + ["--input-shape", "1,32,32"], "--input-shape 1,32,32 contradicts it"),
    (M + ["--json", "{notes}"], "is not a results file this sparsebench can extend"),
    (M + ["--json", "{notes}", "--append"], "is not a results file this sparsebench can extend"),
    (M + ["--json", "{results}"], "already holds 1 result rows: pass --append"),
    (M + ["--json", "{results}", "--append", "--force"], "--append and --force contradict"),
    (M + ["--markdown", "{plain}"], "--markdown file {plain} exists: pass --force"),
    (["profile", "{nan}", "--target", "cortex-m7", "--no-host"], "non-finite weights"),
    (["info", "{ckpt}", "--card", "{plain}"], "--card file {plain} exists: pass --force"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD])
def test_bad_values_are_one_line_exit_2_before_any_work(argv, message, world, capsys,
                                                        monkeypatch):
    from sparsebench.measure import harness

    before = {k: Path(v).read_bytes() for k, v in world.items() if Path(v).is_file()}
    monkeypatch.setattr(harness, "run_worker", lambda *a, **k: pytest.fail("work started"))
    code = main([a.format(**world) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("sparsebench: error: ") and err.count("\n") == 1, err
    assert message.format(**world) in err and "Traceback" not in err
    assert {k: Path(world[k]).read_bytes() for k in before} == before  # nothing overwritten
    assert os.listdir(world["dir"]) == [] and os.listdir(world["full"]) == ["main.c"]


# ------------------------------------------------------------------------ results never lost


def test_existing_results_are_appended_replaced_or_kept(tmp_path, capsys):
    path = _results_file(tmp_path / "r.json", rows=2)
    ckpt = str(tmp_path / "seed.pt")
    one = ["measure", ckpt, "--formats", "dense", "--backends", "torch", "--json", str(path),
           *FAST]
    before = path.read_bytes()
    assert main(one) == 2 and path.read_bytes() == before
    assert main(one + ["--batch", "2,3", "--append"]) == 0
    doc = load_results(path)
    assert sorted(r["batch"] for r in doc["rows"]) == [1, 2, 3]  # batch 2 replaced, not doubled
    assert len(doc["previous_runs"]) == 1
    assert main(one + ["--force"]) == 0
    assert [r["batch"] for r in load_results(path)["rows"]] == [1]


def test_interrupted_before_the_first_row_leaves_the_file(tmp_path, capsys, monkeypatch):
    from sparsebench.measure import harness

    path = _results_file(tmp_path / "r.json", rows=2)
    before = path.read_bytes()
    capsys.readouterr()

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(harness, "run_worker", interrupt)
    code = main(["measure", str(tmp_path / "seed.pt"), "--json", str(path), "--force", *FAST])
    captured = capsys.readouterr()
    assert code == 130 and path.read_bytes() == before
    assert "was not written" in captured.err and "saved" not in captured.err   # a message: stderr


def test_a_second_writer_is_refused(tmp_path, capsys):
    path = tmp_path / "r.json"
    claim = claim_results(path)
    try:
        code = main(["measure", str(_lenet5_checkpoint(tmp_path / "c.pt")), "--json", str(path),
                     *FAST])
    finally:
        claim.release()
    err = capsys.readouterr().err
    assert code == 2 and "another sparsebench run is writing" in err and not path.exists()


def test_export_c_writes_into_a_full_folder_only_with_force(tmp_path, capsys):
    out = tmp_path / "c"
    out.mkdir()
    (out / "main.c").write_text("mine\n")
    ckpt = str(_lenet5_checkpoint(tmp_path / "m.pt"))
    assert main(["export-c", ckpt, "--out", str(out)]) == 2
    assert (out / "main.c").read_text() == "mine\n"
    assert main(["export-c", ckpt, "--out", str(out), "--force"]) == 0
    assert (out / "sb_model.c").exists()


# ------------------------------------------------------------------ size guard, exit codes


def test_size_guard_skips_with_the_estimate_and_the_parent_stays_small(tmp_path, capsys):
    conv = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 10))
    torch.save(conv, tmp_path / "conv.pt")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code = main(["measure", str(tmp_path / "conv.pt"), "--input-shape", "3,20000,20000",
                 "--formats", "dense,csr", "--backends", "torch,scipy", "--threads", "999",
                 "--json", str(tmp_path / "r.json"), *FAST])
    captured = capsys.readouterr()
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert code == 1 and "no execution succeeded (2 skipped)" in captured.err
    assert "warning: --threads 999 is more than the" in captured.err
    rows = load_results(tmp_path / "r.json")["rows"]
    assert all(r["reason"].startswith("too large: estimated worker memory") for r in rows)
    assert all(r["estimated_bytes"] >= 4 * 3 * 20000 * 20000 for r in rows)
    assert grown_kib < 1024 ** 2  # the 4.8 GB input was never made in this process


def test_measure_exits_1_when_nothing_ran(tmp_path, capsys):
    ckpt = str(_lenet5_checkpoint(tmp_path / "c.pt"))
    assert main(["measure", ckpt, "--formats", "dense", "--backends", "torch",
                 "--max-memory", "1K", *FAST]) == 1
    assert "no execution succeeded" in capsys.readouterr().err


# ------------------------------------------------------------------------ honest memory


def test_execution_memory_of_sparse_is_below_dense(tmp_path, capsys):
    from sparsebench import native

    reason = native.available()
    if reason:
        pytest.skip(reason)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 4096)).eval()
    with torch.no_grad():
        for layer in (model[0], model[2]):
            w = layer.weight.view(-1)
            w[torch.randperm(w.numel())[: int(0.9 * w.numel())]] = 0
    model.input_shape = (4096,)
    torch.save(model, tmp_path / "big.pt")
    del model
    out = tmp_path / "r.json"
    assert main(["measure", str(tmp_path / "big.pt"), "--formats", "dense,csr", "--backends",
                 "torch,native", "--json", str(out), *FAST]) == 0
    assert "exec memory" in capsys.readouterr().out
    rows = {(r["format"], r["backend"]): r for r in load_results(out)["rows"]}
    dense, csr = rows[("dense", "torch")], rows[("csr", "native")]
    assert dense["weight_bytes"] == 2 * (4096 * 4096 + 4096) * 4
    assert dense["peak_rss_bytes"] >= dense["weight_bytes"]  # its weights are resident
    assert csr["peak_rss_bytes"] < dense["peak_rss_bytes"] / 2
    assert csr["setup_peak_rss_bytes"] > csr["peak_rss_bytes"]  # conversion is setup


# ------------------------------------------------------------------------------ noise


def test_noise_flag_rules():
    quiet = [1_000_000] * 50
    assert noise_flag(quiet, load=0.5, cores=2) is None
    spread = [200_000] * 10 + [30_000_000] * 40     # a competing process: p50 150x p10
    assert noise_flag(spread, load=0.5, cores=2).startswith("p50 30 ms > 3x p10 0.2 ms")
    assert noise_flag(quiet, load=3.5, cores=2) == "load average 3.5 > 2 cores"


def test_speedups_and_headlines_leave_noisy_rows_out():
    def r(fmt, backend, p50, noise=None):
        return {"model": "m", "format": fmt, "backend": backend, "batch": 1, "threads": 2,
                "status": "ok", "latency_ms": {"p50": p50}, "noise": noise}

    rows = [r("dense", "torch", 300.0, noise="p50 300 ms > 3x p10 0.2 ms"),
            r("csr", "scipy", 0.2, noise="p50 0.2 ms > 3x p10 0.01 ms"), r("csr", "native", 1.0)]
    doc = {"rows": rows, "models": {"m": {"formats": {}}}}
    assert speedup(rows, rows[1], "dense-torch") is None  # no "1616.24x" headline
    best = model_summaries(doc)[0]
    assert best[6] == "csr/native" and best[10] == "-"
    assert noise_note(rows).startswith("2 of 3 rows are flagged noisy")


# ------------------------------------------------------------------- signals and resume


def test_sigterm_ends_the_worker_too(tmp_path):
    import psutil

    ckpt = str(_lenet5_checkpoint(tmp_path / "c.pt"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "sparsebench", "measure", ckpt, "--formats",
                             "dense", "--backends", "torch", "--min-time", "600", "--data",
                             "none", "--json", str(tmp_path / "r.json")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parent = psutil.Process(proc.pid)
    workers: list = []
    for _ in range(600):
        workers = parent.children(recursive=True)
        if workers:
            break
        time.sleep(0.1)
    assert workers, "no worker started"
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "terminated" in err
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive


def test_resume_restores_the_runs_threads_and_device():
    rec = _recorded_run("sparsebench train --arch lenet5 --threads 1 --device cpu --data-dir "
                        "/d --quiet")
    assert (rec.threads, rec.device, rec.data_dir) == (1, "cpu", "/d")
    assert _recorded_run("sparsebench measure x") is None and _recorded_run(None) is None


def test_resume_uses_the_recorded_threads(tmp_path, monkeypatch, capsys):
    from sparsebench.train import Trainer

    flags = ["train", "--arch", "lenet300", "--dataset", "synthetic", "--limit-train", "64",
             "--limit-test", "32", "--epochs", "2", "--quiet", "--threads", "1"]
    original = Trainer.train_epoch
    calls = {"n": 0}

    def interrupt_second(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_epoch", interrupt_second)
    part = tmp_path / "part.pt"
    assert main(flags + ["--out", str(part)]) == 130
    monkeypatch.setattr(Trainer, "train_epoch", original)
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: seen.append(n))
    assert main(["train", "--resume", str(part), "--quiet"]) == 0
    assert seen and seen[0] == 1
