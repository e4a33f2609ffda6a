"""Turning result rows into tables: per execution, and the models side by side.

A row with a noise flag (``noise``: p50 > 3x p10, or a load average above the core count) is
shown with it; speedups, the best execution and its ratios use only rows without the flag."""

from __future__ import annotations

from typing import Any

from rich.markup import escape

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
    if value < 1024 ** 2:
        return f"{value / 1024:.1f} KiB"
    return f"{value / 1024 ** 2:.2f} MiB" if value < 1024 ** 3 else f"{value / 1024 ** 3:.2f} GiB"


ROW_COLUMNS = ("model", "format", "backend", "impl", "batch", "threads", "p50 ms", "p90 ms",
               "p99 ms", "streams", "items/s", "stream p50 ms", "vs dense torch", "vs ORT dense",
               "weights", "exec memory", "setup memory", "GFLOP/s", "of GEMM peak", "GB/s",
               "of copy BW", "max rel err", "accuracy", "layers", "status")
ROW_NUMERIC = tuple(range(4, 23))
TRAFFIC_LABELS = {"plan": "plan", "weights+io": "w+io"}  # where a row's bytes come from
ROOFLINE_NOTE = ("GFLOP/s: 2 x nonzero MACs x batch / p50, of GEMM peak: of torch.mm 2048^2 at "
                 "the row's threads; GB/s: bytes per call / p50 (plan: the native plan's "
                 "kernel arrays and activations; w+io: weight bytes + input and output), of "
                 "copy BW: of np.copyto 256 MB")


def _err(r: dict[str, Any]) -> str:
    v = r.get("max_rel_err")
    return _num(v, "{:.1e}") if isinstance(v, float) else str(v or "-")


def _layers(r: dict[str, Any], detail: bool) -> str:
    """``converted/total`` layers (``row["layers"]``), with the dense ones and why in detail."""
    lay = r.get("layers")
    if not lay:
        return ""
    text = f"{lay.get('converted')}/{lay.get('total')}"
    dense = lay.get("dense") or {}
    if detail and dense:
        text += " (dense: " + "; ".join(f"{k}: {v}" for k, v in dense.items()) + ")"
    return text


def _rate(value: float | None) -> str:
    """A rate with 3 significant digits or more (items/s, GFLOP/s, GB/s)."""
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def _gbps(r: dict[str, Any]) -> str:
    if r.get("achieved_gbps") is None:
        return "-"
    return f"{_rate(r['achieved_gbps'])} {TRAFFIC_LABELS.get(r.get('traffic_source'), '?')}"


def row_cells(rows: list[dict[str, Any]], r: dict[str, Any]) -> list[str]:
    """Every column of ``ROW_COLUMNS`` (the wide table, Markdown), reasons in full."""
    lat = r.get("latency_ms") or {}
    ok = r.get("status") == "ok"
    status = "ok" if ok else f"skipped: {r.get('reason')}"
    notes = list(r.get("warnings") or []) + ([f"noisy: {r['noise']}"] if r.get("noise") else [])
    if ok and notes:
        status = "ok (" + "; ".join(notes) + ")"
    return [r["model"], r["format"], r["backend"], r.get("impl") or "-", str(r["batch"]),
            str(r["threads"]), _num(lat.get("p50")), _num(lat.get("p90")), _num(lat.get("p99")),
            str(r.get("streams") or "-"), _rate(r.get("throughput_items_s")),
            _num(r.get("stream_p50_ms")),
            _num(speedup(rows, r, "dense-torch"), "{:.2f}x"),
            _num(speedup(rows, r, "ort-dense"), "{:.2f}x"), _bytes(r.get("weight_bytes")),
            _bytes(r.get("peak_rss_bytes")), _bytes(r.get("setup_peak_rss_bytes")),
            _rate(r.get("achieved_gflops")), _num(r.get("roofline_flop_frac"), "{:.1%}"),
            _gbps(r), _num(r.get("roofline_bw_frac"), "{:.1%}"), _err(r),
            _num(r.get("accuracy"), "{:.2f}%"), _layers(r, True), status]


def progress_line(rows: list[dict[str, Any]], r: dict[str, Any]) -> str:
    """One finished execution, as the progress log (stderr) shows it."""
    c = row_cells(rows, r)
    streams = (f", {c[10]} items/s with {c[9]} streams (p50 {c[11]} ms)"
               if r.get("throughput_items_s") else "")
    return f"  {c[0]} {c[1]}/{c[2]} b{c[4]} t{c[5]}: {c[3]} p50 {c[6]} ms{streams}  {c[-1]}"


