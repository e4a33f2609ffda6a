"""The HTML report (``--html OUT`` on measure, sweep, compare and profile; ``sparsebench report
FILE.json ...``): one self-contained page rendered by ``sparsebench.report.html`` from the JSON
those commands write. This module reads and checks the inputs, checks the output path before
any work starts and writes the page atomically.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable

from sparsebench.errors import SparsebenchError

KINDS = "a results file (measure/sweep --json), a comparison (compare --json) or a profile " \
        "(profile --json)"


def add_html_flag(p: argparse.ArgumentParser) -> None:
    """``--html OUT`` (and ``--force``, unless the command already has it)."""
    p.add_argument("--html", metavar="OUT.html", help="write a self-contained HTML report "
                   "(tables, latency distributions, charts, machine; no network needed to "
                   "view it)")
    if "--force" not in p._option_string_actions:  # noqa: SLF001  (argparse has no public API)
        p.add_argument("--force", action="store_true", help="overwrite an existing --html file")


def check_output(path: str | Path, force: bool, flag: str = "--html") -> Path:
    """The HTML path, checked before the work starts (``outputs.check_output_file``)."""
    from sparsebench.outputs import check_output_file

    checked = check_output_file(path, force, flag)
    assert checked is not None
    return checked


def write_page(path: Path, text: str) -> None:
    from sparsebench.outputs import atomic_write_text

    atomic_write_text(path, text)


def html_output(args: argparse.Namespace) -> Callable[..., None] | None:
    """For a command with ``--html``: check the path now and return ``write(doc, console)``
    (renders ``doc`` and prints "wrote OUT"), or None without ``--html``."""
    if not getattr(args, "html", None):
        return None
    path = check_output(args.html, bool(getattr(args, "force", False)))

    def write(doc: dict[str, Any], console: Any = None, source: str = "") -> None:
        from sparsebench.report.html import render

        write_page(path, render([(source or _source(doc), doc)]))
        if console is not None:
            console.print(f"wrote {path}")
    return write


def _source(doc: dict[str, Any]) -> str:
    cfg = doc.get("config") or {}
    if isinstance(doc.get("sweep"), dict):
        return f"sweep {doc['sweep'].get('name')}"
    if doc.get("schema") == "sparsebench-profile":
        return f"profile {(doc.get('model') or {}).get('name')}"
    if doc.get("schema") == "sparsebench-results":
        return "measure " + " ".join(map(str, cfg.get("models") or []))
    if doc.get("inputs"):
        return "compare " + " ".join(map(str, doc["inputs"]))
    return f"compare {doc.get('base')} -> {doc.get('new')}"


# ---------------------------------------------------------------------------------- inputs


def _require(cond: bool, path: Path, what: str) -> None:
    if not cond:
        raise SparsebenchError(f"{path} is not a valid sparsebench {what} file ({KINDS})")


def load_input(path: str | Path) -> dict[str, Any]:
    """Read and check one JSON the report can show; one-line errors for anything else."""
    p = Path(path)
    if not p.exists():
        raise SparsebenchError(f"report input not found: {p}")
    if p.is_dir():
        raise SparsebenchError(f"report input is a directory, not a file: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SparsebenchError(f"cannot read {p}: {exc}") from None
    if not text.strip():
        raise SparsebenchError(f"report input is empty: {p}")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SparsebenchError(f"{p} is not valid JSON (line {exc.lineno}): {exc.msg}") from None
    if not isinstance(doc, dict):
        raise SparsebenchError(f"{p} is not {KINDS}")
    schema = doc.get("schema")
    if schema == "sparsebench-results":
        if doc.get("schema_version") != 1:
            raise SparsebenchError(f"{p} has results schema version "
                                   f"{doc.get('schema_version')!r}; this sparsebench reads 1")
        rows = doc.get("rows")
        _require(isinstance(rows, list) and all(
            isinstance(r, dict) and {"model", "format", "backend", "batch", "threads"} <= set(r)
            for r in rows), p, "results")
        _require(isinstance(doc.get("models", {}), dict) and all(
            isinstance(m, dict) for m in doc.get("models", {}).values()), p, "results")
        if "sweep" in doc:
            _require(isinstance(doc["sweep"], dict)
                     and isinstance(doc["sweep"].get("sparsity_of", {}), dict)
                     and isinstance(doc["sweep"].get("crossovers", []), list), p, "sweep")
        if not rows:
            raise SparsebenchError(f"{p} has no result rows")
        return doc
    if schema == "sparsebench-profile":
        if doc.get("schema_version") != 1:
            raise SparsebenchError(f"{p} has profile schema version "
                                   f"{doc.get('schema_version')!r}; this sparsebench reads 1")
        _require(all(isinstance(doc.get(k), dict) for k in ("target", "model", "verdict"))
                 and all(isinstance(doc.get(k), list) for k in ("choices", "layers")), p,
                 "profile")
        return doc
    looks_like_compare = {"base", "new", "mode", "rows", "exit_code"} <= set(doc)
    if schema == "sparsebench-compare" or (schema is None and looks_like_compare):
        _require(looks_like_compare and isinstance(doc["rows"], list) and all(
            isinstance(r, dict) and isinstance(r.get("key"), list) for r in doc["rows"]), p,
            "comparison")
        return doc
    raise SparsebenchError(f"{p} is not {KINDS}"
                           + (f" (schema {schema!r})" if schema else ""))


def from_comparison(result: Any, paths: list[str]) -> dict[str, Any]:
    """``compare --json``'s dict plus what only the run has: each row's raw samples (base and
    new) and the machines of the input files."""
    from sparsebench.gate.report import to_json

    doc = to_json(result)
    doc["samples"] = [{"base": r.base.get("samples_ns") or [], "new": r.new.get("samples_ns")
                       or []} for r in result.rows]
    machines = {}
    for path in dict.fromkeys(paths):
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        machines[path] = {k: d.get(k) for k in ("machine", "versions", "git_commit", "created")}
    doc["machines"] = machines
    doc["inputs"] = list(paths)
    return doc


# ---------------------------------------------------------------------------------- command


def add_report_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE.json", help="results of measure or sweep "
                   "(--json), of compare (--json) or of profile (--json); several files make "
                   "one page")
    p.add_argument("--html", metavar="OUT.html", help="output file (default: the first "
                   "input's name with .html, in the current folder)")
    p.add_argument("--title", help="page title")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")


def run_report(args: argparse.Namespace, console: Any) -> int:
    out = check_output(args.html or f"{Path(args.files[0]).stem}.html", args.force)
    docs = [(str(f), load_input(f)) for f in args.files]
    from sparsebench.report.html import render

    try:
        text = render(docs, args.title)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise SparsebenchError(f"cannot render {', '.join(args.files)}: unexpected content "
                               f"({type(exc).__name__}: {exc})") from None
    write_page(out, text)
    console.print(f"wrote {out} ({len(text.encode()) / 1024:.0f} KiB)")
    return 0
