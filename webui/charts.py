"""Charts as inline SVG, rendered on the server: no script, no CDN, pages work offline.

Two shapes cover what the pages show: `bar_chart` (one value per category: calls per day, a histogram) and
`stacked_bar_chart` (several series per category: outcomes per day). Every label is escaped; every chart has a
<title> and <desc> (read by screen readers through aria-labelledby) and every bar a <title> with its exact value,
and carries it as data-label / data-series / data-value, so what a chart says can be checked as numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import count

from markupsafe import Markup, escape

WIDTH, HEIGHT = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 12, 58     # room for the value axis and the category labels
MAX_LABELS = 12                               # category labels shown; the others stay in the bars' titles
PALETTE = ("#2458d6", "#1f7a3a", "#b35c00", "#b3261e", "#6b4fbb", "#0f7f86", "#8a8f98", "#c2185b", "#5d6d1e",
           "#3d5a80")
_ids = count(1)


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _nice_max(value: float) -> float:
    """The top of the value axis: the data's maximum rounded up to 1, 2 or 5 times a power of ten."""
    if value <= 0:
        return 1
    magnitude = 1.0
    while magnitude * 10 <= value:
        magnitude *= 10
    while magnitude > value:
        magnitude /= 10
    for step in (1, 2, 5, 10):
        if step * magnitude >= value:
            top = step * magnitude
            return int(top) if top == int(top) else top
    return value   # pragma: no cover - the loop always returns


def _frame(title: str, desc: str, body: list[str], top: float, unit: str, categories: Sequence[str],
           slot: float) -> Markup:
    chart_id = f"chart-{next(_ids)}"
    plot_height = HEIGHT - TOP - BOTTOM
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-labelledby="{chart_id}-title {chart_id}-desc" xmlns="http://www.w3.org/2000/svg">',
             f'<title id="{chart_id}-title">{escape(title)}</title>',
             f'<desc id="{chart_id}-desc">{escape(desc)}</desc>']
    for fraction in (0, 0.5, 1):   # value axis: 0, half, top
        y = TOP + plot_height * (1 - fraction)
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#d9dde3"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="#6b7380">'
                     f'{escape(_number(top * fraction))}{escape(unit)}</text>')
    parts += body
    every = max(1, -(-len(categories) // MAX_LABELS))
    for index, label in enumerate(categories):
        if index % every:
            continue
        x = LEFT + slot * (index + 0.5)
        parts.append(f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 14}" text-anchor="end" font-size="11" '
                     f'fill="#1d2430" transform="rotate(-35 {x:.1f} {HEIGHT - BOTTOM + 14})">{escape(label)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def bar_chart(title: str, bars: Sequence[tuple[str, float]], *, unit: str = "", desc: str = "") -> Markup:
    """One bar per (label, value); `unit` is appended to values ("%", " min")."""
    categories = [label for label, _ in bars]
    top = _nice_max(max((value for _, value in bars), default=0))
    slot = (WIDTH - LEFT - RIGHT) / max(len(bars), 1)
    plot_height = HEIGHT - TOP - BOTTOM
    body = []
    for index, (label, value) in enumerate(bars):
        height = plot_height * value / top
        x = LEFT + slot * index + slot * 0.12
        body.append(f'<rect class="bar" x="{x:.1f}" y="{TOP + plot_height - height:.1f}" width="{slot * 0.76:.1f}" '
                    f'height="{height:.1f}" fill="{PALETTE[0]}" data-label="{escape(label)}" '
                    f'data-value="{escape(_number(value))}"><title>{escape(label)}: '
                    f'{escape(_number(value))}{escape(unit)}</title></rect>')
    desc = desc or "; ".join(f"{label}: {_number(value)}{unit}" for label, value in bars) or "no data"
    return _frame(title, desc, body, top, unit, categories, slot)


def stacked_bar_chart(title: str, categories: Sequence[str], series: Mapping[str, Sequence[float]], *,
                      desc: str = "") -> Markup:
    """One stacked bar per category, a segment per series (in the dict's order), and a legend (HTML, below: it
    wraps on a narrow screen)."""
    totals = [sum(values[index] for values in series.values()) for index in range(len(categories))]
    top = _nice_max(max(totals, default=0))
    slot = (WIDTH - LEFT - RIGHT) / max(len(categories), 1)
    plot_height = HEIGHT - TOP - BOTTOM
    body = []
    for index, category in enumerate(categories):
        base: float = TOP + plot_height
        x = LEFT + slot * index + slot * 0.12
        for colour, (name, values) in zip(PALETTE * 4, series.items(), strict=False):
            value = values[index]
            if not value:
                continue
            height = plot_height * value / top
            base -= height
            body.append(f'<rect class="bar" x="{x:.1f}" y="{base:.1f}" width="{slot * 0.76:.1f}" '
                        f'height="{height:.1f}" fill="{colour}" data-label="{escape(category)}" '
                        f'data-series="{escape(name)}" data-value="{escape(_number(value))}"><title>'
                        f'{escape(category)}, {escape(name)}: {escape(_number(value))}</title></rect>')
    desc = desc or "; ".join(
        f"{category}: " + ", ".join(f"{name} {_number(values[index])}" for name, values in series.items()
                                    if values[index])
        for index, category in enumerate(categories) if totals[index]) or "no data"
    legend = "".join(f'<li><svg class="swatch" width="10" height="10" aria-hidden="true"><rect width="10" height="10" '
                     f'fill="{colour}"/></svg> {escape(name)}</li>'
                     for colour, name in zip(PALETTE * 4, series, strict=False))
    return _frame(title, desc, body, top, "", categories, slot) + Markup(f'<ul class="legend">{legend}</ul>')
