"""Render a profile: terminal tables (rich), Markdown; the same rows for both."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sparsebench.embedded.encodings import ENCODINGS, encoding_label
from sparsebench.embedded.lowering import Op
from sparsebench.embedded.summary import Profile, fmt_bytes, fmt_count, fmt_seconds, percent


@dataclass
class Block:
    title: str
    headers: list[str]
    rows: list[list[str]]
    footer: list[list[str]]


def _shape(s: tuple[int, ...]) -> str:
    return "x".join(map(str, s)) or "scalar"


def _op_label(op: Op) -> str:
    a = op.attrs
    if op.kind == "conv":
        kh, kw = a["kernel"]
        text = f"conv {kh}x{kw}"
        if a["stride"] != (1, 1):
            text += f" s{a['stride'][0]}"
        if a["padding"] not in ((0, 0), "valid"):
            text += f" p{a['padding'][0] if isinstance(a['padding'], tuple) else a['padding']}"
        if a["groups"] != 1:
            text += f" g{a['groups']}"
    elif op.kind in ("maxpool", "avgpool"):
        text = f"{op.kind} {a['kernel'][0]}x{a['kernel'][1]}"
    elif op.kind == "other":
        text = op.source
    else:
        text = op.kind
    if any("BatchNorm" in f for f in op.fused):
        text += "+bn"
    return text + (f"+{op.act}" if op.act else "")


def header(p: Profile) -> list[str]:
    m, t = p.model, p.target
    name = m.get("name", "model")
    kind = ", ".join(str(v) for v in (m.get("kind"), m.get("arch")) if v)
    sparsity = m["weight_sparsity"]
    return [f"[bold]{name}[/] ({kind}) on [bold]{t.name}[/]: {t.description}",
            f"input {_shape(tuple(m['input_shape']))} | {m['params']:,} params, "
            f"{m['weight_nonzeros']:,} of {m['weight_entries']:,} weights nonzero "
            f"({100 * sparsity:.1f}% sparse) | {fmt_count(m['dense_macs'])} dense MACs, "
            f"{fmt_count(m['sparse_macs'])} sparse MACs per inference"]


def layer_block(p: Profile) -> Block:
    rows = []
    by_key = {r.name: r for r in p.layers}
    for op in p.graph.ops:
        row = by_key.get(op.weight_key or op.name) if op.weight is not None else None
        weights = ""
        if row is not None:
            enc = p.verdict.per_layer[row.name]
            weights = f"{encoding_label(enc, p.block)} {row.sizes[enc]:,} B"
        sparsity = (percent(op.weight.size - op.nnz, op.weight.size)
                    if op.weight is not None else "")
        rows.append([str(op.index), op.name, _op_label(op),
                     f"{_shape(op.in_shape)} -> {_shape(op.out_shape)}",
                     f"{op.params:,}" if op.params else "",
                     f"{op.nnz:,}" if op.weight is not None else "", sparsity,
                     fmt_count(op.dense_macs) if op.dense_macs else "",
                     fmt_count(op.sparse_macs) if op.weight is not None else "",
                     fmt_bytes(4 * op.out_numel), weights])
    title = ("layers in execution order (BatchNorm folded, ReLU fused; flatten/view/dropout are "
             f"free aliases); weights: {p.verdict.label}")
    return Block(title, ["#", "layer", "op", "in -> out", "params", "nonzero", "sparsity",
                         "dense MACs", "sparse MACs", "out act (fp32)", "weights"], rows, [])


def storage_block(p: Profile) -> Block:
    encs = list(ENCODINGS)
    rows = []
    for r in p.layers:
        cells = [r.name, f"{r.stats.rows}x{r.stats.cols}",
                 percent(r.stats.numel - r.stats.nnz, r.stats.numel)]
        for e in encs:
            b = r.sizes[e]
            cells.append("n/a" if b is None else f"{b:,}" + (" *" if e == r.best else ""))
        rows.append(cells)
    footer = []
    if p.other_bytes:
        footer.append(["other constants", "", ""] + [f"{p.other_bytes:,}"] * len(encs))
    totals = p.totals()
    footer.append(["total", "", ""] + ["n/a" if totals[e] is None else f"{totals[e]:,}"
                                       for e in encs])
    title = ("weight storage in bytes, exact (values, indices, int32 row pointers; int8: per-row "
             "int32 multiplier + int8 shift, int32 bias; fp32 bias; each array 4-byte aligned); "
             "* = cheapest for the layer")
    return Block(title, ["layer", "matrix", "sparsity"] + [encoding_label(e, p.block)
                                                           for e in encs], rows, footer)


def verdict_block(p: Profile) -> Block:
    t = p.target
    rows = []
    for c in p.choices:
        flash = "in RAM" if c.flash_needed is None else fmt_bytes(c.flash_needed)
        fmargin = "" if c.flash_margin is None else \
            f"{fmt_bytes(c.flash_margin)} ({percent(c.flash_margin, t.flash_bytes or 0)})"
        rows.append([c.label + (" (verdict)" if c is p.verdict else ""),
                     fmt_bytes(c.weight_bytes), flash, fmargin, fmt_bytes(c.ram_needed),
                     f"{fmt_bytes(c.ram_margin)} ({percent(c.ram_margin, t.ram_bytes)})",
                     "yes" if c.fits else "NO", _estimate_cell(c)])
    flash_cap = "no limit" if t.flash_bytes is None else fmt_bytes(t.flash_bytes)
    calibrated = p.verdict.est_instructions is not None
    what = (f"ESTIMATED instructions ({p.verdict.est_source}; ms at 1 instruction/cycle, "
            f"{t.clock_mhz:g} MHz)" if calibrated
            else f"ESTIMATED latency at {t.clock_mhz:g} MHz (roofline)")
    title = (f"memory on {t.name} (flash {flash_cap}, RAM {fmt_bytes(t.ram_bytes)}; weights in "
             f"{t.weights_in}; model data only, the runtime's code and stack come on top) and "
             f"{what}, 1 core, batch 1")
    return Block(title, ["weights as", "weights", "flash needed", "flash margin", "RAM needed",
                         "RAM margin", "fits",
                         "est. instructions" if calibrated else "est. latency"], rows, [])


def _estimate_cell(c: Any) -> str:
    if c.est_instructions is None:
        return fmt_seconds(c.est_seconds)
    return f"{fmt_count(c.est_instructions)} ({fmt_seconds(c.est_seconds)})"


def estimate_line(p: Profile) -> str:
    """The verdict's estimate with what it is (calibrated instructions or the roofline)."""
    t, v = p.target, p.verdict
    if v.est_instructions is None:
        return (f"latency: {fmt_seconds(v.est_seconds)} ESTIMATED on {t.name} (roofline from "
                f"the target's cycles-per-MAC and bandwidth figures, not a measurement)")
    from sparsebench.embedded.estimate import target_calibration

    cal = target_calibration(t)
    stale = " [bold red]stale: the C kernels changed since the fit[/]" \
        if cal is not None and cal.stale else ""
    return (f"estimate for the verdict's encodings ({v.label}): {v.est_instructions:,.0f} "
            f"instructions ESTIMATED on {t.name} "
            f"({v.est_source}, fitted on QEMU counts of single-layer images{stale}); "
            f"{fmt_seconds(v.est_seconds)} at 1 instruction/cycle and {t.clock_mhz:g} MHz "
            f"(instructions, not cycles: flash wait states and stalls add, dual issue saves; "
            f"not a measurement)")


