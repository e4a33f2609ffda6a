"""Interleaved A/B measurement: two subjects measured side by side, so that drift of the machine
(other jobs, frequency, thermal state) hits both alike and cancels in their ratio.

* Model vs model (``measure NEW.pt --ab BASE.pt``): one worker process per execution prepares
  both subjects and alternates their calls in ABBA order (``time_interleaved``).
* Code vs code (``measure MODEL --ab BASE_CHECKOUT``, a folder holding the base commit's
  ``sparsebench/``): worker processes of the two checkouts alternate, base-new, new-base, ...,
  for ``--ab-rounds`` rounds; each process contributes one block of samples.

Rows are tagged ``subject`` ("base" or "new") and ``ab`` ("interleaved-calls" or
``"alternating-processes"``); the latter also store ``block_sizes`` (samples per process). Per
subject memory is not measurable when both share a process: ``peak_rss_bytes`` is null there.
``sparsebench compare FILE.json`` splits such a file by subject.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

from sparsebench.errors import SparsebenchError
from sparsebench.measure.results import ResultsFile, skipped_row
from sparsebench.measure.timing import TimingPolicy, time_interleaved

CALLS, PROCESSES = "interleaved-calls", "alternating-processes"
MODULE = "sparsebench.measure.ab"


def is_checkout(path: str | Path) -> bool:
    """A folder holding a sparsebench source tree (``sparsebench/__init__.py``)."""
    return (Path(path) / "sparsebench" / "__init__.py").is_file()


def _tag(row: dict[str, Any], subject: str, mode: str) -> dict[str, Any]:
    row.pop("dense_layers", None) if not row.get("dense_layers") else None
    row.update(subject=subject, ab=mode)
    return row


def run_pair(job: dict[str, Any]) -> list[dict[str, Any]]:
    """In the worker: set up both subjects with the ordinary worker, then time them interleaved."""
    from sparsebench.measure.timing import latency_stats_ms, noise_flag
    from sparsebench.measure.worker import run_job

    calls: dict[str, tuple[Callable[[], object], TimingPolicy]] = {}

    def capture(subject: str) -> Callable[..., list[int]]:
        def timer(call: Callable[[], object], policy: TimingPolicy) -> list[int]:
            calls[subject] = (call, policy)
            return [0]
        return timer

    common = {**job, "data": None, "per_layer": False}
    rows = {"base": run_job({**common, "path": job["ab_path"], "model": job["ab_model"],
                             "inject_slowdown": None}, capture("base")),
            "new": run_job(common, capture("new"))}
    if len(calls) == 2:
        a, b = time_interleaved(calls["base"][0], calls["new"][0], calls["new"][1])
        for subject, samples in (("base", a), ("new", b)):
            rows[subject].update(latency_ms=latency_stats_ms(samples), samples=len(samples),
                                 samples_ns=samples, noise=noise_flag(samples),
                                 peak_rss_bytes=None,
                                 setup_peak_rss_bytes=None)
    else:
        for subject, other in (("base", "new"), ("new", "base")):
            if rows[subject]["status"] == "ok":
                r = rows[subject]
                rows[subject] = skipped_row(r["model"], r["format"], r["backend"], r["batch"],
                                            r["threads"], f"A/B partner skipped: "
                                            f"{rows[other]['reason']}")
    return [_tag(rows["base"], "base", CALLS), _tag(rows["new"], "new", CALLS)]


def _merge(rows: list[dict[str, Any]], subject: str, name: str) -> dict[str, Any]:
    """One row of a subject from its per-process rounds; each round is one block of samples."""
    from sparsebench.measure.timing import latency_stats_ms, noise_flag

    for i, r in enumerate(rows):
        if r.get("status") != "ok":
            return _tag({**r, "model": name, "reason": f"round {i + 1}: {r.get('reason')}"},
                        subject, PROCESSES)
    samples = [s for r in rows for s in r["samples_ns"]]

    def median_of(key: str) -> int | None:
        values = [r.get(key) for r in rows]
        return None if None in values else round(statistics.median(values))

    noisy = [f"round {i + 1}: {r['noise']}" for i, r in enumerate(rows) if r.get("noise")]
    row = {**rows[0], "model": name, "latency_ms": latency_stats_ms(samples),
           "samples": len(samples), "samples_ns": samples, "noise": "; ".join(noisy) or None,
           "block_sizes": [len(r["samples_ns"]) for r in rows],
           "peak_rss_bytes": median_of("peak_rss_bytes"),
           "setup_peak_rss_bytes": median_of("setup_peak_rss_bytes")}
    return _tag(row, subject, PROCESSES)


class ABRunner:
    """Runs a measure plan as A/B pairs against ``other`` (a model file or a base checkout)."""

    def __init__(self, other: str, rounds: int, paths: list[str]) -> None:
        if len(paths) != 1:
            raise SparsebenchError(f"--ab compares one model against another; got {len(paths)} "
                                   "models")
        if not Path(other).exists():
            raise SparsebenchError(f"--ab: {other} not found (a model file, or a folder holding "
                                   "a sparsebench checkout)")
        if Path(other).is_dir() and not is_checkout(other):
            raise SparsebenchError(f"--ab: {other} is a folder without sparsebench/__init__.py; "
                                   "give a model file or a sparsebench checkout")
        if rounds < 2:
            raise SparsebenchError(f"--ab-rounds must be at least 2, got {rounds}")
        self.other, self.rounds = str(Path(other).resolve()), rounds
        self.mode = PROCESSES if Path(other).is_dir() else CALLS
        self.base_name = ""

    def record(self, results: ResultsFile, name: str, load: Callable[[str], Any],
               info: Callable[[Any], dict[str, Any]], input_shape: tuple[int, ...]) -> None:
        """Describe the pair in the results file (``ab``) and add the base model's info."""
        self.base_name = f"{name}@base"
        if self.mode == CALLS:
            base = load(self.other)
            if tuple(base.input_shape) != tuple(input_shape):
                raise SparsebenchError(f"--ab: {self.other} takes input {list(base.input_shape)}"
                                       f", the measured model {list(input_shape)}")
            results.set_model(self.base_name, info(base))
        else:
            results.set_model(self.base_name, dict(results.doc["models"][name]))
        results.doc["ab"] = {"mode": self.mode, "base": self.other, "new": name,
                             "base_name": self.base_name,
                             "rounds": self.rounds if self.mode == PROCESSES else None}
        results.flush()

    def __call__(self, jobs: list[dict[str, Any]], results: ResultsFile, timeout: float,
                 on_row: Callable[[dict[str, Any]], None] = lambda row: None) -> None:
        from sparsebench.measure.harness import run_worker

        for job in jobs:
            job = {**job, "path": str(Path(job["path"]).resolve()), "data": None,
                   "per_layer": False,
                   "data_dir": job.get("data_dir") and str(Path(job["data_dir"]).resolve())}
            if self.mode == CALLS:
                out = run_worker({**job, "ab_path": self.other, "ab_model": self.base_name},
                                 timeout, module=MODULE)
                rows = out.get("ab_rows") or [
                    _tag({**out, "model": self.base_name}, "base", CALLS), _tag(out, "new", CALLS)]
            else:
                done: dict[str, list[dict[str, Any]]] = {"base": [], "new": []}
                base_job = {**job, "inject_slowdown": None}
                for r in range(self.rounds):
                    order = ("base", "new") if r % 2 == 0 else ("new", "base")
                    for subject in order:
                        done[subject].append(run_worker(base_job, timeout, root=self.other)
                                             if subject == "base" else run_worker(job, timeout))
                rows = [_merge(done["base"], "base", self.base_name),
                        _merge(done["new"], "new", job["model"])]
            for row in rows:
                results.add(row)
                on_row(row)


def main() -> int:
    job = json.loads(sys.stdin.read())
    try:
        rows = run_pair(job)
    except Exception as exc:  # noqa: BLE001 - reported as skipped rows by the parent
        text = str(exc).splitlines()[0] if str(exc) else ""
        reason = f"error: {type(exc).__name__}: {text}"[:300]
        rows = [_tag(skipped_row(model, job["format"], job["backend"], int(job["batch"]),
                                 int(job["threads"]), reason), subject, CALLS)
                for model, subject in ((job["ab_model"], "base"), (job["model"], "new"))]
    sys.stdout.write("\n" + json.dumps({"ab_rows": rows}) + "\n")
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown (thread pools) for a quick exit


if __name__ == "__main__":
    raise SystemExit(main())
