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


MEMORY_FRACTION = 0.5  # default --max-memory: this fraction of the memory available now
MAX_STREAMS = 64       # --streams: each stream is a process with its own copy of the model
ACCURACY_BATCH = 500   # the worker's accuracy pass (worker.ACCURACY_BATCH)


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
    p.add_argument("--max-memory", metavar="SIZE", help="skip an execution whose estimated "
                   "worker memory (weights + activations) exceeds SIZE, e.g. 4G, 512M (default: "
                   f"{MEMORY_FRACTION * 100:.0f}%% of the memory available; 'none': no limit)")


def timing_from_args(args: Any) -> dict[str, Any]:
    """``MeasureConfig.timing`` from the flags of ``add_timing_flags``."""
    return {"min_calls": args.min_calls, "min_seconds": args.min_time,
            "warmup_calls": args.warmup}


def parse_size(text: str | None) -> int | None:
    """``--max-memory``: ``4G``, ``512MiB``, ``1.5e9`` (bytes) -> bytes; None/'none' -> no
    limit; absent -> ``MEMORY_FRACTION`` of the available memory."""
    import re

    if text is None:
        import psutil

        return int(MEMORY_FRACTION * psutil.virtual_memory().available)
    if text.strip().lower() == "none":
        return None
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", text)
    try:
        value = float(m.group(1)) if m else -1.0
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise SparsebenchError(f"--max-memory: expected a size like 4G, 512M or a byte count, "
                               f"or 'none'; got {text!r}")
    unit = m.group(2).lower()
    return int(value * 1024 ** ("kmgt".index(unit) + 1)) if unit else int(value)


