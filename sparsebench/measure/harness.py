"""The measurement plan and its execution: every (model, format, backend, batch, threads) runs
in a fresh worker process, one at a time, and its row is written as soon as it is done."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from sparsebench.errors import SparsebenchError
from sparsebench.measure.results import ResultsFile, skipped_row
from sparsebench.measure.timing import TimingPolicy

DEFAULT_FORMATS = ("dense", "structured", "csr", "bsr")


def add_timing_flags(p: Any) -> None:
    """The timing flags shared by ``measure`` and ``sweep`` (defaults: ``TimingPolicy``)."""
    d = TimingPolicy()
    p.add_argument("--min-calls", type=int, default=d.min_calls,
                   help=f"timed calls at least (default {d.min_calls})")
    p.add_argument("--min-time", type=float, default=d.min_seconds,
                   help=f"seconds of timed calls at least (default {d.min_seconds:g})")
    p.add_argument("--warmup", type=int, default=d.warmup_calls,
                   help=f"warm-up calls (default {d.warmup_calls})")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per execution")


def timing_from_args(args: Any) -> dict[str, Any]:
    """``MeasureConfig.timing`` from the flags of ``add_timing_flags``."""
    return {"min_calls": args.min_calls, "min_seconds": args.min_time,
            "warmup_calls": args.warmup}


@dataclass
class MeasureConfig:
    """The options of one ``sparsebench measure`` run (stored in the results file)."""

    models: list[str]
    formats: list[str] = field(default_factory=lambda: list(DEFAULT_FORMATS))
    backends: list[str] = field(default_factory=list)
    batches: list[int] = field(default_factory=lambda: [1])
    threads: list[int] = field(default_factory=lambda: [1])
    timing: dict[str, Any] = field(default_factory=dict)
    data: str | None = None
    data_dir: str | None = None
    data_limit: int | None = None
    per_layer: bool = False
    arch: str | None = None
    input_shape: list[int] | None = None
    trust: bool = False
    index_dtype: str = "auto"
    seed: int = 0
    timeout: float = 900.0
    inject_slowdown: float | None = None  # testing aid: see measure/inject.py

    def validate(self) -> None:
        from sparsebench.backends import BACKENDS
        from sparsebench.formats import FORMATS

        if not self.models:
            raise SparsebenchError("no model given")
        for fmt in self.formats:
            FORMATS.check(fmt)
        for backend in self.backends:
            BACKENDS.check(backend)
        if not self.batches or any(b < 1 for b in self.batches):
            raise SparsebenchError(f"batch sizes must be at least 1, got {self.batches}")
        if not self.threads or any(t < 1 for t in self.threads):
            raise SparsebenchError(f"thread counts must be at least 1, got {self.threads}")
        if self.inject_slowdown is not None and not 0 <= self.inject_slowdown <= 10:
            raise SparsebenchError(f"--inject-slowdown must be in [0, 10], got "
                                   f"{self.inject_slowdown}")
        if self.data is not None:
            from sparsebench.data import DATASETS

            DATASETS.check(self.data)


def model_info(loaded: Any, formats: list[str], index_dtype: str) -> dict[str, Any]:
    """Parameters, sparsity and exact storage per format of one loaded model (no timing)."""
    from sparsebench.formats import convert, has_nonfinite

    info: dict[str, Any] = {"path": loaded.path, "kind": loaded.kind, "arch": loaded.arch,
                            "input_shape": list(loaded.input_shape), "notes": list(loaded.notes),
                            "formats": {}}
    module = loaded.module
    if module is None:
        info["notes"].append(f"no torch module: {loaded.onnx_error}")
        return info
    params = list(module.parameters())
    total = sum(p.numel() for p in params)
    nonzero = sum(int((p != 0).sum()) for p in params)
    info.update(params=total, nonzero=nonzero, sparsity=1 - nonzero / total if total else 0.0,
                nonfinite_layers=has_nonfinite(module))
    ckpt = loaded.checkpoint or {}
    if ckpt.get("summary"):
        info["training"] = {k: ckpt["summary"].get(k) for k in (
            "best_test_acc", "generalization_gap", "mean_stability", "params_removed_frac")}
        info["method"] = ckpt.get("method")
    for fmt in formats:
        if fmt != "dense" and not loaded.swappable:
            continue
        try:
            converted = convert(module, fmt, index_dtype=index_dtype)
        except SparsebenchError as exc:
            info["formats"][fmt] = {"error": str(exc)}
            continue
        info["formats"][fmt] = {
            "weight_bytes": converted.weight_bytes,
            "nonzero_params": sum(int((p != 0).sum()) for p in converted.module.parameters()),
            "params": sum(p.numel() for p in converted.module.parameters()),
            "layers": [asdict(s) for s in converted.storage],
            "dense_layers": [list(d) for d in converted.dense_layers],
        }
    return info


def plan(cfg: MeasureConfig, names: dict[str, str]) -> list[dict[str, Any]]:
    """One job per (model, format, backend, batch, threads) the backend can execute."""
    from sparsebench.backends import get_backend

    jobs = []
    for path, name in names.items():
        for fmt in cfg.formats:
            for backend_name in cfg.backends:
                if not get_backend(backend_name).supports(fmt):
                    continue
                for batch in cfg.batches:
                    for threads in cfg.threads:
                        jobs.append({
                            "model": name, "path": path, "format": fmt,
                            "backend": backend_name, "batch": batch, "threads": threads,
                            "timing": cfg.timing, "data": cfg.data, "data_dir": cfg.data_dir,
                            "data_limit": cfg.data_limit, "per_layer": cfg.per_layer,
                            "arch": cfg.arch, "input_shape": cfg.input_shape,
                            "trust": cfg.trust, "index_dtype": cfg.index_dtype,
                            "seed": cfg.seed, "inject_slowdown": cfg.inject_slowdown})
    return jobs


def run_worker(job: dict[str, Any], timeout: float, module: str = "sparsebench.measure.worker",
               root: str | None = None) -> dict[str, Any]:
    """Run one job in a fresh interpreter; a crash or timeout becomes a skipped row.
    ``root``: run the worker of the sparsebench checkout in that folder (A/B of two commits)."""
    env = dict(os.environ)
    if root:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    threads = str(job["threads"])
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads)

    def failed(reason: str) -> dict[str, Any]:
        return skipped_row(job["model"], job["format"], job["backend"], job["batch"],
                           job["threads"], reason)

    try:
        proc = subprocess.run([sys.executable, "-m", module], input=json.dumps(job),
                              capture_output=True, text=True, timeout=timeout, env=env, cwd=root)
    except subprocess.TimeoutExpired:
        return failed(f"error: timed out after {timeout:.0f}s")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        err = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return failed(f"error: worker crashed ({err[:200]})")
    return json.loads(lines[-1])


def run_plan(jobs: list[dict[str, Any]], results: ResultsFile, timeout: float,
             on_row: Callable[[dict[str, Any]], None] = lambda row: None) -> None:
    if any(j["backend"] == "native" for j in jobs) and "roofline" not in results.doc:
        from sparsebench.measure.roofline import probe_for_native  # ceilings, native rows

        results.doc["roofline"] = probe_for_native(sorted({int(j["threads"]) for j in jobs}))
    for job in jobs:
        row = run_worker(job, timeout)
        row.pop("dense_layers", None) if not row.get("dense_layers") else None
        results.add(row)
        on_row(row)
