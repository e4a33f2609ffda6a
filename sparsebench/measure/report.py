"""Turning result rows into tables: per execution, and the models side by side.

A row with a noise flag (``noise``: p50 > 3x p10, or a load average above the core count) is
shown with it; speedups, the best execution and its ratios use only rows without the flag."""

from __future__ import annotations

from typing import Any

BASELINES = {"dense-torch": ("dense", "torch"), "ort-dense": ("dense", "onnxruntime")}


def _p50(row: dict[str, Any] | None) -> float | None:
    if not row or row.get("status") != "ok":
        return None
    return (row.get("latency_ms") or {}).get("p50")


def _find(rows: list[dict[str, Any]], model: str, fmt: str, backend: str, batch: int,
          threads: int) -> dict[str, Any] | None:
    for r in rows:
        if (r["model"], r["format"], r["backend"], r["batch"], r["threads"]) == (
                model, fmt, backend, batch, threads):
            return r
    return None


def _quiet_p50(row: dict[str, Any] | None) -> float | None:
    """The p50 of an ok row without a noise flag (what speedups are computed from)."""
    return None if not row or row.get("noise") else _p50(row)


def speedup(rows: list[dict[str, Any]], row: dict[str, Any], baseline: str) -> float | None:
    """p50 of the baseline execution (same model, batch, threads) / p50 of ``row``; None when
    either is missing, failed or flagged noisy."""
    fmt, backend = BASELINES[baseline]
    base = _quiet_p50(_find(rows, row["model"], fmt, backend, row["batch"], row["threads"]))
    mine = _quiet_p50(row)
    return base / mine if base and mine else None


def _num(value: float | None, fmt: str = "{:.3f}") -> str:
    return "-" if value is None else fmt.format(value)


def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1024:.1f} KiB" if value < 1024 ** 2 else f"{value / 1024 ** 2:.2f} MiB"


ROW_COLUMNS = ("model", "format", "backend", "impl", "batch", "threads", "p50 ms", "p90 ms",
               "vs dense torch", "vs ORT dense", "weights", "exec memory", "max rel err",
               "accuracy", "status")


def row_cells(rows: list[dict[str, Any]], r: dict[str, Any]) -> list[str]:
    lat = r.get("latency_ms") or {}
    ok = r.get("status") == "ok"
    status = "ok" if ok else f"skipped: {r.get('reason')}"
    notes = list(r.get("warnings") or []) + ([f"noisy: {r['noise']}"] if r.get("noise") else [])
    if ok and notes:
        status = "ok (" + "; ".join(notes) + ")"
    return [r["model"], r["format"], r["backend"], r.get("impl") or "-", str(r["batch"]),
            str(r["threads"]), _num(lat.get("p50")), _num(lat.get("p90")),
            _num(speedup(rows, r, "dense-torch"), "{:.2f}x"),
            _num(speedup(rows, r, "ort-dense"), "{:.2f}x"), _bytes(r.get("weight_bytes")),
            _bytes(r.get("peak_rss_bytes")),
            _num(r.get("max_rel_err"), "{:.1e}") if isinstance(r.get("max_rel_err"), float)
            else str(r.get("max_rel_err") or "-"),
            _num(r.get("accuracy"), "{:.2f}%"), status]


MODEL_COLUMNS = ("model", "method", "accuracy", "sparsity", "dense size", "smallest format",
                 "best execution", "batch", "threads", "p50 ms", "vs own dense torch",
                 "vs ORT dense")


