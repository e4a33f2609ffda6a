"""The HTML report: one self-contained page (inline CSS and SVG, no script, no network; a
Content-Security-Policy forbids loading anything) built from the JSON the commands write.

``render(docs)`` takes ``[(source, doc)]`` where each doc is a measure or sweep results file
(``sparsebench-results``), a comparison (``compare --json``, optionally with the raw samples
``compare --html`` adds) or a profile (``sparsebench-profile``), and returns the page.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any, Callable, Iterable, Sequence

import sparsebench.report.svg as svg
from sparsebench.report.svg import BAD, GOOD, MUTED, NEUTRAL, Bar, Interval, Lane, Series, esc

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;
 color:#1d2329;background:#fff;font-size:14px;line-height:1.4}
header.top{background:#1f2d3d;color:#fff;padding:14px 28px}
header.top h1{margin:0;font-size:20px}
header.top p{margin:4px 0 0;color:#c9d4df;font-size:13px}
nav{padding:6px 28px;background:#eef2f6;border-bottom:1px solid #d7dee6;font-size:13px}
nav a{margin-right:14px;color:#1f4e79;text-decoration:none}
main{padding:4px 28px 40px;max-width:1400px}
section{margin-top:22px}
h2{font-size:17px;border-bottom:2px solid #d7dee6;padding-bottom:3px;margin:26px 0 8px}
h3{font-size:14px;margin:16px 0 6px;color:#34495e}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:12px;margin:4px 0 10px}
th,td{border:1px solid #d7dee6;padding:3px 7px;text-align:left;white-space:nowrap}
th{background:#eef2f6;font-weight:600}
td.n{text-align:right;font-variant-numeric:tabular-nums}
tr:nth-child(even) td{background:#fafbfc}
td.ok{color:#2e7d32}td.bad{color:#c62828;font-weight:600}td.skip{color:#8a6d00}
td.best{background:#e3f2e5 !important;font-weight:600}
.verdict{padding:10px 14px;border-radius:6px;font-weight:600;margin:10px 0;font-size:15px}
.verdict.pass{background:#e3f2e5;color:#1b5e20;border:1px solid #a5d6a7}
.verdict.fail{background:#fdecea;color:#b71c1c;border:1px solid #ef9a9a}
.muted{color:#66737f;font-size:12px}
ul.notes{font-size:12px;margin:4px 0;padding-left:20px}
dl.kv{display:grid;grid-template-columns:max-content auto;gap:2px 14px;font-size:13px;margin:6px 0}
dl.kv dt{color:#66737f}dl.kv dd{margin:0}
svg.chart{display:block;margin:6px 0 14px;max-width:100%;height:auto}
svg text{fill:#1d2329;font-family:inherit}
svg .axis{stroke:#5b6670;stroke-width:1}svg .grid{stroke:#e6eaee;stroke-width:1}
svg .stripe{fill:#f5f7f9}svg .ref{stroke:#333;stroke-width:1.2;stroke-dasharray:4,3}
svg .band{fill:#eceff1}svg .axis-label,svg .ref-label{fill:#5b6670}
"""


class Raw(str):
    """Markup that goes into a table cell unescaped."""


