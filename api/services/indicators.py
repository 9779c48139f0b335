"""The county indicators for the dashboard: a thin seam over analytics.compute.

`analytics.compute.compute_indicators` does the work (registry, InfluxDB rollups, ledger; trends
over the periods before; village rankings; the composite index); this module picks the period,
narrows the answer to the caller's area and caches it per worker (a computation reads every
device-day of the period from the rollups, so it is not repeated on every page view).

The cache never makes a page wait for a recomputation it has an answer for: a report is fresh for
API_INDICATORS_CACHE_S; after that, for up to STALE_S, the cached report is served and one background
thread recomputes it (stale-while-revalidate). At start-up (API_INDICATORS_WARM) each county's latest
month with readings is computed in the background, so the first dashboard view does not compute either.

Which scope a role sees: county administrators and analysts the county with every village's
ranking; a township officer or village operator one village of their area (with the rankings
narrowed to their villages).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, select

from analytics.compute import compute_indicators
from analytics.periods import MAX_REPORT_DAYS, Period, PeriodError, parse_period
from analytics.rollups import from_settings
from api.services.cache import TtlCache
from core.influx import InfluxError
from core.models import County
from core.settings import Settings

log = logging.getLogger(__name__)
STALE_S = 3600.0  # a report past API_INDICATORS_CACHE_S is served (while recomputed) this long more
DEFAULT_TREND = 5
LOOKBACK_MONTHS = 24  # how far back the dashboard looks for the latest month with readings
FIRST_YEAR, LAST_YEAR = 1970, 3000  # periods the dashboard computes (with DEFAULT_TREND periods before)

_cache = TtlCache(STALE_S, max_entries=200)  # key -> (monotonic time computed, report)
_lock = threading.Lock()  # one computation at a time per worker (each reads the whole period's rollups)
_refreshing: set[Any] = set()
_refreshing_lock = threading.Lock()


def default_period(settings: Settings, now: datetime | None = None) -> str:
    """The current month in the county's time zone, e.g. "2026-07"."""
    from zoneinfo import ZoneInfo

    local = (now or datetime.now(UTC)).astimezone(ZoneInfo(settings.county_timezone))
    return f"{local.year:04d}-{local.month:02d}"


def period_of(text: str | None, settings: Settings) -> Period:
    """A reporting period (2026, 2026-Q3, 2026-07, 2026-W27, a day or a range) of at most MAX_REPORT_DAYS;
    PeriodError with the forms, PeriodTooLong with the limit."""
    period = parse_period(text or default_period(settings), settings.county_timezone, max_days=MAX_REPORT_DAYS)
    if not (period.start.year >= FIRST_YEAR and period.end.year <= LAST_YEAR):  # its trend stays computable
        raise PeriodError(f"a reporting period lies in the years {FIRST_YEAR} to {LAST_YEAR - 1}")
    return period


# inputs that count the readings of a period (analytics.compute): readings stored or rejected
READINGS_INPUTS = (("rejected_reading_rate", "stored_readings"), ("rejected_reading_rate", "dead_letters"))


def has_data(r: Any, period: Period) -> bool:
    """Whether the county's devices reported in `period` (from the rollups). Registry indicators have a
    value in any period, the ledger's count lots by harvest year, and device health is computable for a
    month nobody reported in (every device idle): none of these is data of the period."""
    values = r.scope(None, period).values
    return any((values[i].inputs or {}).get(key, 0) > 0 for i, key in READINGS_INPUTS if i in values)


