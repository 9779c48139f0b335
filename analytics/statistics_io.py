"""County statistics from CSV files: validated, all-or-nothing, idempotent upserts.

Two layouts are accepted; the header decides which one a file uses:

long (one value per row; what `village stats import` documents and the demo file uses)::

    county_code,year,indicator_id,value[,unit][,source][,county_name]
    211122,2022,rural_5g_coverage,81.5,%,county statistical yearbook 2023

wide (one county-year per row, one column per indicator id; empty cells are missing values)::

    county_code,year[,source][,county_name],rural_5g_coverage,internet_penetration,...

`unit`, when given, must be the catalogue's unit (values are never converted); `source` is a note
kept with each value (the `--source` option supplies one for a whole file); `county_name` is for
people reading the file and is ignored. Everything is checked before anything is written, and every
problem is reported with its line and column: an unknown indicator, an indicator computed from our
own data (source other than statistics), a malformed or unknown county code (known: the registry's
counties and `data/divisions.yaml`), a year outside 1949..this year, a value that is not a number,
a value outside the indicator's valid range (percentages 0..100, counts >= 0), a unit that differs
from the catalogue and a repeated county/year/indicator. Importing the same file twice changes nothing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Literal

import pandas as pd
import yaml
from sqlalchemy import insert
from sqlmodel import Session, col, select

from analytics.catalogue import Catalogue, get_catalogue
from analytics.models import CountyStatistic
from core.importing import ImportErrors, RowError, csv_lines
from core.models import County
from core.scope import Scope

DATA = Path(__file__).with_name("data")
DEMO_FILE = DATA / "demo_statistics.csv"
DIVISIONS_FILE = DATA / "divisions.yaml"
MIN_YEAR = 1949
KEY_COLUMNS = ("county_code", "year")
LONG_COLUMNS = ("county_code", "year", "indicator_id", "value")
OPTIONAL_COLUMNS = ("unit", "source", "county_name")
CODE = re.compile(r"^\d{6}$")
Layout = Literal["auto", "long", "wide"]


# ---------------------------------------------------------------- errors and results


class StatisticsImportError(ImportErrors):
    """The file was rejected and nothing was imported; `errors` lists every problem found, each
    a core.importing.RowError whose `field` is the column."""


@dataclass(frozen=True)
class StatValue:
    county_code: str
    year: int
    indicator_id: str
    value: float
    unit: str
    source_note: str | None
    line: int

    @property
    def key(self) -> tuple[str, int, str]:
        return self.county_code, self.year, self.indicator_id


@dataclass
class StatisticsImportResult:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    counties: set[str] = field(default_factory=set)
    years: set[int] = field(default_factory=set)
    indicators: set[str] = field(default_factory=set)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated)

    def summary(self) -> str:
        total = self.created + self.updated + self.unchanged
        if not total:
            return "nothing to import"
        years = f"{min(self.years)}-{max(self.years)}" if self.years else "-"
        return (
            f"{total} values ({len(self.counties)} divisions, years {years}, {len(self.indicators)} indicators): "
            f"{self.created} new, {self.updated} updated, {self.unchanged} unchanged"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "counties": sorted(self.counties),
            "years": sorted(self.years),
            "indicators": sorted(self.indicators),
        }


# ---------------------------------------------------------------- divisions


@dataclass(frozen=True)
class Division:
    code: str
    level: str
    name_zh: str
    name_en: str


@lru_cache
def load_divisions(path: Path = DIVISIONS_FILE) -> dict[str, Division]:
    """The division codes bundled with the analytics (Liaoning), code -> Division."""
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    return {str(d["code"]): Division(str(d["code"]), d["level"], d["name_zh"], d["name_en"]) for d in doc["divisions"]}


def is_county_level(code: str) -> bool:
    """A county-level code does not end in 00 (prefectures end in 00, provinces in 0000)."""
    return not code.endswith("00")


def known_county_codes(session: Session | None = None) -> set[str]:
    """Codes statistics may be imported for: the bundled divisions and the registry's counties."""
    codes = set(load_divisions())
    if session is not None:
        codes |= set(session.exec(select(County.code)))
    return codes


