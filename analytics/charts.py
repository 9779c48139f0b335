"""Charts of the indicators for the dashboard and reports: each indicator's trend and the village comparison.

Each chart is written as PNG (for documents and slides) and SVG (for the web page), with matplotlib's
object API (no pyplot state, safe in a server thread). Titles carry the Chinese name when a CJK font
is installed (Debian's fonts-noto-cjk: Noto Sans CJK SC); without one they fall back to the English
name, so a chart never shows empty boxes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from matplotlib import font_manager
from matplotlib.figure import Figure

from analytics.compute import IndicatorReport

CJK_FONTS = (
    "Noto Sans CJK SC",
    "Noto Sans CJK TC",
    "Noto Sans CJK JP",
    "Source Han Sans SC",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "SimHei",
    "Microsoft YaHei",
    "PingFang SC",
)
FORMATS = ("png", "svg")
COUNTY_COLOR, VILLAGE_COLOR, BAR_COLOR = "#1f5f8b", "#9bb7cc", "#4a8fbf"


@lru_cache
def cjk_font() -> str | None:
    """The first installed font family able to show Chinese, or None."""
    installed = {f.name for f in font_manager.fontManager.ttflist}
    return next((name for name in CJK_FONTS if name in installed), None)


def _rc() -> dict[str, object]:
    font = cjk_font()
    rc: dict[str, object] = {"svg.hashsalt": "village", "axes.unicode_minus": False}
    if font:
        rc["font.family"] = [font, "DejaVu Sans"]
    return rc


def _title(report: IndicatorReport, indicator: str) -> str:
    ind = report.catalogue.indicator(indicator)
    return f"{ind.name_zh}  {ind.name_en}" if cjk_font() else ind.name_en


def _place(report: IndicatorReport, code: str) -> str:
    name = report.county_name if code == report.county else report.villages.get(code, code)
    return name if cjk_font() else code


def _save(fig: Figure, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in FORMATS:
        path = stem.with_suffix(f".{fmt}")
        fig.savefig(path, format=fmt, dpi=150, bbox_inches="tight", metadata={"Date": None} if fmt == "svg" else None)
        paths.append(path)
    return paths


def _finite(values: Iterable[float | None]) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]


def trend_chart(report: IndicatorReport, indicator: str, stem: Path, *, max_villages: int = 12) -> list[Path]:
    """The indicator over the report's periods: the county as a bold line, villages as thin ones."""
    import matplotlib

    ind = report.catalogue.indicator(indicator)
    labels = [p.label for p in report.periods]
    with matplotlib.rc_context(_rc()):
        fig = Figure(figsize=(7.5, 4.2))
        ax = fig.add_subplot()
        if ind.source != "statistics" and len(report.villages) <= max_villages:
            for code in report.villages:
                ys = _finite(v for _, v in report.trend(indicator, code))
                if any(not math.isnan(y) for y in ys):
                    ax.plot(labels, ys, color=VILLAGE_COLOR, linewidth=1, marker=".", label=_place(report, code))
        ys = _finite(v for _, v in report.trend(indicator))
        ax.plot(labels, ys, color=COUNTY_COLOR, linewidth=2.5, marker="o", label=_place(report, report.county))
        for x, y in zip(labels, ys, strict=True):
            if not math.isnan(y):
                ax.annotate(f"{y:,.4g}", (x, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
        ax.set_title(_title(report, indicator), fontsize=11)
        ax.set_ylabel(ind.unit)
        ax.grid(axis="y", alpha=0.3)
        if ind.unit == "%":
            ax.set_ylim(0, 105)
        ax.legend(fontsize=7, loc="best", frameon=False)
        return _save(fig, stem)


def village_chart(report: IndicatorReport, indicator: str, stem: Path) -> list[Path]:
    """The villages side by side for the report's period, best at the top, the county value as a line."""
    import matplotlib

    ind = report.catalogue.indicator(indicator)
    ranking = [r for r in report.ranking(indicator) if r["value"] is not None]
    with matplotlib.rc_context(_rc()):
        fig = Figure(figsize=(7.5, max(2.5, 0.45 * len(ranking) + 1.5)))
        ax = fig.add_subplot()
        names = [_place(report, r["village"]) for r in reversed(ranking)]
        values = [float(r["value"]) for r in reversed(ranking)]
        bars = ax.barh(names, values, color=BAR_COLOR)
        ax.bar_label(bars, labels=[f"{v:,.4g}" for v in values], padding=3, fontsize=8)
        county = report.value(indicator)
        if county is not None:
            ax.axvline(county, color=COUNTY_COLOR, linestyle="--", linewidth=1.2)
            ax.text(county, len(values) - 0.5, f" {_place(report, report.county)} {county:,.4g}", fontsize=8)
        ax.set_title(f"{_title(report, indicator)} ({report.period.label})", fontsize=11)
        ax.set_xlabel(ind.unit)
        if ind.unit == "%":
            ax.set_xlim(0, 110)
        ax.grid(axis="x", alpha=0.3)
        return _save(fig, stem)


def write_charts(report: IndicatorReport, out_dir: Path, indicators: Iterable[str] | None = None) -> list[Path]:
    """`trend_<id>` for every indicator with a county value in some period, and `villages_<id>` for
    every indicator some village has a value for; returns the files written (PNG and SVG)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for indicator in indicators or report.indicator_ids():
        if any(v is not None for _, v in report.trend(indicator)):
            written += trend_chart(report, indicator, out_dir / f"trend_{indicator}")
        if report.villages and any(report.value(indicator, code) is not None for code in report.villages):
            written += village_chart(report, indicator, out_dir / f"villages_{indicator}")
    return written
