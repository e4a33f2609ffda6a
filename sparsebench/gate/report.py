"""A comparison as a terminal table, as Markdown (a pull-request comment) and as JSON."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from sparsebench.gate.compare import Comparison, RowResult

COLUMNS = ("model", "format", "backend", "batch", "threads", "base p50 ms", "new p50 ms",
           "new/base", "CI", "p", "latency", "weights", "peak RSS", "gate")


def _p50_ms(row: dict[str, Any]) -> str:
    p50 = (row.get("latency_ms") or {}).get("p50")
    return "-" if p50 is None else f"{p50:.3f}"


def _bytes_delta(delta: int | None, mib: bool = False) -> str:
    if delta is None:
        return "-"
    if delta == 0:
        return "="
    if mib:
        return (f"{delta / 1024 ** 2:+.1f} MiB" if abs(delta) >= 0.1 * 1024 ** 2
                else f"{delta / 1024:+.0f} KiB")
    return f"{delta:+,} B"


def _p(p: float) -> str:
    return "<1e-4" if p < 1e-4 else f"{p:.2g}"


def cells(c: Comparison, r: RowResult) -> list[str]:
    ch = r.change
    key = r.key if c.mode == "files" else (r.new["model"], *r.key)
    return [str(key[0]), str(key[1]), str(key[2]), str(key[3]), str(key[4]), _p50_ms(r.base),
            _p50_ms(r.new), f"x{ch.ratio:.3f}" if ch else "-",
            f"[{ch.low:.3f}, {ch.high:.3f}]" if ch else "-", _p(ch.p_value) if ch else "-",
            r.latency, _bytes_delta(r.weight_delta), _bytes_delta(r.rss_delta, mib=True),
            ("FAIL: " + "; ".join(r.failures)) if r.failures else "ok"]


def rule_text(c: Comparison) -> str:
    cfg = c.config
    tests = sorted({r.change.test for r in c.rows if r.change})
    blocks = sorted({min(r.change.blocks) for r in c.rows if r.change}) or [0]
    t = cfg.threshold
    size = {"bound": f"a CI reaching {t:.0%} and a ratio past {t / 2:.0%}",
            "ci": f"a CI reaching {t:.0%}", "point": f"a ratio past {t:.0%}"}[cfg.rule]
    return (f"latency verdicts need p < {cfg.alpha:g} ({', '.join(tests)}; "
            f"{blocks[0] if len(blocks) == 1 else f'{blocks[0]}-{blocks[-1]}'} blocks) and "
            f"{size} (faster: the same below 1 on a log scale); CI = {1 - cfg.alpha:.0%} block "
            f"bootstrap of the ratio of medians; weights compare exactly; peak RSS fails beyond "
            f"+{cfg.rss_tolerance:.0%} and +{cfg.rss_min_bytes / 1024 ** 2:g} MiB")


def summary(c: Comparison) -> str:
    bad, unjudged = c.regressions, c.unjudged
    counts = {v: sum(r.latency == v for r in c.rows) for v in ("slower", "faster", "unchanged")}
    if bad or unjudged:
        head = "FAIL: " + ", ".join(
            part for part in (f"{len(bad)} of {len(c.rows)} rows regressed" if bad else "",
                              f"{len(unjudged)} of {len(c.rows)} rows not judged (not ok or too "
                              "few samples; --allow-missing passes them)" if unjudged else "")
            if part)
    else:
        head = f"pass: {len(c.rows)} rows compared, no regression"
    return (f"{head} (latency: {counts['slower']} slower, {counts['faster']} faster, "
            f"{counts['unchanged']} unchanged)")


def _keys_line(keys: list[tuple], limit: int = 3) -> str:
    shown = ", ".join(" ".join(map(str, k)) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _extras(c: Comparison) -> list[str]:
    out = []
    for label, keys in ((c.base_label, c.only_base), (c.new_label, c.only_new)):
        if keys:
            out.append(f"only in {label}: {len(keys)} row{'s' * (len(keys) != 1)} "
                       f"({_keys_line(keys)}; all listed in --json)")
    for k, reason in c.skipped:
        out.append(f"not compared: {' '.join(map(str, k))}: {reason}")
    for r in c.rows:
        for note in r.notes:
            out.append(f"note: {' '.join(map(str, r.key))}: {note}")
    return out + [f"note: {n}" for n in c.notes]


def _title(c: Comparison) -> str:
    if c.mode == "files":
        return f"sparsebench compare {c.base_label} -> {c.new_label}"
    base = c.rows[0].base["model"] if c.rows else "base"
    return f"sparsebench compare, A/B ({c.mode}): {base} -> new"


COMPACT = ("execution", "new/base", "CI", "latency", "weights", "peak RSS", "gate")


def compact_lines(c: Comparison) -> tuple[list[list[str]], list[str]]:
    """The comparison in the columns of ``COMPACT`` (fits 80 columns): rows grouped under a
    model line, batch and threads in the execution's name when they vary, gate failures as
    numbered notes. Returns (lines, notes)."""
    from rich.markup import escape

    keyed = [(cells(c, r), r) for r in c.rows]
    vary = {i: len({k[i] for k, _ in keyed}) > 1 for i in (3, 4)}
    notes: list[str] = []
    lines: list[list[str]] = []
    model = None
    colors = {"slower": "red", "faster": "green"}
    for k, r in keyed:
        if k[0] != model:
            model = k[0]
            lines.append([f"[bold]{escape(model)}[/]"] + [""] * (len(COMPACT) - 1))
        name = f"{k[1]}/{k[2]}" + (f" b{k[3]}" if vary[3] else "") + (f" t{k[4]}" if vary[4]
                                                                       else "")
        gate = "ok"
        if r.failures:
            text = "; ".join(r.failures)
            if text not in notes:
                notes.append(text)
            gate = f"[bold red]FAIL [{notes.index(text) + 1}][/]"
        latency = f"[{colors[r.latency]}]{k[10]}[/]" if r.latency in colors else k[10]
        lines.append(["  " + escape(name), k[7], escape(k[8]), latency, k[11], k[12], gate])
    return lines, [f"[{i}] {escape(t)}" for i, t in enumerate(notes, 1)]


def print_comparison(c: Comparison, console: Any, wide: bool = False) -> None:
    """The table (``wide``: every column, failures in full), the notes, the rule, the verdict."""
    from rich.markup import escape

    from sparsebench.ui import print_notes, print_table, table

    title = _title(c)
    ci = f"{1 - c.config.alpha:.0%} CI"
    if wide:
        colors = {"slower": "red", "faster": "green"}
        lines = []
        for r in c.rows:
            line = [escape(x) for x in cells(c, r)]
            if r.latency in colors:
                line[10] = f"[{colors[r.latency]}]{line[10]}[/]"
            line[-1] = f"[bold red]{line[-1]}[/]" if r.failures else line[-1]
            lines.append(line)
        print_table(console, table([ci if h == "CI" else h for h in COLUMNS], lines, title,
                                   (3, 4, 5, 6, 7, 9, 11, 12), heavy=True), wide=True)
        notes: list[str] = []
    else:
        lines, notes = compact_lines(c)
        print_table(console, table([ci if h == "CI" else h for h in COMPACT], lines, title,
                                   (1, 4, 5)))
    print_notes(console, notes + [escape(line) for line in _extras(c)] + [rule_text(c)])
    console.print(("[bold red]" if c.exit_code else "[bold green]") + summary(c) + "[/]",
                  soft_wrap=False)


def markdown(c: Comparison) -> str:
    header = [f"{1 - c.config.alpha:.0%} CI" if h == "CI" else h for h in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in c.rows:
        line = cells(c, r)
        if r.failures:
            line[-1] = f"**{line[-1]}**"
        lines.append("| " + " | ".join(x.replace("|", "/") for x in line) + " |")
    extras = "".join(f"- {x}\n" for x in _extras(c))
    icon = ":x:" if c.exit_code else ":white_check_mark:"
    return (f"### {icon} {_title(c)}\n\n**{summary(c)}**\n\n" + "\n".join(lines) + "\n\n"
            + (extras + "\n" if extras else "") + f"<sub>{rule_text(c)}</sub>\n")


def to_json(c: Comparison) -> dict[str, Any]:
    """The comparison without raw samples."""
    return {"schema": "sparsebench-compare", "schema_version": 1,
            "base": c.base_label, "new": c.new_label, "mode": c.mode, "config": asdict(c.config),
            "exit_code": c.exit_code, "summary": summary(c),
            "rows": [{"key": list(r.key), "latency": r.latency,
                      "change": asdict(r.change) if r.change else None,
                      "base_p50_ms": (r.base.get("latency_ms") or {}).get("p50"),
                      "new_p50_ms": (r.new.get("latency_ms") or {}).get("p50"),
                      "weight_delta": r.weight_delta, "rss_delta": r.rss_delta,
                      "regressions": r.regressions, "unjudged": r.unjudged,
                      "notes": r.notes} for r in c.rows],
            "only_base": [list(k) for k in c.only_base], "only_new": [list(k) for k in c.only_new],
            "skipped": [[list(k), why] for k, why in c.skipped], "notes": c.notes}
