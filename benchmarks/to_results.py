"""Convert a pytest-benchmark JSON file (with raw data) into a sparsebench results file, so that
``sparsebench compare`` can gate a pair of benchmark runs with its statistics.

    python -m pytest benchmarks --benchmark-json=new.json --benchmark-save-data
    python benchmarks/to_results.py new.json new-results.json
    sparsebench compare base-results.json new-results.json

Each benchmark becomes one row: model = the test name, format = "pytest-benchmark", backend =
the group (or "-"), batch = threads = 1, ``samples_ns`` = the per-round times in time order (a
round is the mean of ``iterations`` calls). Rows match across files by test name.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def convert(bench: dict[str, Any], source: str) -> dict[str, Any]:
    from sparsebench.errors import SparsebenchError
    from sparsebench.measure.results import SCHEMA, SCHEMA_VERSION
    from sparsebench.measure.timing import latency_stats_ms

    if not isinstance(bench, dict) or "benchmarks" not in bench:
        raise SparsebenchError(f"{source} is not a pytest-benchmark JSON file")
    cpu = (bench.get("machine_info") or {}).get("cpu") or {}
    rows = []
    for b in bench["benchmarks"]:
        data = (b.get("stats") or {}).get("data")
        if not data:
            raise SparsebenchError(f"{source}: {b.get('fullname')} has no raw data; run "
                                   "pytest with --benchmark-save-data")
        samples = [round(t * 1e9) for t in data]
        rows.append({"model": b["fullname"], "format": "pytest-benchmark",
                     "backend": b.get("group") or "-", "impl": (b.get("extra_info") or {}).get(
                         "impl"), "batch": 1, "threads": 1, "status": "ok", "reason": None,
                     "latency_ms": latency_stats_ms(samples), "samples": len(samples),
                     "samples_ns": samples, "peak_rss_bytes": None, "weight_bytes": (
                         b.get("extra_info") or {}).get("weight_bytes"), "warnings": []})
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cpu": cpu.get("brand_raw"), "logical_cores": cpu.get("count"),
                        "source": "pytest-benchmark"},
            "versions": {"python": (bench.get("machine_info") or {}).get("python_version")},
            "git_commit": (bench.get("commit_info") or {}).get("id"),
            "config": {"converted_from": source}, "models": {}, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    from sparsebench.errors import SparsebenchError

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bench_json")
    p.add_argument("out")
    args = p.parse_args(argv)
    try:
        try:
            bench = json.loads(Path(args.bench_json).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SparsebenchError(f"cannot read {args.bench_json}: {exc}")
        doc = convert(bench, args.bench_json)
    except SparsebenchError as exc:
        print(f"to_results: error: {exc}", file=sys.stderr)
        return 2
    Path(args.out).write_text(json.dumps(doc, indent=1))
    print(f"wrote {args.out} ({len(doc['rows'])} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
