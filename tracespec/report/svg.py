"""Small SVG plots drawn by our own code: no plotting library, no script, no network.

Constraints: every text that comes from a trace (routes, class names) is escaped; the output is a
self-contained ``<svg>`` element sized by its ``viewBox`` so the page can scale it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Final

__all__ = ["Series", "heatmap", "histogram", "line_plot"]

_FONT: Final = 'font-family="system-ui, sans-serif" font-size="11"'
PALETTE: Final = ("#2563eb", "#dc2626", "#059669", "#d97706")


@dataclass(frozen=True)
class Series:
    """One line of a plot: a label and one value per x position (``None`` where there is none)."""

    label: str
    values: Sequence[float | None]
    color: str = PALETTE[0]


def _log_ticks(low: float, high: float) -> list[float]:
    return [10.0**e for e in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)]


def _fmt_power(value: float) -> str:
    return f"1e{round(math.log10(value))}"


def line_plot(
    x_labels: Sequence[str],
    series: Sequence[Series],
    *,
    title: str,
    y_label: str,
    highlight: int | None = None,
    highlight_step: int | None = None,
    threshold: float | None = None,
    width: int = 900,
    height: int = 320,
) -> str:
    """Lines over categorical x positions, log-scale y. Zero or missing values are left out.

    ``highlight`` marks one x position (the culprit); ``highlight_step``, where given, makes that
    mark a link to the step's tree (the page's script follows ``data-step``); ``threshold`` draws a
    dashed tolerance line.
    """
    left, right, top, bottom = 64, 16, 28, 110
    plot_w, plot_h = width - left - right, height - top - bottom
    positive = [v for s in series for v in s.values if v is not None and v > 0 and math.isfinite(v)]
    if threshold:
        positive.append(threshold)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" class="plot" role="img">',
        f"<title>{escape(title)}</title>",
        f'<text x="{left}" y="16" {_FONT} font-weight="bold">{escape(title)}</text>',
    ]
    n = len(x_labels)
    if not positive or n == 0:
        parts.append(f'<text x="{left}" y="{top + plot_h / 2}" {_FONT}>no non-zero error to plot</text></svg>')
        return "".join(parts)
    low, high = min(positive), max(positive)
    ticks = _log_ticks(low, high)
    lo_e, hi_e = math.log10(ticks[0]), math.log10(ticks[-1])
    span = max(hi_e - lo_e, 1.0)

    def x_at(i: int) -> float:
        return left + (plot_w * (i + 0.5) / n)

    def y_at(v: float) -> float:
        return top + plot_h * (1 - (math.log10(v) - lo_e) / span)

    for t in ticks:
        y = y_at(t)
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" {_FONT}>{_fmt_power(t)}</text>')
    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#9ca3af"/>')
    if highlight is not None and 0 <= highlight < n:
        band = plot_w / n
        link = "" if highlight_step is None else f' data-step="{highlight_step}" style="cursor:pointer"'
        mark = "" if highlight_step is None else f"<title>step {highlight_step}: show its tree</title>"
        parts.append(
            f'<rect class="culprit-band" x="{x_at(highlight) - band / 2:.1f}" y="{top}" '
            f'width="{max(band, 6.0):.1f}" height="{plot_h}" fill="#fde68a" opacity="0.6"{link}>{mark}</rect>'
        )
    if threshold:
        y = y_at(threshold)
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#6b7280" stroke-dasharray="5 4"/>'
        )
        parts.append(f'<text x="{left + plot_w - 4}" y="{y - 4:.1f}" text-anchor="end" {_FONT} fill="#6b7280">tolerance</text>')
    label_every = max(1, math.ceil(n / 32))
    for i, label in enumerate(x_labels):
        if i % label_every == 0 or i == highlight:
            x = x_at(i)
            weight = ' font-weight="bold"' if i == highlight else ""
            parts.append(
                f'<text x="{x:.1f}" y="{top + plot_h + 8}" transform="rotate(60 {x:.1f} {top + plot_h + 8})" '
                f"{_FONT}{weight}>{escape(label)}</text>"
            )
    floor = top + plot_h
    any_zero = False
    for s in series:
        # an error of exactly zero has no logarithm: it sits on the bottom edge, drawn hollow
        points = [
            (x_at(i), y_at(v) if v > 0 else floor, v == 0)
            for i, v in enumerate(s.values)
            if v is not None and v >= 0 and math.isfinite(v)
        ]
        any_zero = any_zero or any(zero for _, _, zero in points)
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in points)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{s.color}" stroke-width="2"/>')
        for x, y, zero in points:
            fill = "#fff" if zero else s.color
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{fill}" stroke="{s.color}"/>')
    if any_zero:
        parts.append(
            f'<text x="{left + plot_w - 4}" y="{floor - 4}" text-anchor="end" {_FONT} fill="#6b7280">'
            "hollow on the bottom edge: identical (0)</text>"
        )
    for k, s in enumerate(series):  # the legend shares the title's line, right-aligned, off the data
        x = left + plot_w - 190 * (len(series) - k)
        parts.append(f'<rect x="{x}" y="11" width="12" height="3" fill="{s.color}"/>')
        parts.append(f'<text x="{x + 16}" y="16" {_FONT}>{escape(s.label)}</text>')
    parts.append(
        f'<text x="14" y="{top + plot_h / 2}" transform="rotate(-90 14 {top + plot_h / 2})" '
        f'text-anchor="middle" {_FONT}>{escape(y_label)}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def histogram(
    counts: Sequence[int], labels: Sequence[str], *, title: str, x_label: str, width: int = 440, height: int = 240
) -> str:
    """Bars of ``counts`` (log-scale height, so a few large errors stay visible), one label per bar."""
    left, right, top, bottom = 52, 10, 28, 58
    plot_w, plot_h = width - left - right, height - top - bottom
    n = max(len(counts), 1)
    peak = math.log10(max(max(counts, default=0), 1) + 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" class="plot" role="img">',
        f"<title>{escape(title)}</title>",
        f'<text x="{left}" y="16" {_FONT} font-weight="bold">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#9ca3af"/>',
    ]
    bar = plot_w / n
    for i, count in enumerate(counts):
        h = plot_h * math.log10(count + 1) / peak if count else 0.0
        x = left + i * bar
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{top + plot_h - h:.1f}" width="{max(bar - 2, 1):.1f}" '
            f'height="{h:.1f}" fill="#2563eb"><title>{escape(labels[i])}: {count}</title></rect>'
        )
    label_every = max(1, math.ceil(n / 12))
    for i, label in enumerate(labels):
        if i % label_every == 0:
            x = left + (i + 0.5) * bar
            parts.append(f'<text x="{x:.1f}" y="{top + plot_h + 14}" text-anchor="middle" {_FONT}>{escape(label)}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle" {_FONT}>{escape(x_label)}</text>')
    parts.append(
        f'<text x="14" y="{top + plot_h / 2}" transform="rotate(-90 14 {top + plot_h / 2})" '
        f'text-anchor="middle" {_FONT}>elements (log)</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def _heat_color(fraction: float) -> str:
    # white -> amber -> red: light where the error is small
    fraction = min(max(fraction, 0.0), 1.0)
    if fraction < 0.5:
        t = fraction * 2
        r, g, b = 255, round(255 - 64 * t), round(255 - 200 * t)
    else:
        t = (fraction - 0.5) * 2
        r, g, b = round(255 - 35 * t), round(191 - 153 * t), round(55 - 17 * t)
    return f"#{r:02x}{g:02x}{b:02x}"


def heatmap(
    grid: Sequence[Sequence[float]], *, title: str, row_label: str, col_label: str, width: int = 440, height: int = 240
) -> str:
    """A grid of non-negative values (log colour scale, zero is white)."""
    left, right, top, bottom = 52, 10, 28, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    rows, cols = len(grid), max((len(r) for r in grid), default=0)
    positive = [v for r in grid for v in r if v > 0 and math.isfinite(v)]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" class="plot" role="img">',
        f"<title>{escape(title)}</title>",
        f'<text x="{left}" y="16" {_FONT} font-weight="bold">{escape(title)}</text>',
    ]
    if rows and cols:
        lo = math.log10(min(positive)) if positive else 0.0
        hi = math.log10(max(positive)) if positive else 1.0
        span = max(hi - lo, 1e-9)
        cw, ch = plot_w / cols, plot_h / rows
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                if not math.isfinite(v):
                    color = "#7f1d1d"
                elif v <= 0:
                    continue
                else:
                    color = _heat_color((math.log10(v) - lo) / span if span > 1e-9 else 1.0)
                parts.append(
                    f'<rect x="{left + j * cw:.2f}" y="{top + i * ch:.2f}" width="{cw + 0.05:.2f}" '
                    f'height="{ch + 0.05:.2f}" fill="{color}"/>'
                )
        if positive:
            parts.append(
                f'<text x="{left + plot_w}" y="16" text-anchor="end" {_FONT}>{min(positive):.1e} … {max(positive):.1e}</text>'
            )
    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#9ca3af"/>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 10}" text-anchor="middle" {_FONT}>{escape(col_label)}</text>')
    parts.append(
        f'<text x="14" y="{top + plot_h / 2}" transform="rotate(-90 14 {top + plot_h / 2})" '
        f'text-anchor="middle" {_FONT}>{escape(row_label)}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)
