"""Small inline SVG charts drawn on the server: no JavaScript library, readable on any phone.

- `sparkline`: a line over daily values, with an optional threshold line (e.g. the crop's
  minimum paddy water level) and the last value marked;
- `range_bar`: min-mean-max of a season on a scale, with the threshold;
- `hbars`: horizontal bars for comparing villages.
Every chart has a <title> so that screen readers (and text dumps of the page) can read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

from markupsafe import Markup


def _fmt(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def sparkline(
    values: Sequence[float | None],
    *,
    width: int = 300,
    height: int = 56,
    threshold: float | None = None,
    label: str = "",
    css: str = "spark",
) -> Markup:
    pts = [(i, v) for i, v in enumerate(values) if v is not None]
    if len(pts) < 2:
        return Markup("")
    lo = min(v for _, v in pts)
    hi = max(v for _, v in pts)
    if threshold is not None:
        lo, hi = min(lo, threshold), max(hi, threshold)
    span = (hi - lo) or 1.0
    pad = 4
    n = max(len(values) - 1, 1)

    def x(i: int) -> float:
        return pad + (width - 2 * pad) * i / n

    def y(v: float) -> float:
        return height - pad - (height - 2 * pad) * (v - lo) / span

    path = " ".join(f"{'M' if k == 0 else 'L'}{x(i):.1f},{y(v):.1f}" for k, (i, v) in enumerate(pts))
    parts = [
        f'<svg class="{css}" viewBox="0 0 {width} {height}" width="100%" height="{height}" role="img" '
        f'preserveAspectRatio="none"><title>{escape(label)}: {_fmt(lo)}–{_fmt(hi)}</title>'
    ]
    if threshold is not None:
        ty = y(threshold)
        parts.append(f'<line class="thr" x1="{pad}" x2="{width - pad}" y1="{ty:.1f}" y2="{ty:.1f}"/>')
    parts.append(f'<path class="line" d="{path}"/>')
    li, lv = pts[-1]
    parts.append(f'<circle class="dot" cx="{x(li):.1f}" cy="{y(lv):.1f}" r="2.5"/></svg>')
    return Markup("".join(parts))


def range_bar(
    lo: float | None,
    mean: float | None,
    hi: float | None,
    *,
    scale: tuple[float, float],
    threshold: float | None = None,
    label: str = "",
    unit: str = "",
    width: int = 300,
    height: int = 22,
) -> Markup:
    if lo is None or hi is None:
        return Markup("")
    s0, s1 = scale
    span = (s1 - s0) or 1.0

    def x(v: float) -> float:
        return 2 + (width - 4) * (min(max(v, s0), s1) - s0) / span

    parts = [
        f'<svg class="range" viewBox="0 0 {width} {height}" width="100%" height="{height}" role="img">'
        f"<title>{escape(label)}: {_fmt(lo)}–{_fmt(hi)} {escape(unit)}</title>",
        f'<rect class="track" x="2" y="8" width="{width - 4}" height="6" rx="3"/>',
        f'<rect class="span" x="{x(lo):.1f}" y="6" width="{max(x(hi) - x(lo), 2):.1f}" height="10" rx="4"/>',
    ]
    if mean is not None:
        parts.append(f'<rect class="mean" x="{x(mean) - 1:.1f}" y="3" width="2" height="16"/>')
    if threshold is not None:
        parts.append(f'<line class="thr" x1="{x(threshold):.1f}" x2="{x(threshold):.1f}" y1="0" y2="{height}"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


def hbars(items: Sequence[tuple[str, float | None]], *, unit: str = "", width: int = 320) -> Markup:
    """Horizontal bars, one row per (label, value); the longest bar is the largest value."""
    shown = [(k, v) for k, v in items if v is not None]
    if not shown:
        return Markup("")
    top = max(abs(v) for _, v in shown) or 1.0
    row = 20
    label_w = 110
    h = row * len(shown) + 4
    parts = [f'<svg class="bars" viewBox="0 0 {width} {h}" width="100%" height="{h}" role="img"><title>bars</title>']
    for i, (k, v) in enumerate(shown):
        y = 2 + i * row
        w = (width - label_w - 60) * abs(v) / top
        parts.append(f'<text x="0" y="{y + 14}" class="lbl">{escape(k)}</text>')
        parts.append(f'<rect class="bar" x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 6}" rx="2"/>')
        parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + 14}" class="val">{_fmt(v)}{escape(unit)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def pairs(rows: Sequence[dict[str, object]], label: str, value: str) -> list[tuple[str, float | None]]:
    """(label, value) pairs of a list of records, for `hbars` in templates."""
    return [(str(r.get(label, "")), r.get(value)) for r in rows]  # type: ignore[misc]


def chart_indicator(row: dict[str, Any], lang: str = "zh") -> dict[str, Any]:
    """An indicator row of the dashboard as its ECharts chart needs it (api/static/charts.js)."""
    name = (row.get("name_en") or row.get("name_zh")) if lang == "en" else row.get("name_zh")
    return {"indicator": row["indicator"], "name": name, "unit": row.get("unit") or "", "trend": row.get("trend", [])}


def growth_chart(g: dict[str, Any], t: dict[str, Any]) -> dict[str, Any] | None:
    """The daily curves of a growth summary (trace page) for its ECharts chart, with each threshold;
    None without daily values."""
    thresholds = (g.get("alerts") or {}).get("thresholds") or {}
    daily = g.get("daily") or {}
    series = []
    for key, label, unit, limit in (
        ("water_level_cm", t["trace"]["water_level"], "cm", thresholds.get("paddy_water_min_cm")),
        ("soil_moisture_pct", t["trace"]["soil_moisture"], "%", thresholds.get("soil_moisture_min_pct")),
    ):
        points = [[day, value] for day, value in daily.get(key) or [] if value is not None]
        if points:
            series.append({"name": label, "unit": unit, "threshold": limit, "points": points})
    return {"series": series} if series else None
