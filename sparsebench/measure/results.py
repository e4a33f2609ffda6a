"""The results file: a versioned JSON schema, rewritten atomically after every row so an
interrupted run keeps every row already measured.

Nothing is lost: the path is claimed before the work starts (``claim_results``): an existing
file that is not a sparsebench results file is never replaced; an existing results file is
merged into (``append``: its rows are kept, rows of the same execution are replaced) or
replaced (``force``), else refused; a lock (``fcntl.flock`` on a hidden ``.NAME.lock`` next to
it) refuses a second concurrent writer; the file is first written when a row is complete, so a
run interrupted before its first row leaves the previous file untouched.

Top level: ``schema`` ("sparsebench-results"), ``schema_version``, ``created``, ``machine``,
``versions``, ``git_commit``, ``config`` (the measure options), ``models`` (per model: path,
arch, params, nonzero, sparsity, per-format storage) and ``rows`` (one per execution).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsebench.errors import SparsebenchError
from sparsebench.outputs import atomic_write_text, check_output_file
from sparsebench.provenance import cpu_info, git_commit, library_versions

SCHEMA = "sparsebench-results"
SCHEMA_VERSION = 1
ROW_KEYS = ("model", "format", "backend", "impl", "batch", "threads", "status", "reason",
            "latency_ms", "samples", "samples_ns", "peak_rss_bytes", "setup_peak_rss_bytes",
            "weight_bytes", "max_abs_err", "max_rel_err", "accuracy", "dense_macs",
            "sparse_macs", "per_layer_ms", "warnings", "achieved_gbps", "achieved_gflops", "noise",
            "estimated_bytes", "layers", "traffic_bytes", "traffic_source", "roofline_bw_frac",
            "roofline_flop_frac", "streams", "stream_calls", "stream_wall_s",
            "throughput_items_s", "stream_p50_ms")


def row_key(row: dict[str, Any]) -> tuple:
    """What identifies an execution across result files."""
    return (row["model"], row["format"], row["backend"], row["batch"], row["threads"])


def skipped_row(model: str, fmt: str, backend: str, batch: int, threads: int, reason: str,
                **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {k: None for k in ROW_KEYS}
    row.update(model=model, format=fmt, backend=backend, batch=batch, threads=threads,
               status="skipped", reason=reason, samples=0, samples_ns=[], warnings=[])
    row.update(extra)
    return row


def _clean(value: Any) -> Any:
    """JSON has no NaN/Inf: store them as strings so the file stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


@dataclass
class Claim:
    """A results path checked and locked for this run; ``previous``: the rows to append to."""

    path: Path
    lock_fd: int
    previous: dict[str, Any] | None = None

    def release(self) -> None:
        """Drop the lock (the hidden lock file stays: removing it would race a new writer)."""
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1


def _lock(path: Path) -> int:
    import fcntl

    lock = path.parent / f".{path.name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise SparsebenchError(f"another sparsebench run is writing {path} (lock {lock} is "
                               "held): wait for it to finish or choose another --json") from None
    return fd


def claim_results(path: str | Path | None, append: bool = False, force: bool = False
                  ) -> Claim | None:
    """Check and lock a ``--json`` results path before any work (see the module docstring)."""
    if path is None:
        return None
    p = Path(path)
    if append and force:
        raise SparsebenchError("--append and --force contradict each other: choose one")
    check_output_file(p, force=True, what="--json")
    fd = _lock(p)
    try:
        previous = None
        if p.exists():
            try:
                previous = load_results(p)
            except SparsebenchError as exc:
                if not force or append:
                    raise SparsebenchError(f"--json {p} exists and is not a results file this "
                                           f"sparsebench can extend ({exc}); refusing to "
                                           "overwrite it: choose another path, or --force to "
                                           "replace it") from None
            if previous is not None and not (append or force):
                raise SparsebenchError(f"--json {p} already holds {len(previous['rows'])} result "
                                       "rows: pass --append to add to them or --force to "
                                       "replace them")
            if previous is not None and append and previous.get("ab"):
                raise SparsebenchError(f"--append: {p} is an A/B results file; A/B runs are "
                                       "not merged")
            if force:
                previous = None
    except BaseException:
        os.close(fd)
        raise
    return Claim(p, fd, previous)


class ResultsFile:
    """Collects rows and keeps the claimed path (when given) up to date after every row.
    ``path`` may also be given directly (no checks, no lock: tests and library use)."""

    def __init__(self, path: str | Path | Claim | None, config: dict[str, Any]) -> None:
        claim = path if isinstance(path, Claim) else None
        self.path = claim.path if claim else (Path(path) if path else None)
        self.claim = claim
        self.doc: dict[str, Any] = {
            "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": cpu_info(), "versions": library_versions(), "git_commit": git_commit(),
            "config": config, "models": {}, "rows": [],
        }
        self.previous_rows: list[dict[str, Any]] = []
        if claim and claim.previous:
            prev = claim.previous
            if (prev.get("machine") or {}).get("cpu") != self.doc["machine"].get("cpu"):
                raise SparsebenchError(f"--append: {claim.path} was measured on another machine "
                                       f"({(prev.get('machine') or {}).get('cpu')!r}); its "
                                       "timings are not comparable with this one's")
            self.previous_rows = list(prev["rows"])
            self.doc["models"] = dict(prev.get("models") or {})
            self.doc["previous_runs"] = list(prev.get("previous_runs") or []) + [
                {k: prev.get(k) for k in ("created", "git_commit", "versions", "config")}]
            for key in ("roofline",):
                if key in prev:
                    self.doc[key] = prev[key]

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.doc["rows"]

    def set_model(self, name: str, info: dict[str, Any]) -> None:
        self.doc["models"][name] = info
        self.flush()

    def add(self, row: dict[str, Any]) -> None:
        self.doc["rows"].append(row)
        self.flush()

    def flush(self) -> None:
        """Rewrite the file, once it holds a row (a run interrupted before its first row
        leaves any previous file as it was). Appended rows keep their place; a row of the same
        execution measured now replaces the old one."""
        if self.path is None or not (self.rows or self.previous_rows):
            return
        doc = self.doc
        if self.previous_rows:
            new = {row_key(r) + (r.get("subject"),) for r in self.rows}
            kept = [r for r in self.previous_rows if row_key(r) + (r.get("subject"),) not in new]
            doc = {**self.doc, "rows": kept + self.rows}
        atomic_write_text(self.path, json.dumps(_clean(doc), indent=1))


def load_results(path: str | Path) -> dict[str, Any]:
    """Read and validate a results file (one-line errors for anything else)."""
    p = Path(path)
    if not p.exists():
        raise SparsebenchError(f"results file not found: {p}")
    if p.is_dir():
        raise SparsebenchError(f"results path is a directory: {p}")
    text = p.read_text(errors="replace")
    if not text.strip():
        raise SparsebenchError(f"results file is empty: {p}")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SparsebenchError(f"{p} is not valid JSON (line {exc.lineno}): {exc.msg}")
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise SparsebenchError(f"{p} is not a sparsebench results file (no 'schema: {SCHEMA}')")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise SparsebenchError(f"{p} has results schema version {doc.get('schema_version')!r}; "
                               f"this sparsebench reads version {SCHEMA_VERSION}")
    if not isinstance(doc.get("rows"), list):
        raise SparsebenchError(f"{p} has no rows list")
    return doc