def summary_lines(p: Profile) -> list[str]:
    a = p.arena
    lines = [f"arena: {a.size:,} B for {len(a.buffers)} activation buffers (first-fit by size "
             f"over lifetimes, 16-byte aligned, as TFLite Micro; lower bound {a.lower_bound:,} B"
             f"; with int8 activations {p.arena_int8:,} B)"]
    est = estimate_line(p)
    if p.host:
        est += f"; measured on this host: {p.host['p50_ms']:.3f} ms p50 ({p.host['impl']})"
    lines.append(est)
    acc = accuracy_line(p)
    if acc:
        lines.append(acc)
    lines.extend(f"note: {n}" for n in p.notes)
    if p.build:
        lines.append(measured_line(p))
    lines.append(verdict_line(p))
    return lines


def measured_line(p: Profile) -> str:
    """The fit of the real cross-built image (export-c encodings, runtime, test vector)."""
    t, b = p.target, p.build or {}
    ram = b["ram"] + (b.get("stack_reserved") or 0)
    if t.weights_in == "ram":
        ram += b["flash"]
    parts = []
    if t.flash_bytes is not None and t.weights_in == "flash":
        parts.append(f"flash {fmt_bytes(b['flash'])} of {fmt_bytes(t.flash_bytes)} (margin "
                     f"{fmt_bytes(t.flash_bytes - b['flash'])})")
    stack = f" (incl. {fmt_bytes(b['stack_reserved'])} reserved stack)" \
        if b.get("stack_reserved") else ""
    parts.append(f"RAM {fmt_bytes(ram)}{stack} of {fmt_bytes(t.ram_bytes)} (margin "
                 f"{fmt_bytes(t.ram_bytes - ram)})")
    fits = ram <= t.ram_bytes and (t.flash_bytes is None or t.weights_in == "ram"
                                   or b["flash"] <= t.flash_bytes)
    return ("measured image (export-c encodings + runtime + test vector): " + "; ".join(parts)
            + (" -> fits" if fits else " -> [bold red]does not fit[/]"))