def latest_period(
    session: Session, settings: Settings, county: str, trend: int = DEFAULT_TREND, now: datetime | None = None
) -> Period:
    """The newest month, from this one back over LOOKBACK_MONTHS, in which the county has readings
    (this month when none has). Each report holds `trend` months before its own, so this computes at
    most LOOKBACK_MONTHS / (trend + 1) reports, all cached."""
    current = period_of(default_period(settings, now), settings)
    label = current.label
    for _ in range(max(1, LOOKBACK_MONTHS // (trend + 1))):
        r = report(session, settings, county, period_of(label, settings), trend)
        for p in reversed(r.periods):
            if has_data(r, p):
                return p
        first = r.periods[0].start
        label = f"{first.year - (first.month == 1):04d}-{(first.month - 2) % 12 + 1:02d}"
        if int(label[:4]) < FIRST_YEAR:
            break
    return current


def report(session: Session, settings: Settings, county: str, period: Period, trend: int = DEFAULT_TREND) -> Any:
    """The analytics IndicatorReport of the county, cached per county, period and trend: fresh for
    API_INDICATORS_CACHE_S, then served while one background thread recomputes it (up to STALE_S)."""
    if settings.api_indicators_cache_s <= 0:
        return _compute(session, settings, county, period, trend)
    key = (settings.resolved_database_url(), county, period.label, trend)
    hit = _cache.get(key)
    if hit is None:
        with _lock:
            hit = _cache.get(key)
            if hit is None:
                return _compute(session, settings, county, period, trend, key)
    computed_at, value = hit
    if time.monotonic() - computed_at > settings.api_indicators_cache_s:
        _refresh_later(session.get_bind(), settings, county, period, trend, key)  # type: ignore[arg-type]
    return value


def _compute(session: Session, settings: Settings, county: str, period: Period, trend: int, key: Any = None) -> Any:
    rollups = from_settings(settings)
    try:
        result = compute_indicators(session, None, county, period, trend=trend, rollups=rollups)
    finally:
        rollups.influx.close()
        rollups.store.close()
    if key is not None:
        _cache.set(key, (time.monotonic(), result), ttl=settings.api_indicators_cache_s + STALE_S)
    return result


def _refresh_later(engine: Engine, settings: Settings, county: str, period: Period, trend: int, key: Any) -> None:
    """Recompute a stale report in a background thread (one per key at a time)."""
    with _refreshing_lock:
        if key in _refreshing:
            return
        _refreshing.add(key)

    def run() -> None:
        try:
            with _lock, Session(engine) as session:
                _compute(session, settings, county, period, trend, key)
        except Exception as e:  # the stale report stays; the next view tries again
            log.warning("indicators of %s %s not refreshed: %s", county, period.label, e)
        finally:
            with _refreshing_lock:
                _refreshing.discard(key)

    threading.Thread(target=run, name=f"indicators-{county}-{period.label}", daemon=True).start()


def warm(engine: Engine, settings: Settings) -> threading.Thread:
    """Compute every county's latest month with readings (what the dashboard opens on) in a background
    thread, so that the first dashboard view after start-up finds it cached."""

    def run() -> None:
        try:
            with Session(engine) as session:
                counties = session.exec(select(County.code).order_by(County.code)).all()
                for county in counties:  # the month the dashboard opens on, and that month's own report
                    report(session, settings, county, latest_period(session, settings, county))
        except Exception as e:  # the dashboard computes on its first view instead
            log.warning("indicators not warmed: %s", e)

    thread = threading.Thread(target=run, name="indicators-warm", daemon=True)
    thread.start()
    return thread


def indicators(
    session: Session,
    settings: Settings,
    county: str,
    villages: set[str],
    *,
    whole_county: bool,
    period: str | None = None,
    village: str | None = None,
    trend: int = DEFAULT_TREND,
) -> dict[str, Any]:
    """What the dashboard shows: the indicators of the county (or of `village`), with trend and rankings.

    `available` is False (with `reason`) when they cannot be computed now (InfluxDB unreachable,
    an unknown period); the rest of the dashboard still shows.
    """
    try:
        p = period_of(period, settings)
    except PeriodError as e:
        raise ValueError(str(e)) from None
    try:
        if period is None:  # the latest month with readings, said on the page
            p = latest_period(session, settings, county, trend)
        r = report(session, settings, county, p, trend)
    except InfluxError as e:
        log.warning("indicators unavailable: %s", e)
        return {"available": False, "reason": "the monitoring database cannot be reached", "period": p.label}
    if village is None and not whole_county:
        village = min(villages) if villages else None
    code = village if village is not None else county
    if code != county and code not in r.villages:
        return {"available": False, "reason": f"no village {code} in county {county}", "period": p.label}
    out = r.to_dict(code)
    rankings = r.to_dict(county).get("rankings", {})
    out["rankings"] = {ind: [row for row in rows if row["village"] in villages] for ind, rows in rankings.items()}
    out["available"] = True
    out["chosen"] = "latest_with_data" if period is None else "requested"
    out["has_data"] = has_data(r, p)
    if not out["has_data"]:  # no readings at all: sensor indicators have no data (not 0 %, not 100 % idle)
        for row in out["indicators"]:
            if row["source"] == "influx" and row["value"] is not None:
                row.update(value=None, change=None, note="no readings in the period")
    return out


def clear() -> None:
    _cache.clear()
