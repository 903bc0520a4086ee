"""Charts as inline SVG strings, drawn in Python: no JavaScript, nothing fetched from the internet.

Two chart kinds cover the report: horizontal bars (the funnel, reason counts) and histograms
(stacked or overlaid series). Every chart has labelled axes, gridlines at round numbers and a
legend, in one palette shared by the whole page, so a colour means the same thing everywhere.
"""
from __future__ import annotations

import math
from html import escape

import numpy as np

# One meaning per colour across the page.
COLORS = {
    "total": "#475569",      # slate: counts everything passes through
    "kept": "#2f6fdb",       # blue: the data that stays
    "rejected": "#d64545",   # red: rejected at ingest
    "filtered": "#e39b2d",   # amber: removed by the CLIP filter
    "flagged": "#7c4dcc",    # purple: minority flags
    "good": "#2f9e63",       # green: reliable annotators, chosen images
    "neutral": "#9aa4b2",    # grey: undecided, the image not chosen
}
SERIES_COLORS = {
    "reliable": COLORS["good"], "undecided": COLORS["neutral"], "unreliable": COLORS["rejected"],
    "not flagged": COLORS["kept"], "flagged": COLORS["flagged"],
    "chosen": COLORS["good"], "rejected": COLORS["neutral"], "all": COLORS["kept"],
    "CLIP agrees": COLORS["kept"], "CLIP disagrees": COLORS["rejected"],
}
INK, GRID, AXIS, MUTED = "#1f2937", "#e5e7eb", "#9ca3af", "#6b7280"


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 times a power of ten) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"ticks need a finite range, got [{lo}, {hi}]")
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(1, target)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw * 0.999)
    start = math.floor(lo / step + 1e-9) * step
    stop = math.ceil(hi / step - 1e-9) * step
    count = int(round((stop - start) / step))
    return [round(start + i * step, 12) for i in range(count + 1)]


def format_number(value: float) -> str:
    """Short labels: 1,234 / 12.5k / 0.25 / 3.2M."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e6:
        return f"{value / 1e6:.3g}M"
    if magnitude >= 1e4:
        return f"{value / 1e3:.3g}k"
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:.3g}"


def _svg(width: int, height: int, body: list[str], title: str) -> str:
    return (f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
            f'height="{height}" role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>'
            + "".join(body) + "</svg>")


def _text(x: float, y: float, text: str, anchor: str = "start", size: int = 12, color: str = INK,
          weight: str = "normal", extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" fill="{color}" '
            f'font-weight="{weight}" {extra}>{escape(text)}</text>')


def _legend(items: list[tuple[str, str]], right: float, y: float) -> list[str]:
    """Swatches and names, right-aligned on one line ending at ``right``."""
    out, x = [], right
    for name, color in reversed(items):
        width = 7.0 * len(name) + 22
        x -= width
        out.append(f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="11" height="11" rx="2" fill="{color}"/>')
        out.append(_text(x + 15, y, name, size=11, color=MUTED))
    return out


def bar_chart(items: list[tuple[str, float, str]], title: str, total: float | None = None,
              width: int = 720, bar_height: int = 22, label_width: int = 230) -> str:
    """Horizontal bars, one per (label, value, colour key or #hex), values (and share of ``total``) at the end."""
    gap, top, bottom = 8, 10, 38
    height = top + len(items) * (bar_height + gap) + bottom
    plot_left, plot_right = label_width, width - 120
    vmax = max([v for _, v, _ in items] + [1])
    ticks = [t for t in nice_ticks(0, vmax, 5) if t <= vmax * 1.001]  # the longest bar spans the plot
    scale = (plot_right - plot_left) / vmax
    body = []
    for t in ticks:
        x = plot_left + t * scale
        body.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - bottom + 2}" stroke="{GRID}"/>')
        body.append(_text(x, height - bottom + 16, format_number(t), "middle", 11, MUTED))
    for i, (label, value, color) in enumerate(items):
        y = top + i * (bar_height + gap)
        fill = COLORS.get(color, color)
        body.append(_text(plot_left - 10, y + bar_height * 0.68, label, "end", 12))
        body.append(f'<rect x="{plot_left}" y="{y}" width="{max(value * scale, 1.5 if value else 0):.1f}" '
                    f'height="{bar_height}" rx="3" fill="{fill}"><title>{escape(label)}: {value:,.0f}</title></rect>')
        share = f" ({value / total:.1%})" if total else ""
        body.append(_text(plot_left + value * scale + 6, y + bar_height * 0.68, f"{value:,.0f}{share}", size=12,
                          color=INK, weight="600"))
    body.append(f'<line x1="{plot_left}" y1="{top - 4}" x2="{plot_left}" y2="{height - bottom + 2}" stroke="{AXIS}"/>')
    body.append(_text((plot_left + plot_right) / 2, height - 2, "pairs", "middle", 11, MUTED))
    return _svg(width, height, body, title)