def county_names(session: Session | None = None) -> dict[str, str]:
    """Code -> a display name ('盘山县 Panshan County'), the registry's names winning."""
    names = {code: f"{d.name_zh} {d.name_en}" for code, d in load_divisions().items()}
    if session is not None:
        for c in session.exec(select(County)):
            names[c.code] = f"{c.name_zh} {c.name_en}".strip()
    return names


# ---------------------------------------------------------------- parsing and validation


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value


def parse_statistics(
    path: Path,
    *,
    catalogue: Catalogue | None = None,
    known_counties: set[str] | None = None,
    layout: Layout = "auto",
    source_note: str | None = None,
    max_year: int | None = None,
) -> list[StatValue]:
    """Read and check a statistics CSV; raise StatisticsImportError listing every problem.

    `known_counties=None` checks only the form of county codes, not that they exist.
    """
    catalogue = catalogue or get_catalogue()
    max_year = max_year or date.today().year
    src = str(path)
    try:
        rows = csv_lines(path)
    except ImportErrors as e:
        raise StatisticsImportError(e.errors) from e
    if not rows:
        raise StatisticsImportError([_error(src, 1, None, "empty file: expected a header row")])
    header_line, header = rows[0]
    header = [h.strip() for h in header]
    checker = _Checker(src, catalogue, known_counties, max_year, source_note)
    resolved = _layout(header, layout)
    if resolved is None:
        missing = [c for c in KEY_COLUMNS if c not in header]
        raise StatisticsImportError(
            [
                _error(
                    src,
                    header_line,
                    None,
                    f"missing column(s) {', '.join(missing) or 'indicator_id, value'}: a long file has the columns "
                    f"{', '.join(LONG_COLUMNS)}; a wide file has county_code, year and one column per indicator id",
                )
            ]
        )
    if resolved == "long":
        checker.check_long_header(header, header_line)
    else:
        checker.check_wide_header(header, header_line)
    for line, cells in rows[1:]:
        if not any(c.strip() for c in cells):
            continue
        if len(cells) > len(header):
            checker.error(line, None, f"{len(cells)} cells but the header has {len(header)} columns")
            continue
        row = {h: c.strip() for h, c in zip(header, cells, strict=False)}
        if resolved == "long":
            checker.long_row(line, row)
        else:
            checker.wide_row(line, row, header)
    if checker.errors:
        raise StatisticsImportError(checker.errors)
    return checker.values


def _error(src: str, line: int | None, column: str | None, message: str) -> RowError:
    return RowError(src, line, "statistics", None, column, message)


def _layout(header: list[str], layout: Layout) -> Literal["long", "wide"] | None:
    has_keys = all(c in header for c in KEY_COLUMNS)
    is_long = has_keys and "indicator_id" in header and "value" in header
    if layout == "long":
        return "long" if is_long else None
    if layout == "wide":
        return "wide" if has_keys and not is_long else None
    return "long" if is_long else ("wide" if has_keys else None)