THROUGHPUT_COLUMNS = ("execution", "items/s", "vs 1 stream", "stream p50 ms", "p50 ms")
THROUGHPUT_NOTE = ("items/s: batch x calls the streams completed / wall seconds; vs 1 stream: "
                   "items/s / (batch / p50 of one caller alone); stream p50 ms: the median call "
                   "under that load")


def throughput_table(rows: list[dict[str, Any]]) -> tuple[str, list[list[str]]] | None:
    """(title, lines) of the rows measured with several streams, grouped by model; None when
    the run has none."""
    measured = [r for r in rows if r.get("throughput_items_s")]
    if not measured:
        return None
    counts = sorted({r["streams"] for r in measured})
    lines: list[list[str]] = []
    model = None
    for r in measured:
        if r["model"] != model:
            model = r["model"]
            lines.append([f"[bold]{escape(model)}[/]"] + [""] * (len(THROUGHPUT_COLUMNS) - 1))
        p50 = _p50(r)
        alone = r["batch"] * 1e3 / p50 if p50 else None
        lines.append(["  " + escape(execution_label(rows, r)), _rate(r["throughput_items_s"]),
                      _num(r["throughput_items_s"] / alone if alone else None, "{:.2f}x"),
                      _num(r.get("stream_p50_ms")), _num(p50)])
    return (f"throughput ({'/'.join(map(str, counts))} concurrent streams, --threads each)",
            lines)


