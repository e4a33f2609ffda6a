"""Inline SVG charts as strings: no dependency, no script, no external resource.

Every chart is a complete ``<svg>`` element with a ``<title>`` per mark (the browser shows it on
hover). Scales are linear or log10; ticks are 1-2-5 steps.
"""

from __future__ import annotations

import html
import math
from bisect import bisect_right
from typing import Iterable, Sequence

PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
           "#ff9da7", "#9c755f", "#bab0ac")
GOOD, BAD, NEUTRAL, MUTED = "#2e7d32", "#c62828", "#4e79a7", "#9e9e9e"
FONT = 11


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def fmt_num(v: float, digits: int = 3) -> str:
    """A compact tick label: 0.05, 1, 250, 1.2k, 3M."""
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:g}M"
    if a >= 1e4:
        return f"{v / 1e3:g}k"
    return f"{v:.{digits}g}"


class Scale:
    """Maps a data domain onto pixels, linearly or on a log10 axis."""

    def __init__(self, lo: float, hi: float, a: float, b: float, log: bool = False) -> None:
        if log:
            lo, hi = max(lo, 1e-12), max(hi, 1e-12)
        if not hi > lo:  # a single value: widen the domain around it
            lo, hi = (lo / 1.5, hi * 1.5) if log else (lo - 1.0, hi + 1.0)
        self.lo, self.hi, self.a, self.b, self.log = lo, hi, a, b, log

    def _t(self, v: float) -> float:
        return math.log10(max(v, 1e-12)) if self.log else v

    def __call__(self, v: float) -> float:
        t0, t1 = self._t(self.lo), self._t(self.hi)
        return self.a + (self._t(v) - t0) / (t1 - t0) * (self.b - self.a)

    def ticks(self, n: int = 6) -> list[float]:
        if self.log:
            out = []
            for e in range(math.floor(math.log10(self.lo)), math.ceil(math.log10(self.hi)) + 1):
                for m in (1, 2, 5):
                    v = m * 10.0 ** e
                    if self.lo * 0.999 <= v <= self.hi * 1.001:
                        out.append(v)
            decades = math.log10(self.hi / self.lo)
            if decades > 2.5:  # too crowded: decades only
                out = [v for v in out if f"{v:.0e}".startswith("1")]
            return out or [self.lo, self.hi]
        span = self.hi - self.lo
        step = 10 ** math.floor(math.log10(span / n))
        for m in (1, 2, 5, 10):
            if span / (step * m) <= n:
                step *= m
                break
        first = math.ceil(self.lo / step) * step
        return [first + i * step for i in range(int((self.hi - first) / step + 1e-9) + 1)]


def label_width(labels: Iterable[str], least: int = 120, most: int = 330) -> int:
    """Pixels for a column of left labels (about 6.3 px per character at 11 px)."""
    return max(least, min(most, 14 + math.ceil(6.3 * max((len(t) for t in labels), default=0))))


def clip(text: str, pixels: int) -> str:
    n = max(4, math.floor((pixels - 14) / 6.3 + 0.999))
    return text if len(text) <= n else text[:n - 1] + "\u2026"


def byte_unit(largest: float) -> tuple[float, str]:
    """The unit bytes are shown in on an axis: (divisor, suffix)."""
    for div, suffix in ((1024 ** 3, "GiB"), (1024 ** 2, "MiB"), (1024, "KiB")):
        if largest >= div:
            return float(div), suffix
    return 1.0, "B"


def _text(x: float, y: float, s: object, anchor: str = "start", size: int = FONT,
          cls: str = "", weight: str = "") -> str:
    extra = f' class="{cls}"' if cls else ""
    if weight:
        extra += f' font-weight="{weight}"'
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}"{extra}>'
            f"{esc(s)}</text>")


def _svg(width: float, height: float, body: Iterable[str], label: str, cls: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart {cls}" width="{width:.0f}" '
            f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img" '
            f'aria-label="{esc(label)}"><title>{esc(label)}</title>' + "".join(body) + "</svg>")


def _x_axis(scale: Scale, y: float, top: float, label: str, fmt=fmt_num) -> list[str]:
    out = [f'<line x1="{scale.a:.1f}" y1="{y:.1f}" x2="{scale.b:.1f}" y2="{y:.1f}" '
           'class="axis"/>']
    for t in scale.ticks():
        x = scale(t)
        out.append(f'<line x1="{x:.1f}" y1="{top:.1f}" x2="{x:.1f}" y2="{y:.1f}" class="grid"/>')
        out.append(_text(x, y + 13, fmt(t), "middle"))
    if label:
        out.append(_text((scale.a + scale.b) / 2, y + 28, label, "middle", cls="axis-label"))
    return out