def verdict_line(p: Profile) -> str:
    t, v = p.target, p.verdict
    parts = []
    if v.flash_needed is not None and t.flash_bytes is not None:
        parts.append(f"flash {fmt_bytes(v.flash_needed)} of {fmt_bytes(t.flash_bytes)} "
                     f"(margin {fmt_bytes(v.flash_margin)}, "
                     f"{percent(v.flash_margin or 0, t.flash_bytes)})")
    parts.append(f"RAM {fmt_bytes(v.ram_needed)} of {fmt_bytes(t.ram_bytes)} (margin "
                 f"{fmt_bytes(v.ram_margin)}, {percent(v.ram_margin, t.ram_bytes)})")
    word = "[bold green]FITS[/]" if v.fits else "[bold red]DOES NOT FIT[/]"
    text = f"verdict: {word} {t.name} with {v.label}: " + "; ".join(parts)
    if not v.fits:
        short = []
        if v.flash_margin is not None and v.flash_margin < 0:
            short.append(f"flash short by {fmt_bytes(-v.flash_margin)}")
        if v.ram_margin < 0:
            short.append(f"RAM short by {fmt_bytes(-v.ram_margin)}")
        text += " -> " + ", ".join(short)
    return text


def build_block(p: Profile) -> Block | None:
    b = p.build
    if not b:
        return None
    rows = [
        ["flash bytes (text + rodata + data init)", f"{b['analytic_flash']:,}",
         f"{b['flash']:,}", f"{b['flash'] - b['analytic_flash']:+,}",
         f"weights {b['weights_measured']:,} B (analytic {b['weights_analytic']:,} B), test "
         f"vector {b['test_vector']:,} B, runtime code+consts {b['runtime_flash']:,} B"],
        ["RAM bytes (data + bss)", f"{b['analytic_ram']:,}", f"{b['ram']:,}",
         f"{b['ram'] - b['analytic_ram']:+,}",
         f"arena {b['arena_measured']:,} B (analytic {b['arena_analytic']:,} B), runtime "
         f"{b['runtime_ram']:,} B" + (f"; stack used {b['stack_used']:,} of "
                                      f"{b['stack_reserved']:,} B reserved"
                                      if b.get("stack_used") is not None else "")],
    ]
    if b.get("instructions") is not None:
        est_i, est_c = b.get("estimated_instructions"), b.get("estimated_cycles")
        analytic, diff, source = "", "", ""
        if est_i is not None:  # short cells: the compact table keeps numbers whole
            analytic = f"{est_i:,.0f} est."
            error = 100 * (est_i / b["instructions"] - 1)
            diff = f"{b['instructions'] - est_i:+,.0f} ({error:+.1f}%)"
            source = f"estimate from {b.get('estimate_source', '')}; "
        elif est_c:
            analytic = f"{est_c:,.0f} est. cycles"
            source = "estimate: roofline cycles; "
        rows.append(["instructions per inference", analytic, f"{b['instructions']:,}", diff,
                     source + b.get("instructions_note", "")])
    title = (f"cross-build for {p.target.name}: {b['compiler']} -> {b['runner']}; encodings "
             f"{b['encodings']}; " + check_text(b))
    return Block(title, ["", "analytic", "measured", "difference", "breakdown"], rows, [])


def check_text(b: dict[str, Any]) -> str:
    """How the emulated output compares: bit-exact (int8) or within the tolerance (fp32)."""
    if b.get("int8"):
        return (f"emulated int8 output {'bit-exact with' if b['bit_exact'] else 'DIFFERS from'} "
                f"the Python integer reference ({b['outputs_equal']}/{b['outputs']} outputs "
                f"equal); dequantized, max abs error {b['max_abs_err']:.3g} vs torch fp32")
    return (f"emulated output max abs error {b['max_abs_err']:.3g} vs torch "
            f"({'OK' if b['output_ok'] else 'MISMATCH'}, tolerance {b['tolerance']:g})")


def accuracy_line(p: Profile) -> str | None:
    a = p.accuracy
    if not a:
        return None
    return (f"accuracy on the {a['dataset']} test set ({a['samples']:,} images): fp32 "
            f"{a['fp32']:.2f}%, int8 {a['int8']:.2f}% ({a['int8'] - a['fp32']:+.2f} points; "
            f"full-integer reference of the C runtime, calibrated on {a['calibration']}; "
            f"same class as fp32 for {a['agreement']:.2f}%)")


def blocks(p: Profile) -> list[Block]:
    out = [layer_block(p), storage_block(p), verdict_block(p)]
    b = build_block(p)
    if b:
        out.append(b)
    return out


