"""Small inline SVG charts for the HTML report: no plotting library, no JavaScript, no network.

Every number is printed with fixed precision, so the same data always gives the same bytes.
"""
from __future__ import annotations

from collections.abc import Sequence
from html import escape

FONT = 'font-family="system-ui,sans-serif" font-size="11"'
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1")


def _n(value: float) -> str:
    return f"{value:.1f}"


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def histogram(counts: Sequence[int], lo: float, hi: float, clip_lo: float, clip_hi: float, title: str,
              subtitle: str, width: int = 300, height: int = 130) -> str:
    """Bars over [lo, hi] with dashed lines at the clipping range; counts on a sqrt scale so
    that tails stay visible next to a spike of zeros."""
    left, right, top, bottom = 8, 8, 30, 18
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max(max(counts, default=0), 1) ** 0.5
    bar_w = plot_w / max(len(counts), 1)
    span = (hi - lo) or 1.0
    parts = [(f'<svg class="plot" data-kind="histogram" xmlns="http://www.w3.org/2000/svg" width="{width}" '
              f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">'),
             f'<title>{escape(title)}</title>',
             f'<text x="{left}" y="12" {FONT} font-weight="600">{escape(_short(title, 44))}</text>',
             f'<text x="{left}" y="25" {FONT} fill="#555">{escape(subtitle)}</text>']
    for i, c in enumerate(counts):
        if c <= 0:
            continue
        h = plot_h * (c**0.5) / peak
        parts.append(f'<rect x="{_n(left + i * bar_w)}" y="{_n(top + plot_h - h)}" width="{_n(max(bar_w - 0.5, 0.5))}" '
                     f'height="{_n(h)}" fill="{PALETTE[0]}"/>')
    for x_value in (clip_lo, clip_hi):
        x = left + plot_w * (x_value - lo) / span
        parts.append(f'<line x1="{_n(x)}" y1="{top - 2}" x2="{_n(x)}" y2="{top + plot_h}" stroke="{PALETTE[3]}" '
                     f'stroke-width="1.5" stroke-dasharray="4 2"/>')
    base = top + plot_h
    parts.append(f'<line x1="{left}" y1="{base}" x2="{width - right}" y2="{base}" stroke="#999"/>')
    parts.append(f'<text x="{left}" y="{height - 4}" {FONT} fill="#555">{_fmt(lo)}</text>')
    parts.append(f'<text x="{width - right}" y="{height - 4}" {FONT} fill="#555" text-anchor="end">{_fmt(hi)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def horizontal_bars(rows: Sequence[tuple[str, float]], unit: str, title: str, width: int = 760,
                    label_width: int = 300, bar_height: int = 14, marker: float | None = None,
                    marker_label: str = "") -> str:
    """One labelled bar per row (per-layer error, sparsity per layer)."""
    top, gap = 22, 3
    height = top + len(rows) * (bar_height + gap) + 20
    plot_w = width - label_width - 70
    peak = max((v for _, v in rows), default=0.0)
    peak = peak if peak > 0 else 1.0
    parts = [(f'<svg class="plot" data-kind="bars" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
              f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">'),
             f'<title>{escape(title)}</title>',
             f'<text x="0" y="14" {FONT} font-weight="600">{escape(title)}</text>']
    for i, (label, value) in enumerate(rows):
        y = top + i * (bar_height + gap)
        w = plot_w * max(value, 0.0) / peak
        parts.append(f'<text x="{label_width - 6}" y="{_n(y + bar_height - 3)}" {FONT} text-anchor="end">'
                     f'{escape(_short(label, 48))}</text>')
        parts.append(f'<rect x="{label_width}" y="{y}" width="{_n(max(w, 0.5))}" height="{bar_height}" fill="{PALETTE[0]}"/>')
        parts.append(f'<text x="{_n(label_width + w + 4)}" y="{_n(y + bar_height - 3)}" {FONT}>{_fmt(value)}{escape(unit)}</text>')
    if marker is not None and 0 <= marker <= peak:
        x = label_width + plot_w * marker / peak
        parts.append(f'<line x1="{_n(x)}" y1="{top - 4}" x2="{_n(x)}" y2="{height - 16}" stroke="{PALETTE[3]}" '
                     f'stroke-dasharray="4 2"/>')
        parts.append(f'<text x="{_n(x)}" y="{height - 4}" {FONT} fill="{PALETTE[3]}" text-anchor="middle">'
                     f'{escape(marker_label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def grouped_bars(groups: Sequence[tuple[str, Sequence[tuple[str, float | None]]]], unit: str, title: str,
                 width: int = 420, height: int = 200) -> str:
    """Before/after bars per group (size; latency per execution provider). None: not measured."""
    left, top, bottom = 10, 40, 34
    plot_h = height - top - bottom
    series = [name for name, _ in groups[0][1]] if groups else []
    values = [v for _, vs in groups for _, v in vs if v is not None]
    peak = max(values, default=1.0) or 1.0
    group_w = (width - 2 * left) / max(len(groups), 1)
    bar_w = min(48.0, group_w * 0.8 / max(len(series), 1))
    parts = [(f'<svg class="plot" data-kind="grouped" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
              f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">'),
             f'<title>{escape(title)}</title>',
             f'<text x="{left}" y="14" {FONT} font-weight="600">{escape(title)}</text>']
    for j, name in enumerate(series):
        x = left + j * 110
        parts.append(f'<rect x="{x}" y="20" width="10" height="10" fill="{PALETTE[j % len(PALETTE)]}"/>')
        parts.append(f'<text x="{x + 14}" y="29" {FONT}>{escape(name)}</text>')
    for g, (label, vs) in enumerate(groups):
        start = left + g * group_w + (group_w - bar_w * len(vs)) / 2
        for j, (_, v) in enumerate(vs):
            x = start + j * bar_w
            if v is None:
                parts.append(f'<text x="{_n(x + bar_w / 2)}" y="{top + plot_h - 4}" {FONT} text-anchor="middle" '
                             f'fill="#999">n/a</text>')
                continue
            h = plot_h * v / peak
            parts.append(f'<rect x="{_n(x)}" y="{_n(top + plot_h - h)}" width="{_n(bar_w - 2)}" height="{_n(h)}" '
                         f'fill="{PALETTE[j % len(PALETTE)]}"/>')
            parts.append(f'<text x="{_n(x + bar_w / 2 - 1)}" y="{_n(top + plot_h - h - 3)}" {FONT} '
                         f'text-anchor="middle">{_fmt(v)}</text>')
        parts.append(f'<text x="{_n(left + g * group_w + group_w / 2)}" y="{height - 12}" {FONT} '
                     f'text-anchor="middle">{escape(label)}</text>')
    parts.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{width - left}" y2="{top + plot_h}" stroke="#999"/>')
    parts.append(f'<text x="{width - left}" y="{height - 1}" {FONT} fill="#555" text-anchor="end">{escape(unit)}</text>')
    parts.append("</svg>")
    return "".join(parts)