def footprint(module: Any, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(weight bytes, activation bytes per sample) of a torch module: parameters and buffers;
    the input plus twice the largest layer working set (a leaf module's output, plus a
    convolution's unfolded input, im2col), in float32, from shapes only (``trace_outputs``:
    nothing is allocated)."""
    import math

    import torch
    from torch import nn

    from sparsebench.formats.base import trace_outputs

    from sparsebench.model_io import specs_of

    weights = sum(t.numel() * t.element_size() for t in
                  [*module.parameters(), *module.buffers()])
    per_sample = sum(math.prod(s.shape) for s in specs_of(module, input_shape))
    if isinstance(module, torch.jit.ScriptModule):  # takes no hooks: weights and input only
        return weights, 4 * per_sample
    leaves = [(n, m) for n, m in module.named_modules() if n and not list(m.children())]
    largest = 0
    for _, mod, out in trace_outputs(module, (1, *input_shape), leaves):
        work = math.prod(out)
        if isinstance(mod, nn.Conv2d) and len(out) == 4:
            kh, kw = mod.kernel_size
            work += mod.in_channels // mod.groups * kh * kw * out[2] * out[3]
        largest = max(largest, work)
    return weights, 4 * (per_sample + 2 * largest)


def estimate_bytes(weights: int, per_sample: int, batch: int, accuracy: bool,
                   streams: int = 1) -> int:
    """A worker's expected peak: the loaded model, its converted copy and the backend's copy of
    the weights, and the activations of one timed batch (and of the accuracy pass); with
    ``streams`` > 1, plus as many stream processes, each with its own three copies and batch."""
    worker = 3 * weights + per_sample * (batch + (ACCURACY_BATCH if accuracy else 0))
    return worker + (streams * (3 * weights + per_sample * batch) if streams > 1 else 0)


def fmt_bytes(n: int) -> str:
    return f"{n / 1024 ** 3:.2f} GiB" if n >= 1024 ** 3 else f"{n / 1024 ** 2:.1f} MiB"


@dataclass
class MeasureConfig:
    """The options of one ``sparsebench measure`` run (stored in the results file)."""

    models: list[str]
    formats: list[str] = field(default_factory=lambda: list(DEFAULT_FORMATS))
    backends: list[str] = field(default_factory=list)
    batches: list[int] = field(default_factory=lambda: [1])
    threads: list[int] = field(default_factory=lambda: [1])
    streams: int = 1  # > 1: also the throughput of that many concurrent streams (streams.py)
    timing: dict[str, Any] = field(default_factory=dict)
    data: str | None = None
    data_dir: str | None = None
    data_limit: int | None = None
    per_layer: bool = False
    arch: str | None = None
    input_shape: list[int] | None = None
    inputs: list[dict[str, Any]] = field(default_factory=list)  # --input: InputSpec fields
    trust: bool = False
    index_dtype: str = "auto"
    seed: int = 0
    timeout: float = 900.0
    max_memory: int | None = None  # bytes; None: no limit
    inject_slowdown: float | None = None  # testing aid: see measure/inject.py

    def validate(self) -> None:
        from sparsebench.catalog import BACKENDS, FORMATS

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
        if not 1 <= self.streams <= MAX_STREAMS:
            raise SparsebenchError(f"--streams must be between 1 and {MAX_STREAMS}, got "
                                   f"{self.streams}")
        t = self.timing
        for key, flag, low in (("min_calls", "--min-calls", 1), ("warmup_calls", "--warmup", 0),
                               ("min_seconds", "--min-time", 0)):
            if key in t and not low <= t[key] < float("inf"):
                raise SparsebenchError(f"{flag} must be a number of at least {low}, got {t[key]}")
        if not 0 < self.timeout < float("inf"):
            raise SparsebenchError(f"--timeout must be a positive number of seconds, got "
                                   f"{self.timeout}")
        if self.inject_slowdown is not None and not 0 <= self.inject_slowdown <= 10:
            raise SparsebenchError(f"--inject-slowdown must be in [0, 10], got "
                                   f"{self.inject_slowdown}")
        if self.data is not None:
            from sparsebench.catalog import DATASETS

            DATASETS.check(self.data)


def model_info(loaded: Any, formats: list[str], index_dtype: str) -> dict[str, Any]:
    """Parameters, sparsity and exact storage per format of one loaded model (no timing)."""
    from sparsebench.formats import convert, has_nonfinite

    info: dict[str, Any] = {"path": loaded.path, "kind": loaded.kind, "arch": loaded.arch,
                            "input_shape": list(loaded.input_shape), "notes": list(loaded.notes),
                            "inputs": [s.describe() for s in loaded.inputs], "formats": {}}
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
            "layer_counts": converted.layer_counts,
        }
    return info


def plan(cfg: MeasureConfig, names: dict[str, str],
         footprints: dict[str, tuple[int, int]] | None = None) -> list[dict[str, Any]]:
    """One job per (model, format, backend, batch, threads) the backend can execute;
    ``footprints`` (path -> ``footprint``) gives each job its ``estimated_bytes``."""
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
                            "inputs": cfg.inputs,
                            "trust": cfg.trust, "index_dtype": cfg.index_dtype,
                            "seed": cfg.seed, "inject_slowdown": cfg.inject_slowdown,
                            "max_memory": cfg.max_memory, "streams": cfg.streams})
                        if footprints and path in footprints:
                            jobs[-1]["estimated_bytes"] = estimate_bytes(
                                *footprints[path], batch, bool(cfg.data), cfg.streams)
    return jobs


def run_worker(job: dict[str, Any], timeout: float, module: str = "sparsebench.measure.worker",
               root: str | None = None, server: Any = None) -> dict[str, Any]:
    """Run one job in a fresh process: a child forked by ``server`` (a ``ForkServer``), or a
    new interpreter; a crash or timeout becomes a skipped row. ``root``: run the worker of the
    sparsebench checkout in that folder (A/B of two commits; always a new interpreter)."""
    def failed(reason: str, **extra: Any) -> dict[str, Any]:
        return skipped_row(job["model"], job["format"], job["backend"], job["batch"],
                           job["threads"], reason, **extra)

    est, limit = job.get("estimated_bytes"), job.get("max_memory")
    if est is not None and limit is not None and est > limit:
        return failed(f"too large: estimated worker memory {fmt_bytes(est)} exceeds the limit "
                      f"{fmt_bytes(limit)} (--max-memory)", estimated_bytes=est)
    try:
        if server is not None and root is None and module == "sparsebench.measure.worker":
            code, row, err = server.run(job, timeout)
        else:
            code, row, err = _spawn(job, timeout, module, root)
    except subprocess.TimeoutExpired:
        return failed(f"error: timed out after {timeout:.0f}s")
    except ChildProcessError as exc:
        code, row, err = -1, None, str(exc)
    if code != 0 or row is None:
        return failed(f"error: worker crashed ({(err or f'exit code {code}')[:200]})")
    if est is not None:
        row["estimated_bytes"] = est
    return row


def _spawn(job: dict[str, Any], timeout: float, module: str,
           root: str | None) -> tuple[int, dict[str, Any] | None, str]:
    """(exit code, row or None, last stderr line) of ``job`` in a new interpreter."""
    env = dict(os.environ)
    if root:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    threads = str(job["threads"])
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads)
    proc = subprocess.run([sys.executable, "-m", module], input=json.dumps(job),
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=root)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    err = (proc.stderr.strip().splitlines() or [""])[-1]
    return proc.returncode, json.loads(lines[-1]) if lines else None, err


# What one execution costs besides its timed calls, measured on this project's 2-core machine
# under load with the zoo's LeNet-5 (README quickstart): a new interpreter's start, imports
# and first shape trace; then loading, conversion, preparation and the check against dense;
# and the accuracy pass over a 10,000-image test set. Larger models take longer.
SPAWN_SECONDS = 2.7
SETUP_SECONDS = 1.0
ACCURACY_SECONDS = 1.5


def estimate_seconds(jobs: list[dict[str, Any]], forked: bool = True) -> float:
    """A rough duration of ``jobs``: per execution, a fixed cost (start-up unless ``forked``,
    setup, the accuracy pass when asked) plus its warm-up and ``--min-time``; calls slower
    than ``--min-time`` / ``--min-calls`` make it longer."""
    from sparsebench.measure.timing import TimingPolicy

    total = 0.0
    for job in jobs:
        if job.get("max_memory") is not None and job.get("estimated_bytes", 0) > job["max_memory"]:
            continue  # skipped before a worker starts
        policy = TimingPolicy(**job.get("timing", {}))
        total += (0 if forked else SPAWN_SECONDS) + SETUP_SECONDS + policy.warmup_seconds \
            + policy.min_seconds + (ACCURACY_SECONDS if job.get("data") else 0)
        if int(job.get("streams") or 1) > 1:  # the streams' own warm-up and window
            total += policy.warmup_seconds + policy.min_seconds
    return total


def plan_line(jobs: list[dict[str, Any]], forked: bool = True) -> str:
    """The plan printed before a run: how many executions, how they multiply, the estimate."""
    from sparsebench.ui import fmt_duration

    def count(n: int, word: str) -> str:
        return f"{n} {word}" + ("s" if n != 1 else "")

    models = len({j["model"] for j in jobs})
    pairs = len({(j["format"], j["backend"]) for j in jobs})
    batches = len({j["batch"] for j in jobs})
    threads = len({j["threads"] for j in jobs})
    text = (f"plan: {count(len(jobs), 'execution')} = {count(models, 'model')} x "
            f"{count(pairs, 'format/backend pair')} x {count(batches, 'batch size')} x "
            f"{count(threads, 'thread count')}")
    streams = max((int(j.get("streams") or 1) for j in jobs), default=1)
    if streams > 1:
        text += f", each also as {streams} concurrent streams (throughput)"
    if jobs:
        text += (f"; estimated {fmt_duration(estimate_seconds(jobs, forked))} (an estimate: a "
                 "fixed cost per execution plus --min-time; slow calls, big models and a busy "
                 "machine take longer)")
    return text


def run_plan(jobs: list[dict[str, Any]], results: ResultsFile, timeout: float,
             on_row: Callable[[dict[str, Any]], None] = lambda row: None,
             fork: bool = True) -> None:
    """Run every job, one at a time, each in a fresh process: forked from one preloaded
    server (``fork``, the default: no interpreter start per execution) or a new interpreter."""
    from sparsebench.measure import roofline

    threads = sorted({int(j["threads"]) for j in jobs})
    roof = results.doc.get("roofline") or {}  # the ceilings every row is set against
    if jobs and any(str(t) not in (roof.get("gemm_gflops") or {}) for t in threads):
        new = roofline.probe(threads)  # (kept from an appended file when it has them all)
        results.doc["roofline"] = {**new, "gemm_gflops": {**(roof.get("gemm_gflops") or {}),
                                                          **new["gemm_gflops"]}}
    from sparsebench.measure.forkserver import ForkServer

    with ForkServer() as server:
        for job in jobs:
            row = run_worker(job, timeout, server=server if fork else None)
            row.pop("dense_layers", None) if not row.get("dense_layers") else None
            results.add(roofline.annotate(row, results.doc.get("roofline")))
            on_row(row)