def model_summaries(doc: dict[str, Any]) -> list[list[str]]:
    """One line per (model, batch, threads): accuracy, sparsity, size and best execution."""
    rows = doc["rows"]
    out = []
    for name, info in doc["models"].items():
        formats = {f: v for f, v in (info.get("formats") or {}).items() if "weight_bytes" in v}
        smallest = min(formats.items(), key=lambda kv: kv[1]["weight_bytes"], default=None)
        dense_bytes = formats.get("dense", {}).get("weight_bytes")
        acc_row = _find(rows, name, "dense", "torch", *(next(
            ((r["batch"], r["threads"]) for r in rows if r["model"] == name), (1, 1))))
        accuracy = acc_row.get("accuracy") if acc_row else None
        if accuracy is None:
            accuracy = (info.get("training") or {}).get("best_test_acc")
        combos = sorted({(r["batch"], r["threads"]) for r in rows if r["model"] == name})
        for batch, threads in combos:
            ok = [r for r in rows if r["model"] == name and r["batch"] == batch
                  and r["threads"] == threads and _quiet_p50(r)]
            best = min(ok, key=_p50, default=None)
            out.append([
                name, str(info.get("method") or info.get("kind")), _num(accuracy, "{:.2f}%"),
                _num(info.get("sparsity"), "{:.1%}"), _bytes(dense_bytes),
                f"{smallest[0]} {_bytes(smallest[1]['weight_bytes'])}" if smallest else "-",
                f"{best['format']}/{best['backend']}" if best else "-", str(batch),
                str(threads), _num(_p50(best)),
                _num(speedup(rows, best, "dense-torch"), "{:.2f}x") if best else "-",
                _num(speedup(rows, best, "ort-dense"), "{:.2f}x") if best else "-"])
    return out


MEMORY_NOTE = ("exec memory: peak RSS of the worker during the timed calls above its RSS after "
               "imports, once setup (loading, conversion, the dense reference) was freed")


def noise_note(rows: list[dict[str, Any]]) -> str | None:
    """One line saying how many rows carry a noise flag, or None."""
    noisy = [r for r in rows if r.get("noise")]
    if not noisy:
        return None
    return (f"{len(noisy)} of {len(rows)} rows are flagged noisy (p50 > 3x p10, or load average "
            "above the core count): their speedups are not shown and the best executions "
            "leave them out; measure again on a quiet machine")


def print_report(doc: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    table = Table(*ROW_COLUMNS, title="executions")
    for r in doc["rows"]:
        table.add_row(*row_cells(doc["rows"], r))
    console.print(table)
    table = Table(*MODEL_COLUMNS, title="models side by side")
    for line in model_summaries(doc):
        table.add_row(*line)
    console.print(table)
    for name, info in doc["models"].items():
        for fmt, f in (info.get("formats") or {}).items():
            for layer, reason in f.get("dense_layers", []):
                console.print(f"note: {name} [{fmt}] {layer} kept dense: {reason}")
        for layer in info.get("nonfinite_layers") or []:
            console.print(f"[yellow]warning[/]: {name}: non-finite weights in {layer}")
    console.print(MEMORY_NOTE)
    note = noise_note(doc["rows"])
    if note:
        console.print(f"[yellow]warning[/]: {note}")


def _md_table(header: tuple[str, ...] | list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(c.replace("|", "/") for c in line) + " |" for line in lines]
    return "\n".join(out)


def markdown(doc: dict[str, Any]) -> str:
    m = doc.get("machine", {})
    head = (f"Machine: {m.get('cpu')} ({m.get('logical_cores')} cores, "
            f"{', '.join(m.get('isa', []))}); sparsebench {doc['versions'].get('sparsebench')}, "
            f"torch {doc['versions'].get('torch')}, onnxruntime "
            f"{doc['versions'].get('onnxruntime')}; commit {doc.get('git_commit')}.")
    rows = [row_cells(doc["rows"], r) for r in doc["rows"]]
    note = noise_note(doc["rows"])
    return (f"{head}\n\n### Models side by side\n\n"
            f"{_md_table(MODEL_COLUMNS, model_summaries(doc))}\n\n### Executions\n\n"
            f"{_md_table(ROW_COLUMNS, rows)}\n\n{MEMORY_NOTE}.\n"
            + (f"\n**Warning:** {note}.\n" if note else ""))