class _Checker:
    def __init__(self, src: str, catalogue: Catalogue, known: set[str] | None, max_year: int, note: str | None) -> None:
        self.src, self.catalogue, self.known, self.max_year, self.note = src, catalogue, known, max_year, note
        self.by_id = catalogue.by_id
        self.errors: list[RowError] = []
        self.values: list[StatValue] = []
        self.seen: dict[tuple[str, int, str], int] = {}
        self.bad_columns: set[str] = set()

    def error(self, line: int | None, column: str | None, message: str) -> None:
        self.errors.append(_error(self.src, line, column, message))

    def _duplicates(self, header: list[str], line: int) -> None:
        for h in sorted({h for h in header if header.count(h) > 1}):
            self.error(line, h, "column appears more than once")

    def check_long_header(self, header: list[str], line: int) -> None:
        self._duplicates(header, line)
        for h in header:
            if h not in LONG_COLUMNS and h not in OPTIONAL_COLUMNS:
                expected = f"{', '.join(LONG_COLUMNS)} and optionally {', '.join(OPTIONAL_COLUMNS)}"
                self.error(line, h or "(empty)", f"unknown column; a long file has {expected}")

    def check_wide_header(self, header: list[str], line: int) -> None:
        self._duplicates(header, line)
        for h in header:
            if h in KEY_COLUMNS or h in ("source", "county_name"):
                continue
            problem = self._indicator_problem(h)
            if problem:
                self.error(line, h or "(empty)", problem)
                self.bad_columns.add(h)

    def _indicator_problem(self, indicator_id: str) -> str | None:
        ind = self.by_id.get(indicator_id)
        if ind is None:
            return f"unknown indicator {indicator_id!r} (not in analytics/indicators.yaml)"
        if ind.source != "statistics":
            return f"indicator {indicator_id!r} is computed from {ind.source} data, not imported"
        return None

    def _key(self, line: int, row: dict[str, str]) -> tuple[str, int] | None:
        ok = True
        code = row.get("county_code", "")
        if not CODE.match(code):
            self.error(line, "county_code", f"malformed county code {code!r}: expected 6 digits")
            ok = False
        elif self.known is not None and code not in self.known:
            self.error(
                line,
                "county_code",
                f"unknown county code {code!r}: not in the registry nor in analytics/data/divisions.yaml "
                "(add the county with `village registry import` first)",
            )
            ok = False
        text = row.get("year", "")
        year = int(text) if re.fullmatch(r"\d{4}", text) else None
        if year is None:
            self.error(line, "year", f"malformed year {text!r}: expected four digits")
            ok = False
        elif not MIN_YEAR <= year <= self.max_year:
            self.error(line, "year", f"year {year} outside {MIN_YEAR}..{self.max_year}")
            ok = False
        return (code, year) if ok and year is not None else None

    def _value(self, line: int, column: str, indicator_id: str, text: str, key: tuple[str, int] | None) -> None:
        number = _number(text)
        if number is None or not math.isfinite(number):
            self.error(line, column, f"{indicator_id}: {text!r} is not a number")
            return
        ind = self.by_id[indicator_id]
        problem = ind.check(number)
        if problem:
            self.error(line, column, f"{indicator_id}: {problem}")
            return
        if key is None:
            return
        full_key = (key[0], key[1], indicator_id)
        if full_key in self.seen:
            self.error(
                line, column, f"{indicator_id} for {key[0]} {key[1]} already given at line {self.seen[full_key]}"
            )
            return
        self.seen[full_key] = line
        self.values.append(StatValue(key[0], key[1], indicator_id, number, ind.unit, self.note, line))

    def long_row(self, line: int, row: dict[str, str]) -> None:
        key = self._key(line, row)
        indicator_id = row.get("indicator_id", "")
        problem = self._indicator_problem(indicator_id)
        if problem:
            self.error(line, "indicator_id", problem)
            return
        unit = row.get("unit", "")
        expected = self.by_id[indicator_id].unit
        if unit and unit != expected:
            self.error(line, "unit", f"{indicator_id}: unit {unit!r} differs from the catalogue's {expected!r}")
            return
        text = row.get("value", "")
        if text == "":
            self.error(line, "value", f"{indicator_id}: missing value")
            return
        note = row.get("source") or self.note
        before = len(self.values)
        self._value(line, "value", indicator_id, text, key)
        if len(self.values) > before and note != self.note:
            v = self.values[-1]
            self.values[-1] = StatValue(v.county_code, v.year, v.indicator_id, v.value, v.unit, note, v.line)

    def wide_row(self, line: int, row: dict[str, str], header: list[str]) -> None:
        key = self._key(line, row)
        note = row.get("source") or self.note
        before = len(self.values)
        for h in header:
            if h in KEY_COLUMNS or h in ("source", "county_name") or h in self.bad_columns:
                continue
            text = row.get(h, "")
            if text != "":
                self._value(line, h, h, text, key)
        if note != self.note:
            self.values[before:] = [
                StatValue(v.county_code, v.year, v.indicator_id, v.value, v.unit, note, v.line)
                for v in self.values[before:]
            ]


# ---------------------------------------------------------------- database