def num(value: Any) -> float | None:
    """A finite float, or None (JSON stores NaN/Inf as strings; missing values as null)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def fmt_bytes(value: Any) -> str:
    from sparsebench.ui import fmt_bytes as fmt

    return fmt(num(value), missing="-")


def _f(value: Any, pattern: str = "{:.3f}") -> str:
    v = num(value)
    return "-" if v is None else pattern.format(v)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], cls: str = "",
          numeric: Callable[[int], bool] | None = None,
          cell_class: Callable[[int, int, Any], str] | None = None) -> str:
    out = [f'<div class="scroll"><table class="{cls}"><thead><tr>'
           + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        cells = []
        for j, c in enumerate(row):
            classes = []
            if numeric and numeric(j):
                classes.append("n")
            if cell_class:
                extra = cell_class(i, j, c)
                if extra:
                    classes.append(extra)
            attr = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{attr}>{c if isinstance(c, Raw) else esc(c)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def kv(pairs: Iterable[tuple[str, Any]]) -> str:
    return ('<dl class="kv">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in pairs
                                        if v not in (None, "", [])) + "</dl>")


def notes(lines: Iterable[str]) -> str:
    items = [f"<li>{esc(x)}</li>" for x in lines]
    return f'<ul class="notes">{"".join(items)}</ul>' if items else ""


class Page:
    """Sections in order, each with an anchor in the navigation bar."""

    def __init__(self) -> None:
        self.sections: list[tuple[str, str, str]] = []

    def add(self, title: str, body: str) -> None:
        if body:
            anchor = f"s{len(self.sections) + 1}"
            self.sections.append((anchor, title, body))

    def html(self, title: str, subtitle: str) -> str:
        nav = "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t, _ in self.sections)
        body = "".join(f'<section id="{a}"><h2>{esc(t)}</h2>{b}</section>'
                       for a, t, b in self.sections)
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
                '<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
                f'<header class="top"><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>'
                f"<nav>{nav}</nav><main>{body}</main></body></html>\n")


# ------------------------------------------------------------------------------ shared blocks


def machine_block(doc: dict[str, Any]) -> str:
    m = doc.get("machine") or {}
    v = doc.get("versions") or {}
    pairs = [("CPU", m.get("cpu")), ("ISA", ", ".join(map(str, m.get("isa") or []))),
             ("cores", f"{m.get('logical_cores')} logical, {m.get('physical_cores')} physical"
              if m.get("logical_cores") is not None else None),
             ("memory", fmt_bytes(m.get("memory_bytes")) if m.get("memory_bytes") else None),
             ("system", " ".join(str(m[k]) for k in ("system", "arch") if m.get(k)))]
    pairs += [(k, m[k]) for k in sorted(m) if k not in (
        "cpu", "isa", "logical_cores", "physical_cores", "memory_bytes", "system", "arch")
        and isinstance(m[k], (str, int, float))]
    pairs += [("versions", ", ".join(f"{k} {val}" for k, val in v.items())),
              ("git commit", doc.get("git_commit")), ("created", doc.get("created"))]
    roof = doc.get("roofline")
    if isinstance(roof, dict):
        gemm = roof.get("gemm_gflops") or {}
        pairs.append(("roofline", f"copy {_f(roof.get('copy_gbps'), '{:.1f}')} GB/s; dense GEMM "
                      + ", ".join(f"{_f(g, '{:.0f}')} GFLOP/s at {t} thread(s)"
                                  for t, g in gemm.items())))
    return kv(pairs)


def _label(r: dict[str, Any]) -> str:
    subject = f" [{r['subject']}]" if r.get("subject") else ""
    return f"{r.get('format')}/{r.get('backend')}{subject}"


def _group_key(r: dict[str, Any]) -> tuple:
    return (str(r.get("model")), r.get("batch"), r.get("threads"))


def _groups(rows: list[dict[str, Any]]) -> dict[tuple, list[tuple[int, dict[str, Any]]]]:
    out: dict[tuple, list[tuple[int, dict[str, Any]]]] = {}
    for i, r in enumerate(rows):
        out.setdefault(_group_key(r), []).append((i, r))
    return out


def _group_title(key: tuple) -> str:
    return f"{key[0]}, batch {key[1]}, {key[2]} thread(s)"


def _samples_ms(r: dict[str, Any]) -> list[float]:
    return [v / 1e6 for v in (num(s) for s in r.get("samples_ns") or []) if v and v > 0]


def distribution_charts(rows: list[dict[str, Any]]) -> str:
    """One chart per (model, batch, threads), one lane per row that has raw samples."""
    out = []
    for key, members in _groups(rows).items():
        lanes = []
        for i, r in members:
            s = _samples_ms(r)
            if s and r.get("status") == "ok":
                p50 = num((r.get("latency_ms") or {}).get("p50"))
                lanes.append(Lane(_label(r), s, f"p50 {_f(p50)} ms, n={len(s)}", row_id=str(i)))
        chart = svg.distributions(lanes, f"latency distribution: {_group_title(key)}")
        if chart:
            out.append(f"<h3>{esc(_group_title(key))}</h3>{chart}")
    return "".join(out)


def speedup_charts(rows: list[dict[str, Any]]) -> str:
    """One chart per (batch, threads): every ok row's speedup over its model's dense/torch."""
    from sparsebench.measure.report import speedup

    out = []
    combos: dict[tuple, list[Bar]] = {}
    models = list(dict.fromkeys(str(r.get("model")) for r in rows))
    for r in rows:
        s = num(speedup(rows, r, "dense-torch")) if r.get("status") == "ok" else None
        if s:
            label = (f"{r.get('model')} · " if len(models) > 1 else "") + _label(r)
            combos.setdefault((r.get("batch"), r.get("threads")), []).append(Bar(
                label, s, f"{s:.2f}x", GOOD if s > 1 else BAD,
                f"{r.get('model')} {_label(r)}: {s:.3f}x the speed of its dense/torch"))
    for (batch, threads), bars in combos.items():
        title = f"batch {batch}, {threads} thread(s)"
        chart = svg.hbars(bars, f"speedup vs dense torch: {title}",
                          "speedup over the same model's dense/torch p50 (log scale; right of "
                          "1x: faster)", log=True, origin=1.0, ref=1.0, ref_label="dense torch",
                          fmt=lambda v: f"{v:.3g}x", cls="speedup")
        if chart:
            out.append(f"<h3>{esc(title)}</h3>{chart}")
    return "".join(out)


def memory_charts(doc: dict[str, Any]) -> str:
    out = []
    formats = sorted({f for info in (doc.get("models") or {}).values()
                      for f in (info.get("formats") or {})})
    hue = {f: svg.colour(i) for i, f in enumerate(formats)}
    bars = []
    for name, info in (doc.get("models") or {}).items():
        for fmt, f in (info.get("formats") or {}).items():
            b = num((f or {}).get("weight_bytes"))
            if b is not None:
                bars.append(Bar(f"{name} · {fmt}", b, fmt_bytes(b), hue[fmt]))
    chart = svg.hbars(bars, "weight storage per model and format", "weight bytes (exact, "
                      "analytic: values, indices, pointers, other parameters)", cls="size",
                      byte_axis=True)
    if chart:
        out.append(f"<h3>size of the weights</h3>{chart}")
    by_model: dict[str, list[Bar]] = {}
    for r in doc.get("rows") or []:
        rss = num(r.get("peak_rss_bytes"))
        if rss is not None and r.get("status") == "ok":
            by_model.setdefault(str(r.get("model")), []).append(Bar(
                f"{_label(r)} b{r.get('batch')} t{r.get('threads')}", rss, fmt_bytes(rss),
                hue.get(r.get("format"), NEUTRAL)))
    for model, mb in by_model.items():
        chart = svg.hbars(mb, f"peak RSS: {model}", "peak resident memory during the timed "
                          "calls, above the worker's RSS after imports", cls="memory",
                          byte_axis=True)
        if chart:
            out.append(f"<h3>peak RSS: {esc(model)}</h3>{chart}")
    return "".join(out)


def _status_class(value: Any) -> str:
    text = str(value)
    if text.startswith("ok"):
        return "ok"
    if text.startswith(("skipped", "not compared")):
        return "skip"
    if text.startswith("FAIL"):
        return "bad"
    return ""


NUMERIC = ("peak_rss_bytes", "setup_peak_rss_bytes", "weight_bytes", "max_abs_err",
           "max_rel_err", "accuracy", "achieved_gbps", "achieved_gflops", "traffic_bytes",
           "roofline_bw_frac", "roofline_flop_frac", "stream_calls", "stream_wall_s",
           "throughput_items_s", "stream_p50_ms", "dense_macs",
           "sparse_macs")


def _numeric(value: Any) -> Any:
    """NaN/Inf stored as strings become floats again; anything else non-numeric becomes None."""
    if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("nan", "inf", "-inf", "infinity"):
        return float(value)
    return None


def clean_results(doc: dict[str, Any]) -> dict[str, Any]:
    """A copy whose numeric row fields are numbers or None (the tables format them)."""
    rows = []
    for r in doc["rows"]:
        r = dict(r)
        for k in NUMERIC:
            r[k] = _numeric(r.get(k))
        lat = r.get("latency_ms")
        r["latency_ms"] = ({k: _numeric(v) for k, v in lat.items()} if isinstance(lat, dict)
                           else None)
        if not isinstance(r.get("samples_ns"), list):
            r["samples_ns"] = []
        if not isinstance(r.get("warnings"), list):
            r["warnings"] = []
        rows.append(r)
    models = {}
    for name, info in (doc.get("models") or {}).items():
        formats = {f: {**v, "weight_bytes": _numeric(v.get("weight_bytes"))}
                   if isinstance(v, dict) else {} for f, v in (info.get("formats") or {}).items()}
        models[name] = {**info, "formats": formats}
    return {**doc, "rows": rows, "models": models}


def results_sections(page: Page, doc: dict[str, Any], source: str, what: str = "") -> None:
    """Tables, distributions, speedups, size and memory bars, skips and the machine of one
    results file (measure or sweep)."""
    from sparsebench.measure.report import MODEL_COLUMNS, ROW_COLUMNS, model_summaries, row_cells

    doc = clean_results(doc)
    rows = doc["rows"]
    ok = sum(r.get("status") == "ok" for r in rows)
    cfg = doc.get("config") or {}
    timing = cfg.get("timing") or {}
    overview = kv([
        ("file", source), ("executions", f"{len(rows)} ({ok} ok, {len(rows) - ok} skipped)"),
        ("models", ", ".join(doc.get("models") or {})),
        ("formats", ", ".join(map(str, cfg.get("formats") or []))),
        ("backends", ", ".join(map(str, cfg.get("backends") or []))),
        ("batch sizes", ", ".join(map(str, cfg.get("batches") or []))),
        ("threads", ", ".join(map(str, cfg.get("threads") or []))),
        ("timing", ", ".join(f"{k} {v}" for k, v in timing.items())),
        ("accuracy data", cfg.get("data")),
        ("A/B", (doc.get("ab") or {}).get("mode") if isinstance(doc.get("ab"), dict) else None),
    ])
    page.add(f"{what}overview", overview)
    if doc.get("models") and not doc.get("sweep"):
        page.add(f"{what}models side by side", table(
            MODEL_COLUMNS, model_summaries(doc), numeric=lambda j: j in (2, 3, 4, 9, 10, 11)))
    page.add(f"{what}machine", machine_block(doc))
    page.add(f"{what}speedup vs dense", speedup_charts(rows))
    page.add(f"{what}latency distributions (raw samples)",
             '<p class="muted">Every timed call of every execution, one lane each; executions '
             "of one model, batch and thread count share an axis.</p>"
             + distribution_charts(rows))
    page.add(f"{what}memory and size", memory_charts(doc))
    ab = any(r.get("subject") for r in rows)
    header = (["subject"] if ab else []) + list(ROW_COLUMNS)
    lines = [([r.get("subject") or "-"] if ab else []) + row_cells(rows, r) for r in rows]
    first_num = 1 if ab else 0
    page.add(f"{what}executions", table(
        header, lines, cls="executions",
        numeric=lambda j: first_num + 4 <= j <= first_num + 13,
        cell_class=lambda i, j, c: _status_class(c) if j == len(header) - 1 else ""))
    extra = [f"skipped: {r.get('model')} {_label(r)} b{r.get('batch')} t{r.get('threads')}: "
             f"{r.get('reason')}" for r in rows if r.get("status") != "ok"]
    extra += [f"warning: {r.get('model')} {_label(r)}: {w}" for r in rows
              for w in r.get("warnings") or []]
    for name, info in (doc.get("models") or {}).items():
        for fmt, f in (info.get("formats") or {}).items():
            for item in (f or {}).get("dense_layers") or []:
                if isinstance(item, (list, tuple)) and len(item) == 2:
                    extra.append(f"note: {name} [{fmt}] {item[0]} kept dense: {item[1]}")
        for layer in info.get("nonfinite_layers") or []:
            extra.append(f"warning: {name}: non-finite weights in {layer}")
    page.add(f"{what}skipped, warnings and notes", notes(extra))


# ------------------------------------------------------------------------------ sweep


def _sweep_series(doc: dict[str, Any]) -> dict[tuple, dict[float, dict[str, Any]]]:
    """{(format, backend, batch, threads): {sparsity %: row}} (as sparsebench.sweep.series)."""
    sp = doc["sweep"].get("sparsity_of") or {}
    out: dict[tuple, dict[float, dict[str, Any]]] = {}
    for r in doc["rows"]:
        if r.get("model") in sp and num(sp[r["model"]]) is not None:
            out.setdefault((r.get("format"), r.get("backend"), r.get("batch"), r.get("threads")),
                           {})[num(sp[r["model"]])] = r
    return out


def _p50(r: dict[str, Any] | None) -> float | None:
    if not r or r.get("status") != "ok":
        return None
    return num((r.get("latency_ms") or {}).get("p50"))


def sweep_sections(page: Page, doc: dict[str, Any], source: str) -> None:
    sw = doc["sweep"]
    baseline = tuple(sw.get("baseline") or ("dense", "onnxruntime"))
    base_name = "/".join(map(str, baseline))
    s = _sweep_series(doc)
    crossovers = sw.get("crossovers")  # written by the sweep when all rows are measured
    missing = crossovers is None
    crossovers = crossovers or []
    executions = sorted({k[:2] for k in s})
    hue = {e: svg.colour(i) for i, e in enumerate(executions)}
    page.add("sweep", kv([("name", sw.get("name")), ("command", sw.get("command")),
                          ("sparsities", ", ".join(f"{v:g}%" for v in sw.get("sparsities") or [])),
                          ("pruned layers", ", ".join(sw.get("pruned_layers") or [])),
                          ("baseline", base_name), ("file", source)]))
    charts = []
    for batch, threads in sorted({k[2:] for k in s}, key=str):
        keys = sorted(k for k in s if k[2:] == (batch, threads))
        lat = [Series(f"{k[0]}/{k[1]}", [(p, v) for p, r in s[k].items()
                                          if (v := _p50(r))], hue[k[:2]]) for k in keys]
        spd = []
        for k in keys:
            if k[:2] == baseline:
                continue
            pts = []
            for p, r in s[k].items():
                b, mine = _p50(s.get((*baseline, batch, threads), {}).get(p)), _p50(r)
                if b and mine:
                    pts.append((p, b / mine))
            spd.append(Series(f"{k[0]}/{k[1]}", pts, hue[k[:2]]))
        marks = [(num(c["crossover"]), f"{c['format']}/{c['backend']} from "
                  f"{num(c['crossover']):g}%", hue.get((c["format"], c["backend"]), MUTED))
                 for c in crossovers if c.get("batch") == batch and c.get("threads") == threads
                 and num(c.get("crossover")) is not None]
        title = f"batch {batch}, {threads} thread(s)"
        charts.append(f"<h3>{esc(title)}</h3>" + svg.lines(
            lat, f"p50 latency vs sparsity, {title}", "unstructured sparsity of the pruned "
            "layers (%)", "p50 latency (ms, log)", ylog=True))
        charts.append(svg.lines(
            spd, f"speedup over {base_name} vs sparsity, {title}", "unstructured sparsity of "
            "the pruned layers (%)", f"speedup over {base_name} (log)", ylog=True, hline=1.0,
            hline_label=f"1x = {base_name}", vmarks=marks))
    page.add("sweep curve and crossovers",
             '<p class="muted">Dashed vertical lines: the crossover of an execution, the lowest '
             f"sparsity from which it beats {esc(base_name)} at every higher sparsity "
             "measured.</p>" + "".join(charts))
    page.add("crossovers", ('<p class="muted">No crossovers in this file: the sweep did not '
                            "finish.</p>" if missing else "") + table(
        ["execution", "batch", "threads", "crossover", "first faster", "best speedup"],
        [[f"{c.get('format')}/{c.get('backend')}", c.get("batch"), c.get("threads"),
          "never" if num(c.get("crossover")) is None else f"{num(c['crossover']):g}%",
          "-" if num(c.get("first_faster")) is None else f"{num(c['first_faster']):g}%",
          _f(c.get("max_speedup"), "{:.2f}x")] for c in crossovers],
        numeric=lambda j: j >= 3))
    points = sorted({p for rows in s.values() for p in rows})
    page.add("p50 latency (ms) by sparsity", table(
        ["execution", "impl", "batch", "threads"] + [f"{p:g}%" for p in points],
        [[f"{k[0]}/{k[1]}", next((r.get("impl") for r in s[k].values() if r.get("impl")), "-"),
          k[2], k[3]] + [_f(_p50(s[k].get(p))) for p in points] for k in sorted(s, key=str)],
        numeric=lambda j: j >= 4))
    results_sections(page, doc, source, "sweep: ")


# ------------------------------------------------------------------------------ compare


def compare_sections(page: Page, c: dict[str, Any], source: str) -> None:
    cfg = c.get("config") or {}
    failed = bool(c.get("exit_code"))
    page.add("gate verdict", f'<div class="verdict {"fail" if failed else "pass"}">'
             f"{esc(c.get('summary') or ('FAIL' if failed else 'pass'))}</div>" + kv([
                 ("base", c.get("base")), ("new", c.get("new")), ("mode", c.get("mode")),
                 ("exit code", c.get("exit_code")), ("file", source),
                 ("rule", f"p < {cfg.get('alpha')} and a change of at least "
                  f"{_f(cfg.get('threshold'), '{:.0%}')} ({cfg.get('rule', 'bound')}); "
                  f"{cfg.get('blocks')} blocks, {cfg.get('resamples')} bootstrap resamples; "
                  f"peak RSS tolerance +{_f(cfg.get('rss_tolerance'), '{:.0%}')} and "
                  f"+{fmt_bytes(cfg.get('rss_min_bytes'))}" if cfg else None)]))
    rows = c.get("rows") or []
    width = max((len(r.get("key") or []) for r in rows), default=5)
    key_head = (["model", "format", "backend", "batch", "threads"] if width == 5
                else ["format", "backend", "batch", "threads"])[:width]
    alpha = num(cfg.get("alpha"))
    ci = f"{1 - alpha:.0%} CI" if alpha else "CI"
    lines = []
    for r in rows:
        ch = r.get("change") or {}
        p = num(ch.get("p_value"))
        gate = r.get("regressions") or []
        unjudged = r.get("unjudged")
        if unjudged:
            gate = [*gate, *(unjudged if isinstance(unjudged, list) else [str(unjudged)])]
        lines.append(list(map(str, r.get("key") or [])) + [
            _f(r.get("base_p50_ms")), _f(r.get("new_p50_ms")), _f(ch.get("ratio"), "x{:.3f}"),
            f"[{_f(ch.get('low'))}, {_f(ch.get('high'))}]" if ch else "-",
            "-" if p is None else ("<1e-4" if p < 1e-4 else f"{p:.2g}"),
            r.get("latency", "-"),
            "-" if r.get("weight_delta") is None else f"{int(r['weight_delta']):+,} B",
            "-" if r.get("rss_delta") is None else fmt_bytes(r["rss_delta"]),
            ("FAIL: " + "; ".join(map(str, gate))) if gate else "ok"])
    header = key_head + ["base p50 ms", "new p50 ms", "new/base", ci, "p", "latency", "weights",
                         "peak RSS", "gate"]
    page.add("compared rows", table(
        header, lines, numeric=lambda j: width <= j <= width + 4 or j in (width + 6, width + 7),
        cell_class=lambda i, j, v: _status_class(v) if j == len(header) - 1 else (
            {"slower": "bad", "faster": "ok"}.get(str(v), "") if j == width + 5 else "")))
    t = num(cfg.get("threshold")) or 0.0
    items = []
    for r in rows:
        ch = r.get("change") or {}
        ratio = num(ch.get("ratio"))
        if ratio:
            verdict = r.get("latency")
            items.append(Interval(" ".join(map(str, r.get("key") or [])), ratio,
                                  num(ch.get("low")), num(ch.get("high")),
                                  BAD if verdict == "slower" else GOOD if verdict == "faster"
                                  else NEUTRAL, f"{verdict}: x{ratio:.3f} [{_f(ch.get('low'))},"
                                  f" {_f(ch.get('high'))}]"))
    page.add("latency change per row", svg.forest(
        items, "new/base ratio of medians with its confidence interval",
        f"new p50 / base p50 (log scale; shaded: within {t:.0%}, too small to count)",
        band=(1 / (1 + t), 1 + t) if t else None))
    samples = c.get("samples") or []
    lanes = []
    for r, pair in zip(rows, samples):
        base = [v / 1e6 for v in (num(x) for x in (pair or {}).get("base") or []) if v]
        new = [v / 1e6 for v in (num(x) for x in (pair or {}).get("new") or []) if v]
        if base or new:
            ratio = num((r.get("change") or {}).get("ratio"))
            lanes.append(Lane(" ".join(map(str, r.get("key") or [])), new,
                              (f"x{ratio:.3f} " if ratio else "") + str(r.get("latency", "")),
                              other=base,
                              row_id=" ".join(map(str, r.get("key") or []))))
    if lanes:
        page.add("latency distributions, base and new", svg.distributions(
            lanes, "raw samples of base (grey) and new (blue)", other_label="base",
            main_label="new"))
    else:
        page.add("latency distributions, base and new", '<p class="muted">This comparison '
                 "file has no raw samples (written by <code>compare --json</code>); "
                 "<code>compare --html</code> draws them from the results files.</p>")
    extra = [f"only in {c.get('base')}: {' '.join(map(str, k))}" for k in c.get("only_base") or []]
    extra += [f"only in {c.get('new')}: {' '.join(map(str, k))}" for k in c.get("only_new") or []]
    extra += [f"not compared: {' '.join(map(str, k))}: {why}"
              for k, why in (c.get("skipped") or []) if isinstance(k, list)]
    extra += [f"note: {' '.join(map(str, r.get('key') or []))}: {n}" for r in rows
              for n in r.get("notes") or []]
    extra += [f"note: {n}" for n in c.get("notes") or []]
    page.add("not compared and notes", notes(extra))
    for label, doc in (c.get("machines") or {}).items():
        page.add(f"machine ({label})", machine_block(doc))


# ------------------------------------------------------------------------------ profile


def profile_sections(page: Page, p: dict[str, Any], source: str) -> None:
    t, m, v = p.get("target") or {}, p.get("model") or {}, p.get("verdict") or {}
    choices = p.get("choices") or []
    chosen = next((ch for ch in choices if ch.get("policy") == v.get("policy")), None)
    fits = bool(v.get("fits"))
    head = (f"{'FITS' if fits else 'DOES NOT FIT'} {t.get('name')}"
            + (f" with {chosen.get('label')}: flash {fmt_bytes(chosen.get('flash_needed'))}, "
               f"RAM {fmt_bytes(chosen.get('ram_needed'))}, estimated "
               f"{_f(chosen.get('estimated_ms'), '{:.2f}')} ms" if chosen else ""))
    page.add("verdict", f'<div class="verdict {"pass" if fits else "fail"}">{esc(head)}</div>'
             + kv([("model", f"{m.get('name')} ({m.get('kind')}, {m.get('arch')})"),
                   ("file", source), ("input", "x".join(map(str, m.get("input_shape") or []))),
                   ("parameters", f"{m.get('params'):,}" if isinstance(m.get("params"), int)
                    else None),
                   ("weights nonzero", f"{m.get('weight_nonzeros')} of "
                    f"{m.get('weight_entries')} ({_f(m.get('weight_sparsity'), '{:.1%}')} "
                    "sparse)"),
                   ("MACs", f"{m.get('dense_macs')} dense, {m.get('sparse_macs')} sparse")]))
    flash, ram = num(t.get("flash_bytes")), num(t.get("ram_bytes"))
    page.add("encodings: flash, RAM, estimated latency", table(
        ["encoding", "weights", "flash needed", "RAM needed", "flash margin", "RAM margin",
         "fits", "estimated ms"],
        [[ch.get("label"), fmt_bytes(ch.get("weight_bytes")), fmt_bytes(ch.get("flash_needed")),
          fmt_bytes(ch.get("ram_needed")), fmt_bytes(ch.get("flash_margin")),
          fmt_bytes(ch.get("ram_margin")), "yes" if ch.get("fits") else "no",
          _f(ch.get("estimated_ms"), "{:.2f}")] for ch in choices],
        numeric=lambda j: 1 <= j <= 5 or j == 7,
        cell_class=lambda i, j, c: ("ok" if c == "yes" else "bad") if j == 6 else "")
        + f'<p class="muted">{esc(p.get("estimate_note") or "")}</p>'
        + svg.hbars([Bar(ch.get("label", ""), num(ch.get("flash_needed")),
                         fmt_bytes(ch.get("flash_needed")),
                         GOOD if flash is None or num(ch.get("flash_needed")) <= flash else BAD)
                     for ch in choices if num(ch.get("flash_needed")) is not None],
                    "flash needed per encoding", "flash bytes", ref=flash,
                    ref_label=f"flash {fmt_bytes(flash)}" if flash else "",
                    cls="flash", byte_axis=True)
        + svg.hbars([Bar(ch.get("label", ""), num(ch.get("ram_needed")),
                         fmt_bytes(ch.get("ram_needed")),
                         GOOD if ram is None or num(ch.get("ram_needed")) <= ram else BAD)
                     for ch in choices if num(ch.get("ram_needed")) is not None],
                    "RAM needed per encoding", "RAM bytes", ref=ram,
                    ref_label=f"RAM {fmt_bytes(ram)}" if ram else "",
                    cls="ram", byte_axis=True))
    totals = p.get("totals") or {}
    labels = p.get("encodings") or {}
    page.add("model weights in each encoding", svg.hbars(
        [Bar(labels.get(e, e), num(b), fmt_bytes(b), svg.colour(i))
         for i, (e, b) in enumerate(totals.items()) if num(b) is not None],
        "weight bytes of the whole model with one encoding everywhere", "bytes",
        cls="size", byte_axis=True))
    layers = p.get("layers") or []
    encs = list(totals) or sorted({e for layer in layers for e in layer.get("bytes") or {}})
    page.add("layers: exact bytes per encoding (best per layer highlighted)", table(
        ["layer", "shape", "nonzeros", "sparsity"] + [labels.get(e, e) for e in encs],
        [[layer.get("name"), f"{layer.get('rows')}x{layer.get('cols')}",
          f"{layer.get('nonzeros'):,}" if isinstance(layer.get("nonzeros"), int) else "-",
          _f(layer.get("sparsity"), "{:.1%}")]
         + [f"{(layer.get('bytes') or {}).get(e):,}"
            if isinstance((layer.get("bytes") or {}).get(e), int) else "-" for e in encs]
         for layer in layers],
        numeric=lambda j: j >= 2,
        cell_class=lambda i, j, c: "best" if j >= 4 and encs[j - 4] == layers[i].get("best")
        else ""))
    arena = p.get("arena") or {}
    host = p.get("host") or {}
    build = p.get("build") or {}
    page.add("arena, host and build", kv([
        ("activation arena", f"{fmt_bytes(arena.get('bytes'))} for "
         f"{len(arena.get('buffers') or [])} buffers (lower bound "
         f"{fmt_bytes(arena.get('lower_bound'))}; int8 activations "
         f"{fmt_bytes(arena.get('int8_activations_bytes'))})" if arena else None),
        ("measured on this host", f"p50 {_f(host.get('p50_ms'))} ms, p90 "
         f"{_f(host.get('p90_ms'))} ms over {host.get('samples')} calls ({host.get('impl')})"
         if host else None),
        *[(f"build: {k}", val if isinstance(val, (str, int, float, bool)) else str(val))
          for k, val in build.items() if k not in ("log", "stdout", "stderr")]])
        + notes(p.get("notes") or []))
    page.add("target", kv([(k, ", ".join(map(str, val)) if isinstance(val, list) else val)
                           for k, val in t.items() if not isinstance(val, dict)]))


# ------------------------------------------------------------------------------ the page


def kind(doc: dict[str, Any]) -> str:
    """results, sweep, compare or profile (callers validate first)."""
    if doc.get("schema") == "sparsebench-profile":
        return "profile"
    if doc.get("schema") == "sparsebench-results":
        return "sweep" if isinstance(doc.get("sweep"), dict) else "results"
    return "compare"


def render(docs: Sequence[tuple[str, dict[str, Any]]], title: str | None = None) -> str:
    page = Page()
    kinds = []
    for source, doc in docs:
        k = kind(doc)
        kinds.append(k)
        if k == "profile":
            profile_sections(page, doc, source)
        elif k == "sweep":
            sweep_sections(page, doc, source)
        elif k == "compare":
            compare_sections(page, doc, source)
        else:
            results_sections(page, doc, source)
    names = {"results": "measure", "sweep": "sweep", "compare": "compare", "profile": "profile"}
    title = title or "sparsebench " + " + ".join(dict.fromkeys(names[k] for k in kinds))
    from sparsebench import __version__

    made = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    subtitle = (", ".join(s for s, _ in docs) + f" · report by sparsebench {__version__}, {made}")
    return page.html(title, subtitle)
