"""Reporting periods: `2026`, `2026-Q3`, `2026-07`, `2026-W27`, `2026-07-15`, `2026-07-01..2026-07-31`.

A period is a range of whole local days [start, end) in the county's time zone (Asia/Shanghai by
default, setting COUNTY_TIMEZONE), so that a reading at 23:30 local time belongs to that local day,
as in the daily rollups. `previous()` is the period of the same kind just before (the quarter before
a quarter, the month before a month, the same number of days before a range): the trend compares
against it.

`parse_period(text, tz, max_days=...)` refuses a longer period with PeriodTooLong: the API caps
reporting periods at MAX_REPORT_DAYS (a year, leap years included), since a computation reads every
device-day of the period and of the periods before it; the CLI allows any length.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

Kind = Literal["year", "quarter", "month", "week", "day", "range"]

_YEAR = re.compile(r"^(\d{4})$")
_QUARTER = re.compile(r"^(\d{4})-?Q([1-4])$", re.IGNORECASE)
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_WEEK = re.compile(r"^(\d{4})-?W(\d{2})$", re.IGNORECASE)
_DAY = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
FORMS = "2026, 2026-Q3, 2026-07, 2026-W27, 2026-07-15 or 2026-07-01..2026-07-31"
MAX_REPORT_DAYS = 366


class PeriodError(ValueError):
    """A period text that cannot be parsed; the message names the accepted forms."""


class PeriodTooLong(PeriodError):
    """A period longer than the caller allows; the message names the limit."""


def zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise PeriodError(f"unknown time zone {tz!r}") from e


@dataclass(frozen=True)
class Period:
    """Local days [start, end) in time zone `tz`; `label` is the text it was parsed from (normalised)."""

    kind: Kind
    start: date
    end: date  # exclusive
    tz: str = "Asia/Shanghai"

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise PeriodError(f"empty period: {self.start} to {self.end}")

    @property
    def label(self) -> str:
        s = self.start
        if self.kind == "year":
            return f"{s.year}"
        if self.kind == "quarter":
            return f"{s.year}-Q{(s.month - 1) // 3 + 1}"
        if self.kind == "month":
            return f"{s.year}-{s.month:02d}"
        if self.kind == "week":
            y, w, _ = s.isocalendar()
            return f"{y}-W{w:02d}"
        if self.kind == "day":
            return s.isoformat()
        return f"{s.isoformat()}..{(self.end - timedelta(days=1)).isoformat()}"

    def __str__(self) -> str:
        return self.label

    @property
    def days(self) -> int:
        return (self.end - self.start).days

    def dates(self) -> list[date]:
        return [self.start + timedelta(days=i) for i in range(self.days)]

    @property
    def year(self) -> int:
        """The calendar year the period ends in (the year of its statistics)."""
        return (self.end - timedelta(days=1)).year

    def years(self) -> list[int]:
        return list(range(self.start.year, self.year + 1))

    def start_dt(self) -> datetime:
        return local_midnight(self.start, self.tz)

    def end_dt(self) -> datetime:
        return local_midnight(self.end, self.tz)

    def start_ms(self) -> int:
        return int(self.start_dt().timestamp() * 1000)

    def end_ms(self) -> int:
        return int(self.end_dt().timestamp() * 1000)

    def contains(self, moment: datetime) -> bool:
        return self.start_dt() <= moment < self.end_dt()

    def closed_end(self, now: datetime) -> date:
        """The end of the period's closed days at `now`: days before today (local) have daily rollups."""
        today = now.astimezone(zone(self.tz)).date()
        return max(self.start, min(self.end, today))

    def closed_dates(self, now: datetime) -> list[date]:
        end = self.closed_end(now)
        return [d for d in self.dates() if d < end]

    def previous(self, steps: int = 1) -> Period:
        """The period of the same kind `steps` before this one."""
        p = self
        for _ in range(steps):
            p = p._previous()
        return p

    def _previous(self) -> Period:
        s = self.start
        if self.kind == "year":
            return Period("year", date(s.year - 1, 1, 1), s, self.tz)
        if self.kind in ("quarter", "month"):
            months = 3 if self.kind == "quarter" else 1
            y, m = divmod(s.year * 12 + s.month - 1 - months, 12)
            return Period(self.kind, date(y, m + 1, 1), s, self.tz)
        return Period(self.kind, s - timedelta(days=self.days), s, self.tz)

    def trend(self, count: int) -> list[Period]:
        """This period and the `count` before it, oldest first."""
        return [self.previous(k) for k in range(count, 0, -1)] + [self]


def local_midnight(day: date, tz: str) -> datetime:
    return datetime.combine(day, time(), zone(tz))


def _date(text: str) -> date:
    m = _DAY.match(text.strip())
    if not m:
        raise PeriodError(f"{text!r} is not a date (YYYY-MM-DD)")
    try:
        return date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError as e:
        raise PeriodError(f"{text!r}: {e}") from e


def parse_period(text: str, tz: str = "Asia/Shanghai", max_days: int | None = None) -> Period:
    """Parse a period (see the module docstring); a PeriodError names the accepted forms, a
    PeriodTooLong the limit when the period has more than `max_days` days."""
    period = _parse_period(text, tz)
    if max_days is not None and period.days > max_days:
        raise PeriodTooLong(f"a period is at most {max_days} days; {period.label} has {period.days:,} days")
    return period


def _parse_period(text: str, tz: str) -> Period:
    zone(tz)
    t = text.strip()
    try:
        if ".." in t:
            first, last = t.split("..", 1)
            a, b = _date(first), _date(last)
            if b < a:
                raise PeriodError(f"period {text!r} ends before it starts")
            return Period("range", a, b + timedelta(days=1), tz)
        if m := _YEAR.match(t):
            y = int(m[1])
            return Period("year", date(y, 1, 1), date(y + 1, 1, 1), tz)
        if m := _QUARTER.match(t):
            y, q = int(m[1]), int(m[2])
            end = date(y + 1, 1, 1) if q == 4 else date(y, 3 * q + 1, 1)
            return Period("quarter", date(y, 3 * q - 2, 1), end, tz)
        if m := _MONTH.match(t):
            y, mo = int(m[1]), int(m[2])
            if not 1 <= mo <= 12:
                raise PeriodError(f"{text!r}: month {mo} is not 01..12")
            end = date(y + 1, 1, 1) if mo == 12 else date(y, mo + 1, 1)
            return Period("month", date(y, mo, 1), end, tz)
        if m := _WEEK.match(t):
            start = date.fromisocalendar(int(m[1]), int(m[2]), 1)
            return Period("week", start, start + timedelta(days=7), tz)
        if _DAY.match(t):
            d = _date(t)
            return Period("day", d, d + timedelta(days=1), tz)
    except (ValueError, OverflowError) as e:  # OverflowError: a date past year 9999
        if isinstance(e, PeriodError):
            raise
        raise PeriodError(f"{text!r}: {e}") from e
    raise PeriodError(f"cannot read period {text!r}: use {FORMS}")


def parse_day(text: str) -> date:
    """A single local date (YYYY-MM-DD), for options such as `--since`."""
    return _date(text)