def compact_blocks(p: Profile) -> tuple[list[tuple[Block, tuple[int, ...]]], list[str]]:
    """The tables of ``blocks`` in the columns that fit 80: (block, numeric columns) pairs and
    the notes that go under them. The full tables (every encoding of every layer, inputs,
    MACs, breakdowns) are the ``--wide``, Markdown, JSON and HTML ones."""
    out: list[tuple[Block, tuple[int, ...]]] = []
    lay = layer_block(p)
    rows = [[r[0], r[1], r[2], r[3].rpartition("-> ")[2], r[4], r[6], r[8],
             r[10].replace(" ", "\n", 1)] for r in lay.rows]
    out.append((Block(f"layers in execution order; weights: {p.verdict.label}",
                      ["#", "layer", "op", "out", "params", "sparsity", "sparse\nMACs",
                       "weights"], rows, []), (0, 4, 5, 6)))
    rows = []
    best_total = 0
    for r in p.layers:
        best = r.sizes[r.best]
        best_total += best
        rows.append([r.name, f"{r.stats.rows}x{r.stats.cols}",
                     percent(r.stats.numel - r.stats.nnz, r.stats.numel),
                     f"{r.sizes['fp32-dense']:,}", encoding_label(r.best, p.block), f"{best:,}"])
    totals = p.totals()
    footer = [["other constants", "", "", f"{p.other_bytes:,}", "", f"{p.other_bytes:,}"]] \
        if p.other_bytes else []
    footer.append(["total", "", "", f"{totals['fp32-dense']:,}", "",
                   f"{best_total + p.other_bytes:,}"])
    out.append((Block("weight storage in bytes, exact: dense and the cheapest encoding per "
                      "layer", ["layer", "matrix", "sparsity", "fp32-dense", "cheapest",
                                "bytes"], rows, footer), (2, 3, 5)))
    rows = [[encoding_label(e, p.block), "n/a" if totals[e] is None else f"{totals[e]:,}"]
            for e in ENCODINGS]
    out.append((Block("the whole model in one encoding (bytes, other constants included)",
                      ["encoding", "total"], rows, []), (1,)))
    ver = verdict_block(p)
    rows = [[r[0], r[2], r[3], r[4], r[5], r[6], r[7]] for r in ver.rows]
    out.append((Block(f"memory on {p.target.name} and ESTIMATED latency (1 core, batch 1)",
                      ["weights as", "flash\nneeded", "flash margin", "RAM\nneeded",
                       "RAM margin", "fits", "est.\nlatency"], rows, []), (1, 3, 5, 6)))
    notes = []
    b = build_block(p)
    if b and p.build:
        title = f"cross-build for {p.target.name}: {p.build['compiler']} -> {p.build['runner']}"
        out.append((Block(title, b.headers[:4], [r[:4] for r in b.rows], []), (1, 2, 3)))
        notes = [check_text(p.build), f"encodings: {p.build['encodings']}"]
        notes += [f"{r[0]}: {r[4]}" for r in b.rows if r[4]]
    return out, notes


def print_profile(p: Profile, con: Any, wide: bool = False) -> None:
    """The report on the terminal: the tables that fit the console, or every column
    (``wide``); the lines around them wrapped at its width."""
    from sparsebench.ui import print_notes, print_table, table

    print_notes(con, header(p))
    if wide:
        for blk in blocks(p):
            tbl = table(blk.headers, blk.rows, blk.title, heavy=True)
            for row in blk.footer:
                tbl.add_row(*row, style="bold")
            print_table(con, tbl, wide=True)
        notes: list[str] = []
    else:
        pairs, notes = compact_blocks(p)
        for blk, numeric in pairs:
            tbl = table(blk.headers, blk.rows, blk.title, numeric)
            for row in blk.footer:
                tbl.add_row(*row, style="bold")
            print_table(con, tbl)
    print_notes(con, notes + summary_lines(p))


def _strip(text: str) -> str:
    import re

    return re.sub(r"\[/?[a-z ]*\]", "", text)


def markdown(p: Profile) -> str:
    """The whole report as Markdown."""
    out = [f"# Profile: {p.model.get('name', 'model')} on {p.target.name}", ""]
    out += [_strip(line) + "  " for line in header(p)] + [""]
    for blk in blocks(p):
        out += [f"**{blk.title}**", "", "| " + " | ".join(blk.headers) + " |",
                "|" + "---|" * len(blk.headers)]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"
                for row in blk.rows]
        out += ["| " + " | ".join(f"**{c}**" if c else "" for c in row) + " |"
                for row in blk.footer]
        out.append("")
    out += [f"- {_strip(line)}" for line in summary_lines(p)]
    return "\n".join(out) + "\n"
