"""One execution in a fresh process: load, convert, prepare, check against the dense reference,
time, and measure memory. Reads a JSON job on stdin, prints one JSON row on stdout.

Memory, measured the same way for every backend: the baseline is the RSS after the imports
every worker makes (torch, sparsebench, the shape tracing of conversion), before the backend's
own libraries. Setup (loading,
conversion, the dense reference, the correctness check, the accuracy pass and per-layer timing)
runs first; then everything but the prepared execution and its input is freed and returned to
the OS (``malloc_trim``), the peak counter is reset (/proc/self/clear_refs) and the calls are
timed. ``peak_rss_bytes`` ("execution memory") is the peak RSS during the timed calls minus the
baseline: what the execution holds (its weights, buffers, libraries) plus what a call
allocates. ``setup_peak_rss_bytes`` is the peak over the whole process minus the same baseline.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path
from typing import Any

ACCURACY_BATCH = 500


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def current_rss() -> int:
    kb = _status_kb("VmRSS")
    if kb is None:
        import psutil

        return psutil.Process().memory_info().rss
    return kb * 1024


def peak_rss() -> int:
    kb = _status_kb("VmHWM")
    if kb is None:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return kb * 1024


def warm_up_tracing() -> None:
    """Run the shape tracing every conversion does (fake tensors) once on a tiny module, so
    the ~75 MiB its first use costs is part of the baseline, not of one backend's memory."""
    from torch import nn

    from sparsebench.formats.base import trace_outputs

    trace_outputs(nn.Sequential(nn.Conv2d(1, 1, 1), nn.Flatten(), nn.Linear(1, 1)), (1, 1, 1, 1),
                  [])


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``), so
    the RSS that follows is what is still in use."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def accuracy(backend: Any, converted: Any, job: dict[str, Any], threads: int,
             stats: tuple[list[float], list[float]] | None) -> float:
    """Test accuracy of this execution (normalised with the training statistics the
    checkpoint stored, else computed from the training split)."""
    import torch

    from sparsebench.data import load_dataset
    from sparsebench.model_io import first_leaf

    shape = converted.input_shape
    data = load_dataset(job["data"], data_dir=job.get("data_dir"),
                        pad_to_32=len(shape) == 3 and shape[-1] == 32 and job["data"] !=
                        "cifar10", limit_test=job.get("data_limit"), stats=stats)
    x, y = data.test_x, data.test_y
    if tuple(x.shape[1:]) != tuple(shape):
        x = x.reshape(len(x), *shape)
    prepared = backend.prepare(converted, threads=threads, batch=ACCURACY_BATCH)
    correct = 0
    for start in range(0, len(x), ACCURACY_BATCH):
        xb = x[start:start + ACCURACY_BATCH]
        n = len(xb)
        if n < ACCURACY_BATCH:
            xb = torch.cat([xb, xb.new_zeros((ACCURACY_BATCH - n, *xb.shape[1:]))])
        logits = first_leaf(prepared.run(xb))
        correct += int((logits[:n].argmax(1) == y[start:start + n]).sum())
    return 100.0 * correct / len(x)


def load_job_model(job: dict[str, Any]) -> Any:
    """The job's model file as a ``LoadedModel`` (with its ``--arch``, ``--input-shape``,
    ``--input`` and ``--trust``)."""
    from sparsebench.loading import load_model
    from sparsebench.model_io import InputSpec

    return load_model(job["path"], arch=job.get("arch"), trust=job.get("trust", False),
                      input_shape=tuple(job["input_shape"]) if job.get("input_shape") else None,
                      inputs=[InputSpec(s["name"], tuple(s["shape"]), s["dtype"], s.get("low"),
                                        s.get("high")) for s in job.get("inputs") or []])


def runs_original(loaded: Any, job: dict[str, Any]) -> bool:
    """Whether the job runs the ONNX file's own bytes (its dense onnxruntime row)."""
    return (loaded.onnx_bytes is not None and job["format"] == "dense"
            and job["backend"] == "onnxruntime")


def prepare_call(job: dict[str, Any]) -> Any:
    """A throughput stream's own copy of the job's execution (``measure/streams.py``): load,
    convert and prepare as ``run_job`` does, without the checks its row already has; returns
    the timed call on the stream's own input."""
    from sparsebench.backends import get_backend
    from sparsebench.formats import convert
    from sparsebench.model_io import make_inputs

    threads, batch = int(job["threads"]), int(job["batch"])
    backend = get_backend(job["backend"])
    loaded = load_job_model(job)
    xs = make_inputs(loaded.inputs, batch, int(job.get("seed", 0)))
    if runs_original(loaded, job):
        prepared = backend.prepare_original(loaded.onnx_bytes, loaded.inputs, threads=threads,
                                            batch=batch)
    else:
        converted = convert(loaded.module, job["format"],
                            index_dtype=job.get("index_dtype", "auto"))
        prepared = backend.prepare(converted, threads=threads, batch=batch)
        del converted
    del loaded
    prepared.release_setup()
    release_memory()
    return lambda: prepared.run(*xs)