def _y_axis(scale: Scale, x0: float, x1: float, label: str, fmt=fmt_num) -> list[str]:
    out = [f'<line x1="{x0:.1f}" y1="{scale.a:.1f}" x2="{x0:.1f}" y2="{scale.b:.1f}" '
           'class="axis"/>']
    for t in scale.ticks(5):
        y = scale(t)
        out.append(f'<line x1="{x0:.1f}" y1="{y:.1f}" x2="{x1:.1f}" y2="{y:.1f}" class="grid"/>')
        out.append(_text(x0 - 4, y + 4, fmt(t), "end"))
    if label:
        mid = (scale.a + scale.b) / 2
        out.append(f'<text x="12" y="{mid:.1f}" font-size="{FONT}" text-anchor="middle" '
                   f'class="axis-label" transform="rotate(-90 12 {mid:.1f})">{esc(label)}</text>')
    return out


# --------------------------------------------------------------------------------- histograms


def histogram(values: Sequence[float], lo: float, hi: float, bins: int) -> list[int]:
    """Counts of ``values`` in ``bins`` equal log10-width bins over [lo, hi]."""
    a, b = math.log10(lo), math.log10(hi)
    edges = [10 ** (a + (b - a) * i / bins) for i in range(1, bins)]
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, bisect_right(edges, v))] += 1
    return counts


class Lane:
    """One row of a distribution chart: a label and one or two sample sets (in ms)."""

    def __init__(self, label: str, samples: Sequence[float], note: str = "",
                 other: Sequence[float] | None = None, row_id: str = "") -> None:
        self.label, self.samples, self.note, self.other, self.row_id = (
            label, [s for s in samples if s > 0], note, other, row_id)


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    pos = q * (len(sorted_values) - 1)
    i = int(pos)
    j = min(i + 1, len(sorted_values) - 1)
    return sorted_values[i] + (sorted_values[j] - sorted_values[i]) * (pos - i)


def distributions(lanes: Sequence[Lane], title: str, bins: int = 60, width: int = 900,
                  other_label: str = "", main_label: str = "") -> str:
    """One histogram lane per execution on a shared log10 latency axis, with p50 (solid) and
    p90 (dashed) marks; ``Lane.other`` draws a second distribution behind (e.g. the base)."""
    left = label_width(ln.label for ln in lanes)
    right, lane_h, top = 150, 26, 24 if other_label else 8
    all_v = [v for ln in lanes for v in (*ln.samples, *(ln.other or ()))]
    if not all_v:
        return ""
    lo, hi = min(all_v), max(all_v)
    xs = Scale(lo, hi, left, width - right, log=True)
    lo, hi = xs.lo, xs.hi
    height = top + lane_h * len(lanes) + 36
    body: list[str] = []
    if other_label:
        body += [f'<rect x="{left}" y="6" width="10" height="10" fill="{MUTED}" opacity="0.6"/>',
                 _text(left + 14, 15, other_label),
                 f'<rect x="{left + 120}" y="6" width="10" height="10" fill="{NEUTRAL}"/>',
                 _text(left + 134, 15, main_label)]
    for i, ln in enumerate(lanes):
        y0 = top + i * lane_h
        base = y0 + lane_h - 4
        body.append(f'<g class="dist-lane" data-row="{esc(ln.row_id)}">')
        if i % 2:
            body.append(f'<rect x="0" y="{y0}" width="{width}" height="{lane_h}" '
                        'class="stripe"/>')
        body.append(_text(left - 8, base - 5, clip(ln.label, left), "end"))
        sets = [(ln.other, MUTED, 0.55), (ln.samples, NEUTRAL, 0.85)] if ln.other else [
            (ln.samples, NEUTRAL, 0.85)]
        for values, fill, opacity in sets:
            if not values:
                continue
            counts = histogram(values, lo, hi, bins)
            peak = max(counts)
            pts = [f"M{xs(lo):.1f},{base:.1f}"]
            for k, c in enumerate(counts):
                xa = xs(10 ** (math.log10(lo) + (math.log10(hi) - math.log10(lo)) * k / bins))
                xb = xs(10 ** (math.log10(lo) + (math.log10(hi) - math.log10(lo)) * (k + 1)
                               / bins))
                h = (lane_h - 7) * (c / peak) if peak else 0
                pts.append(f"L{xa:.1f},{base - h:.1f}L{xb:.1f},{base - h:.1f}")
            pts.append(f"L{xs(hi):.1f},{base:.1f}Z")
            s = sorted(values)
            p50, p90 = _quantile(s, 0.5), _quantile(s, 0.9)
            body.append(f'<path d="{"".join(pts)}" fill="{fill}" opacity="{opacity}">'
                        f"<title>{esc(ln.label)}: {len(s)} samples, min {s[0]:.4g} ms, p50 "
                        f"{p50:.4g} ms, p90 {p90:.4g} ms, max {s[-1]:.4g} ms</title></path>")
            for q, dash in ((p50, ""), (p90, ' stroke-dasharray="3,2"')):
                body.append(f'<line x1="{xs(q):.1f}" y1="{y0 + 2}" x2="{xs(q):.1f}" '
                            f'y2="{base:.1f}" stroke="#222" stroke-width="1.2"{dash}/>')
        body.append(_text(width - right + 8, base - 5, ln.note))
        body.append("</g>")
    body += _x_axis(xs, top + lane_h * len(lanes), top, "latency per call (ms, log scale); "
                    "solid: p50, dashed: p90")
    return _svg(width, height, body, title, "distributions")