def upsert_statistics(session: Session, values: list[StatValue]) -> StatisticsImportResult:
    """Insert or update checked values (the caller commits); equal values are left untouched."""
    result = StatisticsImportResult()
    if not values:
        return result
    counties = {v.county_code for v in values}
    indicators = {v.indicator_id for v in values}
    existing = {
        (s.county_code, s.year, s.indicator_id): s
        for s in session.exec(
            select(CountyStatistic).where(
                col(CountyStatistic.county_code).in_(counties), col(CountyStatistic.indicator_id).in_(indicators)
            )
        )
    }
    now = datetime.now(UTC)
    new_rows: list[dict[str, object]] = []
    for v in values:
        result.counties.add(v.county_code)
        result.years.add(v.year)
        result.indicators.add(v.indicator_id)
        row = existing.get(v.key)
        if row is None:
            new_rows.append(
                {
                    "county_code": v.county_code,
                    "year": v.year,
                    "indicator_id": v.indicator_id,
                    "value": v.value,
                    "unit": v.unit,
                    "source_note": v.source_note,
                    "updated_at": now,
                }
            )
            result.created += 1
        elif (row.value, row.unit, row.source_note) != (v.value, v.unit, v.source_note):
            row.value, row.unit, row.source_note, row.updated_at = v.value, v.unit, v.source_note, now
            session.add(row)
            result.updated += 1
        else:
            result.unchanged += 1
    if new_rows:  # one executemany: thousands of yearbook values import in well under a second
        session.execute(insert(CountyStatistic), new_rows)
    session.flush()
    return result


def import_statistics(
    session: Session,
    path: Path,
    *,
    layout: Layout = "auto",
    source_note: str | None = None,
    catalogue: Catalogue | None = None,
    scope: Scope | None = None,
) -> StatisticsImportResult:
    """Check a statistics CSV against the catalogue and the known counties, then upsert it (caller commits).
    With `scope` (core/scope.py), every value must be of a county in the actor's area (an analyst none)."""
    values = parse_statistics(
        path,
        catalogue=catalogue,
        known_counties=known_county_codes(session),
        layout=layout,
        source_note=source_note,
    )
    if scope is not None and scope.area is not None:
        writer = scope.may_write("county")  # statistics are a county's, like its divisions
        outside = [v for v in values if not scope.area.covers(v.county_code)]
        if writer or outside:
            raise StatisticsImportError(
                [RowError(str(path), None, "statistics", None, None, writer, "forbidden")]
                if writer
                else [
                    RowError(
                        str(path),
                        v.line,
                        "statistics",
                        None,
                        "county_code",
                        f"county {v.county_code} is outside your area ({scope.label})",
                        "forbidden",
                    )
                    for v in outside
                ]
            )
    return upsert_statistics(session, values)


def load_demo(session: Session) -> StatisticsImportResult:
    """The illustrative Liaoning county panel (`data/demo_statistics.csv`); safe to repeat."""
    return import_statistics(session, DEMO_FILE)


def load_statistics(
    session: Session,
    *,
    counties: Iterable[str] | None = None,
    years: Iterable[int] | None = None,
    indicators: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Stored statistics as a long frame: county_code, year, indicator_id, value, unit, source_note."""
    c = CountyStatistic
    query = select(c.county_code, c.year, c.indicator_id, c.value, c.unit, c.source_note)  # columns: no ORM objects
    if counties is not None:
        query = query.where(col(CountyStatistic.county_code).in_(list(counties)))
    if years is not None:
        query = query.where(col(CountyStatistic.year).in_(list(years)))
    if indicators is not None:
        query = query.where(col(CountyStatistic.indicator_id).in_(list(indicators)))
    rows = [tuple(r) for r in session.exec(query).all()]
    return pd.DataFrame(rows, columns=["county_code", "year", "indicator_id", "value", "unit", "source_note"])


def read_statistics_frame(path: Path, *, layout: Layout = "auto", catalogue: Catalogue | None = None) -> pd.DataFrame:
    """A statistics CSV, checked, as the long frame `load_statistics` returns (no database needed)."""
    values = parse_statistics(path, catalogue=catalogue, known_counties=known_county_codes(), layout=layout)
    return pd.DataFrame(
        [(v.county_code, v.year, v.indicator_id, v.value, v.unit, v.source_note) for v in values],
        columns=["county_code", "year", "indicator_id", "value", "unit", "source_note"],
    )


def to_wide(long: pd.DataFrame, *, counties_only: bool = True) -> pd.DataFrame:
    """County-year rows (index county_code, year) with one column per indicator; missing values are NaN.

    `counties_only` drops prefecture and province totals (codes ending in 00).
    """
    frame = long
    if counties_only:
        frame = frame[frame["county_code"].map(is_county_level)]
    wide = frame.pivot_table(index=["county_code", "year"], columns="indicator_id", values="value", aggfunc="first")
    wide.columns.name = None
    return wide.sort_index()
