"""Indicator reports as CSV and Excel files for officials and researchers.

CSV: one row per scope (the county, then each village) and indicator, with its definition, value,
the previous period's value, the change and the inputs as JSON; UTF-8 with a byte-order mark so that
Excel opens the Chinese names correctly. Excel (openpyxl): sheet `county` (the same rows for the
county), `villages` (one row per village, one column per indicator), `trend` (the county over the
report's periods), and `composite` (the index weights) when there is one.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from openpyxl import Workbook
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter

from analytics.compute import IndicatorReport

COLUMNS = [
    "scope",
    "code",
    "name",
    "period",
    "indicator",
    "name_zh",
    "name_en",
    "dimension",
    "source",
    "unit",
    "direction",
    "value",
    "previous_period",
    "previous",
    "change",
    "inputs",
    "note",
]


def report_rows(report: IndicatorReport) -> list[dict[str, Any]]:
    rows = report.rows()
    for code in report.villages:
        rows += [r for r in report.rows(code) if r["value"] is not None or r["source"] != "statistics"]
    return rows


def _cell(column: str, value: Any) -> Any:
    if column == "inputs":
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return value


def write_csv(report: IndicatorReport, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8-sig", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in report_rows(report):
            writer.writerow({c: _cell(c, row.get(c)) for c in COLUMNS})
    return path


def _sheet(book: Workbook, title: str, header: list[str], rows: list[list[Any]], first: bool = False) -> None:
    ws = book.active if first else book.create_sheet(title)
    assert ws is not None
    ws.title = title
    ws.append(header)
    for cell in ws[1]:
        cell.font = Font(bold=True)
    for row in rows:
        ws.append(row)
    ws.freeze_panes = "B2"
    for i, h in enumerate(header, start=1):
        width = max([len(str(h))] + [len(str(r[i - 1])) for r in rows[:200] if r[i - 1] is not None])
        ws.column_dimensions[get_column_letter(i)].width = min(60, max(8, width + 2))


def write_excel(report: IndicatorReport, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    book = Workbook()
    county_rows = [[_cell(c, r.get(c)) for c in COLUMNS] for r in report.rows()]
    _sheet(book, "county", COLUMNS, county_rows, first=True)
    ids = [i for i in report.indicator_ids() if report.catalogue.indicator(i).source != "statistics"]
    village_rows = [[code, name, *(report.value(i, code) for i in ids)] for code, name in report.villages.items()]
    _sheet(book, "villages", ["village", "name", *ids], village_rows)
    labels = [p.label for p in report.periods]
    trend_rows = []
    for i in report.indicator_ids():
        ind = report.catalogue.indicator(i)
        trend_rows.append([i, ind.name_zh, ind.unit, *(v for _, v in report.trend(i))])
    _sheet(book, "trend", ["indicator", "name_zh", "unit", *labels], trend_rows)
    comp = report.composite
    if comp and comp.get("weights"):
        rows = [[w["indicator"], w["dimension"], w["weight"]] for w in comp["weights"]]
        rows.append(["score", comp.get("year"), comp.get("score")])
        _sheet(book, "composite", ["indicator", "dimension", "weight"], rows)
    book.save(path)
    return path