# --------------------------------------------------------------------------------- bars


class Bar:
    def __init__(self, label: str, value: float, text: str, fill: str = NEUTRAL,
                 tip: str = "") -> None:
        self.label, self.value, self.text, self.fill, self.tip = label, value, text, fill, tip


def hbars(bars: Sequence[Bar], title: str, axis_label: str, log: bool = False,
          origin: float = 0.0, ref: float | None = None, ref_label: str = "",
          width: int = 900, fmt=fmt_num, cls: str = "bars", byte_axis: bool = False) -> str:
    """Horizontal bars from ``origin`` (on a log axis: from 1, so values below 1 go left);
    ``ref`` draws a labelled vertical line (a budget, 1x); ``byte_axis``: values are bytes,
    the axis is in B/KiB/MiB/GiB with round ticks."""
    bars = [b for b in bars if b.value is not None and math.isfinite(b.value)
            and (b.value > 0 or not log)]
    if not bars:
        return ""
    if byte_axis:
        div, suffix = byte_unit(max([b.value for b in bars] + [ref or 0]))
        bars = [Bar(b.label, b.value / div, b.text, b.fill, b.tip) for b in bars]
        ref = None if ref is None else ref / div
        fmt = lambda v: f"{v:g} {suffix}"  # noqa: E731
    left = label_width(b.label for b in bars)
    right, bar_h, top = 110, 18, 20 if ref_label else 8
    values = [b.value for b in bars] + [origin] + ([ref] if ref is not None else [])
    lo, hi = min(values), max(values)
    if log:
        lo, hi = lo / 1.15, hi * 1.15
    else:
        hi = hi + 0.04 * (hi - lo or 1)
    xs = Scale(lo, hi, left, width - right, log=log)
    height = top + (bar_h + 4) * len(bars) + 40
    axis_y = top + (bar_h + 4) * len(bars)
    body: list[str] = _x_axis(xs, axis_y, top, axis_label, fmt)  # grid behind the bars
    x0 = xs(origin)
    for i, b in enumerate(bars):
        y = top + i * (bar_h + 4)
        x1 = xs(b.value)
        body.append(f'<g class="bar"><rect x="{min(x0, x1):.1f}" y="{y}" '
                    f'width="{max(1.0, abs(x1 - x0)):.1f}" height="{bar_h}" fill="{b.fill}">'
                    f"<title>{esc(b.tip or f'{b.label}: {b.text}')}</title></rect>")
        body.append(_text(left - 8, y + bar_h - 5, clip(b.label, left), "end"))
        body.append(_text(max(x0, x1) + 5, y + bar_h - 5, b.text))
        body.append("</g>")
    if ref is not None:
        xr = xs(ref)
        body.append(f'<line x1="{xr:.1f}" y1="{top - 4}" x2="{xr:.1f}" y2="{axis_y:.1f}" '
                    'class="ref"/>')
        if ref_label:
            body.append(_text(xr, top - 8, ref_label, "middle", cls="ref-label"))
    return _svg(width, height, body, title, cls)


# --------------------------------------------------------------------------------- lines


class Series:
    def __init__(self, label: str, points: Sequence[tuple[float, float]], stroke: str,
                 dashed: bool = False) -> None:
        self.label, self.points, self.stroke, self.dashed = label, sorted(points), stroke, dashed


