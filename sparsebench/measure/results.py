"""The results file: a versioned JSON schema, rewritten atomically after every row so an
interrupted run keeps every row already measured.

Top level: ``schema`` ("sparsebench-results"), ``schema_version``, ``created``, ``machine``,
``versions``, ``git_commit``, ``config`` (the measure options), ``models`` (per model: path,
arch, params, nonzero, sparsity, per-format storage) and ``rows`` (one per execution).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path
from typing import Any

from sparsebench.io import atomic_write_bytes
from sparsebench.errors import SparsebenchError
from sparsebench.provenance import cpu_info, git_commit, library_versions

SCHEMA = "sparsebench-results"
SCHEMA_VERSION = 1
ROW_KEYS = ("model", "format", "backend", "impl", "batch", "threads", "status", "reason",
            "latency_ms", "samples", "samples_ns", "peak_rss_bytes", "setup_peak_rss_bytes",
            "weight_bytes", "max_abs_err", "max_rel_err", "accuracy", "dense_macs",
            "sparse_macs", "per_layer_ms", "warnings", "achieved_gbps", "achieved_gflops")


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


class ResultsFile:
    """Collects rows and keeps ``path`` (when given) up to date after every row."""

    def __init__(self, path: str | Path | None, config: dict[str, Any]) -> None:
        self.path = Path(path) if path else None
        self.doc: dict[str, Any] = {
            "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": cpu_info(), "versions": library_versions(), "git_commit": git_commit(),
            "config": config, "models": {}, "rows": [],
        }

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
        if self.path is not None:
            text = json.dumps(_clean(self.doc), indent=1)
            atomic_write_bytes(self.path, lambda fh: fh.write(text.encode()))


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