def run_job(job: dict[str, Any], timer: Any = None) -> dict[str, Any]:
    """Execute one (model, format, backend, batch, threads) job; returns the result row.
    ``timer(call, policy)`` replaces the timing loop (the interleaved A/B worker uses it).
    With ``job["streams"]`` > 1 (and no ``timer``) the row also gets the throughput of that
    many concurrent streams (``measure/streams.py``), forked here before anything runs."""
    import torch

    torch.set_num_threads(int(job["threads"]))
    streams = None
    if int(job.get("streams") or 1) > 1 and timer is None:
        from sparsebench.measure.streams import Streams

        streams = Streams(job, int(job["streams"]), prepare_call)
    try:
        return _run_job(job, timer, streams)
    finally:
        if streams is not None:
            streams.close()


def _run_job(job: dict[str, Any], timer: Any, streams: Any) -> dict[str, Any]:
    threads, batch = int(job["threads"]), int(job["batch"])
    import torch

    from sparsebench.backends import get_backend
    from sparsebench.backends.base import Unsupported
    from sparsebench.errors import SparsebenchError
    from sparsebench.formats import convert, has_nonfinite
    from sparsebench.measure.results import skipped_row
    from sparsebench.measure.roofline import traffic
    from sparsebench.measure.timing import time_modules, time_steps
    from sparsebench.model_io import compare, make_inputs

    name, fmt, backend_name = job["model"], job["format"], job["backend"]

    def skipped(reason: str, **extra: Any) -> dict[str, Any]:
        return skipped_row(name, fmt, backend_name, batch, threads, reason, **extra)

    warm_up_tracing()
    baseline = current_rss()
    backend = get_backend(backend_name)
    reason = backend.unavailable()
    if reason:
        return skipped(reason)
    if not backend.supports(fmt):
        return skipped(f"{backend_name} does not execute the {fmt} format")
    loaded = load_job_model(job)
    original = runs_original(loaded, job)
    if loaded.module is None and not original:
        return skipped(f"no torch module: {loaded.onnx_error}")
    if fmt != "dense" and not loaded.swappable:
        return skipped(f"{loaded.kind} model: layers cannot be swapped (dense only)")
    warnings = [] if loaded.module is None else [
        f"non-finite weights in {layer}" for layer in has_nonfinite(loaded.module)]
    converted = None
    if loaded.module is not None:
        try:
            converted = convert(loaded.module, fmt, index_dtype=job.get("index_dtype", "auto"))
        except SparsebenchError as exc:
            if not original:
                return skipped(f"conversion failed: {exc}")
    if converted is not None and converted.no_layer_reason():  # never ok for a no-op
        return skipped(converted.no_layer_reason() or "", layers=converted.layer_counts)
    xs = make_inputs(loaded.inputs, batch, int(job.get("seed", 0)))
    reference = None
    if loaded.module is not None:
        with torch.inference_mode():
            reference = loaded.module(*xs)
    try:
        if original:  # ONNX as given: the user's own bytes (backends/onnxrt.py)
            prepared = backend.prepare_original(loaded.onnx_bytes, loaded.inputs,
                                                threads=threads, batch=batch)
        else:
            prepared = backend.prepare(converted, threads=threads, batch=batch)
    except Unsupported as exc:
        return skipped(str(exc), weight_bytes=converted.weight_bytes if converted else None,
                       layers=converted.layer_counts if converted else None)
    y = prepared.run(*xs)
    if reference is None:  # no torch import of the graph: onnxruntime is the only execution
        max_abs = max_rel = None
        warnings.append(f"no dense torch reference ({loaded.onnx_error})")
    else:
        try:
            max_abs, max_rel = compare(y, reference)
        except SparsebenchError as exc:
            return skipped(f"outputs do not match the dense reference: {exc}")
    if converted is None:
        row = skipped("")
        row.update(status="ok", impl=prepared.impl, weight_bytes=len(loaded.onnx_bytes),
                   max_abs_err=max_abs, max_rel_err=max_rel, warnings=warnings)
        row["traffic_bytes"], row["traffic_source"] = traffic(prepared, row["weight_bytes"], xs,
                                                              y)
        return _timed(row, prepared, xs, job, timer, baseline, warnings, streams)

    storage = converted.storage
    row = skipped("")
    row.update(
        status="ok", impl=prepared.impl, weight_bytes=converted.weight_bytes,
        max_abs_err=max_abs, max_rel_err=max_rel,
        dense_macs=sum(s.dense_macs for s in storage),
        sparse_macs=sum(s.sparse_macs for s in storage), warnings=warnings,
        dense_layers=[list(d) for d in converted.dense_layers], layers=converted.layer_counts)
    row["traffic_bytes"], row["traffic_source"] = traffic(prepared, row["weight_bytes"], xs, y)
    recorded = ((loaded.checkpoint or {}).get("dataset") or {})
    stats = (recorded["mean"], recorded["std"]) if recorded.get("name") == job.get("data") \
        and recorded.get("mean") else None
    del loaded, reference, y
    if job.get("per_layer"):
        module = getattr(prepared, "module", None)
        if module is None and hasattr(prepared, "steps"):  # native plans: time their steps
            row["per_layer_ms"] = time_steps(*prepared.steps(*xs))
        elif module is None:
            row["warnings"].append("per-layer timing needs a module-based execution")
        else:
            try:
                row["per_layer_ms"] = time_modules(module, lambda: prepared.run(*xs))
            except RuntimeError as exc:  # e.g. TorchScript modules take no Python hooks
                row["warnings"].append(f"per-layer timing unavailable: {str(exc)[:120]}")
    if job.get("data"):
        try:
            row["accuracy"] = accuracy(backend, converted, job, threads, stats)
        except Unsupported as exc:
            row["warnings"].append(f"accuracy not measured: {exc}")
    del converted, storage
    return _timed(row, prepared, xs, job, timer, baseline, warnings, streams)