def histogram_chart(edges, series: dict[str, np.ndarray], title: str, x_label: str, y_label: str,
                    stacked: bool = True, markers: tuple[tuple[float, str], ...] = (),
                    colors: dict[str, str] | None = None, width: int = 520, height: int = 280) -> str:
    """Bars per bin: series stacked (parts of a whole) or side by side within each bin (distributions to compare)."""
    colors = {**SERIES_COLORS, **(colors or {})}
    edges = np.asarray(edges, dtype=float)
    names = [n for n in series if np.asarray(series[n]).sum() > 0] or list(series)
    counts = np.array([np.asarray(series[n], dtype=float) for n in names]) if names else np.zeros((1, len(edges) - 1))
    left, right, top, bottom = 58, width - 16, 30, 46
    peak = counts.sum(axis=0).max() if stacked else counts.max()
    yticks = nice_ticks(0, max(float(peak), 1.0), 4)
    xticks = [t for t in nice_ticks(edges[0], edges[-1], 5) if edges[0] - 1e-9 <= t <= edges[-1] + 1e-9]
    sx = (right - left) / (edges[-1] - edges[0])
    sy = (height - top - bottom) / yticks[-1]
    base_y = height - bottom
    body = []
    for t in yticks:
        y = base_y - t * sy
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="{GRID}"/>')
        body.append(_text(left - 6, y + 4, format_number(t), "end", 11, MUTED))
    below = np.zeros(counts.shape[1])
    lanes = 1 if stacked else len(names)
    for k, (name, row) in enumerate(zip(names, counts)):
        fill = colors.get(name, COLORS["kept"])
        for i, c in enumerate(row):
            if c <= 0:
                continue
            x0, x1 = left + (edges[i] - edges[0]) * sx, left + (edges[i + 1] - edges[0]) * sx
            lane = (x1 - x0 - 1) / lanes
            x = x0 + 0.5 + (0 if stacked else k * lane)
            y1 = base_y - (below[i] + c) * sy
            body.append(f'<rect x="{x:.1f}" y="{y1:.1f}" width="{max(lane, 0.8):.1f}" height="{c * sy:.1f}" '
                        f'fill="{fill}"><title>{escape(name)}: {int(c):,} in '
                        f'[{edges[i]:.3g}, {edges[i + 1]:.3g})</title></rect>')
        if stacked:
            below += row
    for value, label in markers:
        if edges[0] <= value <= edges[-1]:
            x = left + (value - edges[0]) * sx
            body.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{base_y}" stroke="{INK}" '
                        f'stroke-dasharray="4 3" stroke-width="1.2"/>')
            anchor = "end" if x > (left + right) / 2 else "start"
            if label:
                body.append(_text(x + (-4 if anchor == "end" else 4), top + 4, label, anchor, 11, INK))
    body.append(f'<line x1="{left}" y1="{base_y}" x2="{right}" y2="{base_y}" stroke="{AXIS}"/>')
    for t in xticks:
        x = left + (t - edges[0]) * sx
        body.append(f'<line x1="{x:.1f}" y1="{base_y}" x2="{x:.1f}" y2="{base_y + 4}" stroke="{AXIS}"/>')
        body.append(_text(x, base_y + 17, format_number(t), "middle", 11, MUTED))
    body.append(_text((left + right) / 2, height - 6, x_label, "middle", 12, INK))
    body.append(_text(14, (top + base_y) / 2, y_label, "middle", 12, INK,
                      extra=f'transform="rotate(-90 14 {(top + base_y) / 2:.1f})"'))
    if len(names) > 1 or names[0] != "all":
        body += _legend([(n, colors.get(n, COLORS["kept"])) for n in names], right, 14)
    return _svg(width, height, body, title)