def lines(series: Sequence[Series], title: str, x_label: str, y_label: str,
          ylog: bool = False, hline: float | None = None, hline_label: str = "",
          vmarks: Sequence[tuple[float, str, str]] = (), width: int = 900,
          height: int = 320) -> str:
    """A line chart with markers, a legend on the right, an optional horizontal reference and
    vertical marks ``(x, label, colour)`` (e.g. crossovers)."""
    series = [s for s in series if s.points]
    if not series:
        return ""
    left, right, top, bottom = 60, 230, 14, 44
    xsv = [x for s in series for x, _ in s.points] + [x for x, _, _ in vmarks]
    ysv = [y for s in series for _, y in s.points if y > 0 or not ylog]
    if hline is not None:
        ysv.append(hline)
    xs = Scale(min(xsv), max(xsv), left, width - right)
    ylo, yhi = min(ysv), max(ysv)
    ys = Scale(ylo / 1.2 if ylog else min(0.0, ylo), yhi * 1.2 if ylog else yhi * 1.08,
               height - bottom, top, log=ylog)
    body: list[str] = []
    body += _y_axis(ys, left, width - right, y_label)
    body += _x_axis(xs, height - bottom, top, x_label, lambda v: f"{v:g}")
    if hline is not None:
        y = ys(hline)
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" '
                    'class="ref"/>')
        if hline_label:
            body.append(_text(left + 4, y - 4, hline_label, cls="ref-label"))
    for k, (x, label, stroke) in enumerate(vmarks):
        xv = xs(x)
        body.append(f'<g class="vmark"><line x1="{xv:.1f}" y1="{top}" x2="{xv:.1f}" '
                    f'y2="{height - bottom}" stroke="{stroke}" stroke-dasharray="5,3" '
                    f'stroke-width="1.5"><title>{esc(label)}</title></line>'
                    + (_text(xv - 4, top + 12 + 12 * (k % 4), label, "end", size=10)
                       if xv > (left + width - right) / 2  # keep clear of the legend
                       else _text(xv + 4, top + 12 + 12 * (k % 4), label, size=10)) + "</g>")
    for i, s in enumerate(series):
        pts = [(xs(x), ys(y)) for x, y in s.points if y > 0 or not ylog]
        dash = ' stroke-dasharray="6,3"' if s.dashed else ""
        body.append(f'<g class="series"><path d="M' + "L".join(f"{x:.1f},{y:.1f}" for x, y in pts)
                    + f'" fill="none" stroke="{s.stroke}" stroke-width="2"{dash}/>')
        for (x, y), (xv, yv) in zip(pts, s.points):
            body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{s.stroke}">'
                        f"<title>{esc(s.label)}: {xv:g} -> {yv:.4g}</title></circle>")
        body.append("</g>")
        ly = top + 6 + 16 * i
        body.append(f'<line x1="{width - right + 12}" y1="{ly}" x2="{width - right + 32}" '
                    f'y2="{ly}" stroke="{s.stroke}" stroke-width="2"{dash}/>')
        body.append(_text(width - right + 38, ly + 4, s.label))
    return _svg(width, height, body, title, "lines")


# --------------------------------------------------------------------------------- forest


class Interval:
    def __init__(self, label: str, value: float, low: float | None, high: float | None,
                 stroke: str, tip: str = "") -> None:
        self.label, self.value, self.low, self.high, self.stroke, self.tip = (
            label, value, low, high, stroke, tip)


def forest(items: Sequence[Interval], title: str, axis_label: str,
           band: tuple[float, float] | None = None, width: int = 900) -> str:
    """Point estimates with confidence intervals on a log axis around 1 (a ratio), with the
    "no change" band shaded."""
    items = [it for it in items if it.value and it.value > 0]
    if not items:
        return ""
    left = label_width(it.label for it in items)
    right, row_h, top = 110, 20, 8
    vals = [v for it in items for v in (it.value, it.low, it.high) if v and v > 0] + [1.0]
    if band:
        vals += list(band)
    xs = Scale(min(vals) / 1.03, max(vals) * 1.03, left, width - right, log=True)
    height = top + row_h * len(items) + 40
    axis_y = top + row_h * len(items)
    body: list[str] = []
    if band:
        body.append(f'<rect x="{xs(band[0]):.1f}" y="{top}" '
                    f'width="{xs(band[1]) - xs(band[0]):.1f}" height="{axis_y - top}" '
                    'class="band"><title>change too small to count</title></rect>')
    body += _x_axis(xs, axis_y, top, axis_label, lambda v: f"{v:.3g}")
    x1 = xs(1.0)
    body.append(f'<line x1="{x1:.1f}" y1="{top}" x2="{x1:.1f}" y2="{axis_y}" class="ref"/>')
    for i, it in enumerate(items):
        y = top + i * row_h + row_h / 2
        body.append('<g class="interval">')
        if it.low and it.high:
            body.append(f'<line x1="{xs(it.low):.1f}" y1="{y:.1f}" x2="{xs(it.high):.1f}" '
                        f'y2="{y:.1f}" stroke="{it.stroke}" stroke-width="3"/>')
        body.append(f'<circle cx="{xs(it.value):.1f}" cy="{y:.1f}" r="4.5" fill="{it.stroke}">'
                    f"<title>{esc(it.tip or it.label)}</title></circle>")
        body.append(_text(left - 8, y + 4, clip(it.label, left), "end"))
        body.append(_text(width - right + 8, y + 4, f"x{it.value:.3f}"))
        body.append("</g>")
    return _svg(width, height, body, title, "forest")