def _timed(row: dict[str, Any], prepared: Any, xs: tuple[Any, ...], job: dict[str, Any],
           timer: Any, baseline: int, warnings: list[str], streams: Any) -> dict[str, Any]:
    """Free the setup, time the calls and measure memory (then the streams' throughput, when
    there are streams): the row completed."""
    from sparsebench.measure.roofline import achieved
    from sparsebench.measure.timing import TimingPolicy, latency_stats_ms, noise_flag, time_calls

    batch = int(job["batch"])
    policy = TimingPolicy(**job.get("timing", {}))
    prepared.release_setup()
    release_memory()  # setup is over: only the prepared execution and its input remain
    setup_peak = peak_rss() - baseline
    if streams is not None and streams.ready():  # every stream idle before the clock starts
        warnings.append(f"streams not measured: {streams.failed}")
    peak_reset = reset_peak()
    call, injected = (lambda: prepared.run(*xs)), None
    if job.get("inject_slowdown"):  # a testing aid for the regression gate (measure/inject.py)
        from sparsebench.measure.inject import slowed

        call, injected = slowed(call, float(job["inject_slowdown"]))
    samples = (timer or time_calls)(call, policy)
    exec_peak = peak_rss() - baseline
    row.update(
        latency_ms=latency_stats_ms(samples), samples=len(samples), samples_ns=samples,
        noise=noise_flag(samples), peak_rss_bytes=exec_peak if peak_reset else None,
        setup_peak_rss_bytes=setup_peak, streams=int(job.get("streams") or 1))
    row.update(achieved(row.get("traffic_bytes"), batch, row.get("sparse_macs"),
                        row["latency_ms"]["p50"]))
    if streams is not None:
        fields, failed = streams.measure(batch, policy)
        row.update(fields)
        if failed and not any(w.startswith("streams not measured") for w in warnings):
            warnings.append(f"streams not measured: {failed}")
    row["reason"] = None if not warnings else "; ".join(warnings)
    if injected:
        row["injected_slowdown"] = injected
    return row


def safe_run_job(job: dict[str, Any]) -> dict[str, Any]:
    """``run_job``, any exception turned into a skipped row (``error: Type: message``)."""
    try:
        row = run_job(job)
    except Exception as exc:  # noqa: BLE001 - reported as a skipped row by the parent
        from sparsebench.measure.results import skipped_row

        text = str(exc).splitlines()[0] if str(exc) else ""
        row = skipped_row(job["model"], job["format"], job["backend"], int(job["batch"]),
                          int(job["threads"]), f"error: {type(exc).__name__}: {text}"[:300])
    row["worker_pid"] = os.getpid()
    return row


def main() -> int:
    row = safe_run_job(json.loads(sys.stdin.read()))
    sys.stdout.write("\n" + json.dumps(row) + "\n")
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown (thread pools) for a quick exit


if __name__ == "__main__":
    raise SystemExit(main())