def line_chart(x, series: dict[str, np.ndarray], title: str, x_label: str, y_label: str,
               marks: tuple[float, ...] = (), colors: dict[str, str] | None = None, width: int = 520,
               height: int = 240) -> str:
    """Lines over a shared x (training steps); ``marks`` are x positions flagged with a red ring on the first series."""
    palette = [COLORS["kept"], COLORS["flagged"], COLORS["filtered"], COLORS["good"], COLORS["rejected"]]
    colors = colors or {}
    x = np.asarray(x, dtype=float)
    ys = {n: np.asarray(v, dtype=float) for n, v in series.items()}
    finite = np.concatenate([v[np.isfinite(v)] for v in ys.values()] + [np.zeros(0)])
    left, right, top, bottom = 62, width - 16, 30, 46
    yticks = nice_ticks(float(finite.min()) if len(finite) else 0.0, float(finite.max()) if len(finite) else 1.0, 4)
    xticks = [t for t in nice_ticks(float(x.min()), float(x.max()), 5) if x.min() - 1e-9 <= t <= x.max() + 1e-9]
    sx = (right - left) / ((x.max() - x.min()) or 1.0)
    sy = (height - top - bottom) / ((yticks[-1] - yticks[0]) or 1.0)
    px = lambda v: left + (v - x.min()) * sx  # noqa: E731
    py = lambda v: height - bottom - (v - yticks[0]) * sy  # noqa: E731
    body = []
    for t in yticks:
        body.append(f'<line x1="{left}" y1="{py(t):.1f}" x2="{right}" y2="{py(t):.1f}" stroke="{GRID}"/>')
        body.append(_text(left - 6, py(t) + 4, format_number(t), "end", 11, MUTED))
    for t in xticks:
        body.append(_text(px(t), height - bottom + 17, format_number(t), "middle", 11, MUTED))
    for k, (name, y) in enumerate(ys.items()):
        ok = np.isfinite(y)
        points = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in zip(x[ok], y[ok]))
        color = colors.get(name, palette[k % len(palette)])
        body.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="1.6"><title>'
                    f'{escape(name)}</title></polyline>')
    first = next(iter(ys.values()))
    for m in marks:
        i = int(np.argmin(np.abs(x - m)))
        y = first[i] if np.isfinite(first[i]) else yticks[-1]
        body.append(f'<circle cx="{px(x[i]):.1f}" cy="{py(y):.1f}" r="5" fill="none" stroke="{COLORS["rejected"]}" '
                    f'stroke-width="2"><title>step {format_number(x[i])}</title></circle>')
    body.append(f'<line x1="{left}" y1="{height - bottom}" x2="{right}" y2="{height - bottom}" stroke="{AXIS}"/>')
    body.append(_text((left + right) / 2, height - 6, x_label, "middle", 12, INK))
    body.append(_text(14, (top + height - bottom) / 2, y_label, "middle", 12, INK,
                      extra=f'transform="rotate(-90 14 {(top + height - bottom) / 2:.1f})"'))
    if len(ys) > 1:
        body += _legend([(n, colors.get(n, palette[k % len(palette)])) for k, n in enumerate(ys)], right, 14)
    return _svg(width, height, body, title)


def interval_chart(rows: list[tuple[str, float, float, float]], title: str, x_label: str, reference: float | None = None,
                   lo: float | None = None, hi: float | None = None, width: int = 620, row_height: int = 26,
                   label_width: int = 220) -> str:
    """One row per (label, value, low, high): a dot and its interval, with a dashed ``reference`` line."""
    top, bottom = 12, 40
    height = top + len(rows) * row_height + bottom
    values = [v for _, value, a, b in rows for v in (value, a, b)] + ([reference] if reference is not None else [])
    ticks = nice_ticks(min(values) if lo is None else lo, max(values) if hi is None else hi, 5)
    left, right = label_width, width - 20
    sx = (right - left) / ((ticks[-1] - ticks[0]) or 1.0)
    px = lambda v: left + (v - ticks[0]) * sx  # noqa: E731
    body = []
    for t in ticks:
        body.append(f'<line x1="{px(t):.1f}" y1="{top - 4}" x2="{px(t):.1f}" y2="{height - bottom}" stroke="{GRID}"/>')
        body.append(_text(px(t), height - bottom + 16, format_number(t), "middle", 11, MUTED))
    if reference is not None:
        body.append(f'<line x1="{px(reference):.1f}" y1="{top - 6}" x2="{px(reference):.1f}" y2="{height - bottom}" '
                    f'stroke="{INK}" stroke-dasharray="4 3"/>')
    for i, (label, value, a, b) in enumerate(rows):
        y = top + i * row_height + row_height / 2
        body.append(_text(left - 10, y + 4, label, "end", 12))
        body.append(f'<line x1="{px(a):.1f}" y1="{y:.1f}" x2="{px(b):.1f}" y2="{y:.1f}" stroke="{COLORS["kept"]}" '
                    f'stroke-width="3" stroke-linecap="round"/>')
        body.append(f'<circle cx="{px(value):.1f}" cy="{y:.1f}" r="5" fill="{COLORS["kept"]}"><title>{escape(label)}: '
                    f'{value:.3f} [{a:.3f}, {b:.3f}]</title></circle>')
    body.append(_text((left + right) / 2, height - 4, x_label, "middle", 11, MUTED))
    return _svg(width, height, body, title)
