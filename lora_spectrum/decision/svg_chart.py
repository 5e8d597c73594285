"""A small line chart written as inline SVG text, for the HTML report.

The report is one file that must open anywhere with no network and no script, so its charts cannot come from a
charting library or a CDN: they are drawn here as plain SVG (axes, ticks, one polyline per series, a ``<title>``
tooltip per point, an optional dashed marker). Numbers in, markup out; every text escaped; nothing else.
"""

from __future__ import annotations

import html
import math

from lora_spectrum.measures.numbers import number as _num  # a finite float, or None (never a bool)

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
Point = tuple[float, float | None]  # (x, y); a y of None is left out (not measured there)


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def line_chart(series: list[tuple[str, list[Point]]], *, title: str, x_label: str = "epoch",
               marker: float | None = None, marker_label: str = "", width: int = 360,
               height: int = 210) -> str:
    """``series`` as ``(name, [(x, y), ...])`` drawn as one SVG line chart; "" when no point has a number.

    ``marker`` draws a dashed vertical line at that x (the verdict's pick), titled ``marker_label``. The SVG scales to its container
    (``viewBox``, width 100%) so that it fits a phone's screen.
    """
    clean = [(name, [(_num(x), _num(y)) for x, y in pts]) for name, pts in series]
    # Points without a number are left out (not measured there); the line joins the measured ones.
    clean = [(name, [(x, y) for x, y in pts if x is not None and y is not None]) for name, pts in clean]
    xs = [x for _, pts in clean for x, _ in pts]
    ys = [y for _, pts in clean for _, y in pts]
    if not ys:
        return ""
    rows = math.ceil(len(clean) / 3) if len(clean) > 1 else 0  # legend rows, three names a row
    left, right, top, bottom = 52, 12, 26, 34 + 14 * rows
    pw, ph = width - left - right, height - top - bottom
    x0, x1 = min(xs), max(xs)
    if marker is not None and _num(marker) is not None:
        x0, x1 = min(x0, marker), max(x1, marker)
    y0, y1 = min(ys), max(ys)
    if y1 - y0 < 1e-12 * max(1.0, abs(y1)):
        y0, y1 = y0 - max(abs(y0) * 0.1, 1e-9), y1 + max(abs(y1) * 0.1, 1e-9)
    pad = (y1 - y0) * 0.06
    y0, y1 = y0 - pad, y1 + pad

    def sx(x: float) -> float:
        return left + (pw / 2 if x1 == x0 else (x - x0) / (x1 - x0) * pw)

    def sy(y: float) -> float:
        return top + ph - (y - y0) / (y1 - y0) * ph

    e = html.escape
    out = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
           f'style="max-width:{width}px" role="img" aria-label="{e(title)}">', f"<title>{e(title)}</title>",
           f'<text x="{left}" y="16" font-size="13" font-weight="bold">{e(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#bbb"/>']
    for t in _ticks(y0, y1):
        y = sy(t)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
                   f'<text x="{left - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{_fmt(t)}</text>')
    x_ticks = sorted(set(xs))
    if len(x_ticks) > 8:
        x_ticks = _ticks(x0, x1, 6)
    for t in x_ticks:
        out.append(f'<text x="{sx(t):.1f}" y="{top + ph + 14}" font-size="10" text-anchor="middle">{_fmt(t)}</text>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{top + ph + 28}" font-size="10" text-anchor="middle">'
               f"{e(x_label)}</text>")
    if marker is not None and _num(marker) is not None:
        mx = sx(float(marker))
        out.append(f'<line x1="{mx:.1f}" x2="{mx:.1f}" y1="{top}" y2="{top + ph}" stroke="#555" '
                   f'stroke-dasharray="4 3">' + (f"<title>{e(marker_label)}</title>" if marker_label else "")
                   + "</line>")
    for k, (name, pts) in enumerate(clean):
        colour = PALETTE[k % len(PALETTE)]
        pts = sorted(pts)
        if len(pts) > 1:
            line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
            out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.8" points="{line}"/>')
        if len(pts) <= 40:  # a dot with a tooltip per point, unless there are too many to point at
            out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.8" fill="{colour}">'
                    f"<title>{e(name)}: {_fmt(x)} → {y:.4g}</title></circle>" for x, y in pts]
        if len(clean) > 1:
            lx, ly = left + (k % 3) * (pw / 3), top + ph + 44 + 14 * (k // 3)
            out.append(f'<rect x="{lx:.1f}" y="{ly - 8}" width="10" height="3" fill="{colour}"/>'
                       f'<text x="{lx + 13:.1f}" y="{ly - 4}" font-size="10">{e(name[:16])}</text>')
    out.append("</svg>")
    return "\n".join(out)