class Footnotes:
    """Numbered notes under a table: the same text gets the same number."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def ref(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        return f"[{self.texts.index(text) + 1}]"

    def lines(self) -> list[str]:
        return [f"[{i}] {t}" for i, t in enumerate(self.texts, 1)]


COMPACT_COLUMNS = ("execution", "p50 ms", "speedup", "memory", "size", "error", "status")
COMPACT_NUMERIC = (1, 2, 3, 4, 5)


def _varying(rows: list[dict[str, Any]], key: str) -> bool:
    return len({r.get(key) for r in rows}) > 1


def execution_label(rows: list[dict[str, Any]], r: dict[str, Any]) -> str:
    """``format/backend``, with ``bN``/``tN`` when the run has several batches/threads."""
    text = f"{r['format']}/{r['backend']}"
    if _varying(rows, "batch"):
        text += f" b{r['batch']}"
    if _varying(rows, "threads"):
        text += f" t{r['threads']}"
    return text


def _split_labels(lines: list[list[str]], headers: list[str], width: int) -> None:
    """When ``format/backend`` labels do not fit beside the number columns, break them after
    the slash (two lines) instead of letting the terminal cut them mid-word."""
    others = sum(max([len(h)] + [len(line[i]) for line in lines]) + 3
                 for i, h in enumerate(headers) if i)
    labels = [line for line in lines if line[0].startswith("  ")]
    if labels and max(len(line[0]) for line in labels) + 3 + others > width:
        for line in labels:
            line[0] = line[0].replace("/", "/\n    ", 1)


def compact_table(rows: list[dict[str, Any]], notes: Footnotes
                  ) -> tuple[list[str], list[list[str]], tuple[int, ...]]:
    """The executions table that fits 80 columns: grouped by model (a bold model line, then
    its executions), speedup vs dense torch, exec memory, weight size, max rel error, and a
    short status whose reasons go to ``notes``; a ``layers`` column (converted/total) when
    rows carry it. Returns (headers, lines, numeric column indices)."""
    headers = list(COMPACT_COLUMNS)
    numeric: tuple[int, ...] = COMPACT_NUMERIC
    with_layers = any(r.get("layers") for r in rows)
    if with_layers:
        headers.insert(6, "layers")
        numeric = (*numeric, 6)
    lines: list[list[str]] = []
    model = None
    for r in rows:
        if r["model"] != model:
            model = r["model"]
            lines.append([f"[bold]{escape(model)}[/]"] + [""] * (len(headers) - 1))
        lat = r.get("latency_ms") or {}
        if r.get("status") == "ok":
            status = "noisy" if r.get("noise") else "ok"
            if r.get("warnings"):
                status += " " + notes.ref("; ".join(r["warnings"]))
        else:
            status = "skipped " + notes.ref(str(r.get("reason")))
        cells = ["  " + execution_label(rows, r), _num(lat.get("p50")),
                 _num(speedup(rows, r, "dense-torch"), "{:.2f}x"),
                 _bytes(r.get("peak_rss_bytes")), _bytes(r.get("weight_bytes")), _err(r),
                 status]
        if with_layers:
            cells.insert(6, _layers(r, False))
        lines.append(cells)
    return headers, lines, numeric


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


COMPACT_MODEL_COLUMNS = ("model", "accuracy", "sparsity", "dense", "smallest", "fastest",
                         "speedup")


def compact_models(doc: dict[str, Any]) -> list[list[str]]:
    """``model_summaries`` in the columns of ``COMPACT_MODEL_COLUMNS``: the method under the
    name, the smallest format under its size, batch and threads after the fastest execution
    when the run has several (its p50 is in the executions table)."""
    rows = doc["rows"]
    several = _varying(rows, "batch") or _varying(rows, "threads")
    out = []
    for c in model_summaries(doc):
        model, method, acc, sparsity, dense, smallest, best, batch, threads, _, vs = c[:11]
        fmt, _, size = smallest.partition(" ")
        out.append([escape(f"{model}\n({method})"), acc, sparsity, dense,
                    f"{size}\n{fmt}" if size else smallest,
                    best + (f" b{batch} t{threads}" if several else ""), vs])
    return out


def report_notes(doc: dict[str, Any]) -> list[str]:
    """The lines under the tables: layers kept dense, non-finite weights, what exec memory
    is, the noise warning."""
    lines = []
    for name, info in doc["models"].items():
        for fmt, f in (info.get("formats") or {}).items():
            for layer, reason in f.get("dense_layers", []):
                lines.append(f"note: {name} [{fmt}] {layer} kept dense: {reason}")
        for layer in info.get("nonfinite_layers") or []:
            lines.append(f"[yellow]warning[/]: {name}: non-finite weights in {layer}")
    lines.append(MEMORY_NOTE)
    note = noise_note(doc["rows"])
    if note:
        lines.append(f"[yellow]warning[/]: {note}")
    return lines


def print_report(doc: dict[str, Any], console: Any, wide: bool = False) -> None:
    """The executions and the models side by side. Default: the columns that fit the console
    (reasons as numbered notes under the table); ``wide``: every column, reasons in full."""
    from sparsebench.ui import print_notes, print_table, table

    rows = doc["rows"]
    if wide:
        lines = [[escape(c) for c in row_cells(rows, r)] for r in rows]
        print_table(console, table(ROW_COLUMNS, lines, "executions", ROW_NUMERIC,
                                   heavy=True), wide=True)
        print_table(console, table(MODEL_COLUMNS, model_summaries(doc), "models side by side",
                                   (2, 3, 4, 7, 8, 9, 10, 11), heavy=True), wide=True)
        print_notes(console, report_notes(doc) + [ROOFLINE_NOTE + _ceilings(doc)])
        return
    notes = Footnotes()
    headers, lines, numeric = compact_table(rows, notes)
    _split_labels(lines, headers, console.width)
    batches = sorted({r["batch"] for r in rows})
    threads = sorted({r["threads"] for r in rows})
    title = "executions" + (f" (batch {batches[0]}, threads {threads[0]})"
                            if len(batches) == len(threads) == 1 else "")
    print_table(console, table(headers, lines, title, numeric, whole=(len(headers) - 1,)))
    print_notes(console, [escape(line) for line in notes.lines()])
    console.print("speedup: vs dense torch (same model, batch, threads); memory: exec memory; "
                  "size: weights; error: max rel err vs dense torch; --wide: every column",
                  soft_wrap=False)
    streams = throughput_table(rows)
    if streams:
        title, lines = streams
        _split_labels(lines, list(THROUGHPUT_COLUMNS), console.width)
        print_table(console, table(THROUGHPUT_COLUMNS, lines, title, (1, 2, 3, 4)))
        console.print(THROUGHPUT_NOTE, soft_wrap=False)
    lines = compact_models(doc)
    short = max((len(line[0].split("\n")[0]) for line in lines), default=0) <= 24
    print_table(console, table(COMPACT_MODEL_COLUMNS, lines, "models side by side",
                               (1, 2, 3, 6), whole=(0, 4) if short else (4,)))
    print_notes(console, report_notes(doc))


def _ceilings(doc: dict[str, Any]) -> str:
    """``; ceilings: copy X GB/s, GEMM Y GFLOP/s at T thread(s)`` (empty without a probe)."""
    roof = doc.get("roofline")
    if not isinstance(roof, dict) or not roof.get("copy_gbps"):
        return ""
    gemm = ", ".join(f"{v:.0f} GFLOP/s at {t} thread(s)"
                     for t, v in (roof.get("gemm_gflops") or {}).items())
    return f"; ceilings: copy {roof['copy_gbps']:.1f} GB/s, GEMM {gemm}"


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
            f"{_md_table(ROW_COLUMNS, rows)}\n\n{MEMORY_NOTE}.\n\n{ROOFLINE_NOTE}"
            f"{_ceilings(doc)}.\n"
            + (f"\n**Warning:** {note}.\n" if note else ""))
