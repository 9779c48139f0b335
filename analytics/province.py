"""The comparison a province or city bureau publishes: every county in scope side by side for a period.

`compare(session, rollups, counties, period)` returns, per county, the monitored indicators computed
the same way for every county, the yearly statistics the composite index is built from, the
composite index (entropy weights over the compared counties, analytics.entropy) and a rank per
indicator and overall.

Scale. A province holds about 100 counties of 1,000 devices each, so the comparison never reads a
device's series: per device kind ONE InfluxQL query over the county rollups (`soil_county_1d`...,
analytics/rollups.py: each closed day's readings and device-days with readings summed per county
when the day is rolled up) sums the period per county, and the registry answers, while InfluxDB
does, in two aggregate SQL queries (SQLite and PostgreSQL alike): active device-days per county,
kind and first and last active day of the period (`_active_days`), and plots covered at the
period's end per county (`_plots`). Reading 100 counties costs 5 queries to InfluxDB and 2 to the
registry, whatever the number of devices (`village bench province` times it).

Definitions (the county dashboard's, analytics/compute.py, over the period's closed local days):
- device_online_rate: device-days with a reading / active device-days (a device is active on a day
  when provisioned before it starts and not revoked before it ends). For the current period the
  county dashboard shows who is online now; a comparison of counties uses the days, for every
  period alike.
- data_completeness: readings / expected readings (the catalogue interval over the active
  device-days); a county's readings of a kind are the largest of its metrics' summed counts (the
  county dashboard takes the largest per device-day and caps each device-day at its expected
  readings; here the cap is per county and kind: the same figure unless devices send faster than
  their catalogue interval or drop single metrics).
- plot_device_share, device_coverage: plots (and their area in mu) with an active device at the
  period's end.
- The composite index (dvi by default) and its members come from the imported county statistics
  (yearly): the latest year not after the period's year in which at least two compared counties
  have every member; the entropy weights are pooled over every year of the compared counties.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import and_, case, func, literal, not_, null, or_, union_all
from sqlmodel import Session, col, select

from analytics.catalogue import Catalogue, get_catalogue
from analytics.entropy import composite_index
from analytics.periods import Period, local_midnight
from analytics.rollups import COUNTY_RES, Rollups, ident
from analytics.statistics_io import load_statistics, to_wide
from core.models import Animal, County, Device, DeviceStatus, Herd, Plot, Township, Village

MONITORED = ("device_online_rate", "data_completeness", "plot_device_share", "device_coverage")
DEFAULT_INDEX = "dvi"


@dataclass(frozen=True)
class CountyInfo:
    code: str
    name_zh: str
    name_en: str


def counties_under(session: Session, prefixes: set[str] | list[str]) -> list[CountyInfo]:
    """The registry's counties whose code starts with one of `prefixes` (a county's own code matches it)."""
    out = []
    for c in session.exec(select(County).order_by(col(County.code))):
        if any(c.code.startswith(p) for p in prefixes):
            out.append(CountyInfo(c.code, c.name_zh or c.code, c.name_en or ""))
    return out


# ---------------------------------------------------------------- registry: devices and plots per county


def _village_county(session: Session, codes: list[str]) -> dict[str, str]:
    """village code -> county code of the villages of `codes` (the demo's province loader uses it)."""
    rows = session.exec(
        select(Village.code, Township.county_code)
        .join(Township, col(Township.code) == col(Village.township_code))
        .where(col(Township.county_code).in_(codes))
    ).all()
    return dict(rows)


def _utc(moment: datetime) -> datetime:
    """A bound compared with the registry's datetimes (UTCDateTime: stored in UTC; SQLite keeps no offset,
    so the values must be UTC for its text comparison to order them)."""
    return moment.astimezone(UTC)


def _since() -> Any:
    """A device's activation time in SQL: provisioned (else created), none when inactive or revoked undated."""
    status, revoked = col(Device.status), col(Device.revoked_at)
    never = or_(status == DeviceStatus.inactive, and_(status == DeviceStatus.revoked, revoked.is_(None)))
    return case((never, null()), else_=func.coalesce(col(Device.provisioned_at), col(Device.created_at)))


def _attached(codes: list[str]) -> Any:
    """county, kind, since, until of every device of the counties (plot, herd or animal; one UNION ALL)."""
    cols = (col(Device.kind).label("kind"), _since().label("since"), col(Device.revoked_at).label("until"))

    def in_counties(query: Any, village_code: Any) -> Any:
        return (
            query.join(Village, col(Village.code) == village_code)
            .join(Township, col(Township.code) == col(Village.township_code))
            .where(col(Township.county_code).in_(codes))
        )

    devices = select(col(Township.county_code).label("county"), *cols).select_from(Device)
    on_plot = in_counties(devices.join(Plot, col(Plot.id) == col(Device.plot_id)), col(Plot.village_code))
    on_herd = in_counties(devices.join(Herd, col(Herd.id) == col(Device.herd_id)), col(Herd.village_code))
    on_animal = in_counties(
        devices.join(Animal, col(Animal.id) == col(Device.animal_id)).join(Herd, col(Herd.id) == col(Animal.herd_id)),
        col(Herd.village_code),
    )
    return union_all(on_plot, on_herd, on_animal).subquery("attached")


def _active_days(session: Session, codes: list[str], bounds: list[datetime]) -> tuple[pd.DataFrame, pd.Series]:
    """Per county and kind: active device-days and active device-seconds over the days between `bounds`;
    and per county the devices. One aggregate query, nothing read per device: a device is active on the
    days i with since <= start_i and (no until or until >= end_i), a run of days from its first day
    (the first start not before since) to its last (the last end not after until), so the query counts
    devices per county, kind, first and last day index (CASE over the day bounds) and the day-seconds
    come from the run of days."""
    empty = pd.DataFrame(columns=["county", "kind", "active_days", "active_s"])
    if not codes:
        return empty, pd.Series(dtype=int)
    sub = _attached(codes)
    n = max(0, len(bounds) - 1)
    if n:
        starts = [_utc(b) for b in bounds[:-1]]
        ends = [_utc(b) for b in bounds[1:]]
        first = case(*[(sub.c.since <= s, i) for i, s in enumerate(starts)], else_=n)
        last_whens = [(sub.c.until >= ends[i], i) for i in reversed(range(n))]
        last = case((sub.c.until.is_(None), n - 1), *last_whens, else_=-1)
    else:
        first, last = literal(0), literal(-1)
    first, last = first.label("first_day"), last.label("last_day")
    rows = session.exec(
        select(sub.c.county, sub.c.kind, first, last, func.count().label("devices")).group_by(
            sub.c.county, sub.c.kind, first, last
        )
    ).all()
    frame = pd.DataFrame(rows, columns=["county", "kind", "first", "last", "devices"])
    devices = frame.groupby("county")["devices"].sum() if len(frame) else pd.Series(dtype=int)
    if not n or frame.empty:
        return empty, devices
    day_s = [(b - a).total_seconds() for a, b in zip(starts, ends, strict=True)]  # UTC: DST days differ
    cum = np.concatenate([[0.0], np.cumsum(day_s)])
    first_i, last_i = frame["first"].to_numpy(dtype=int), frame["last"].to_numpy(dtype=int)
    days = np.maximum(0, last_i - first_i + 1)
    seconds = np.where(days > 0, cum[np.clip(last_i + 1, 0, n)] - cum[np.clip(first_i, 0, n)], 0.0)
    frame["active_days"] = days * frame["devices"]
    frame["active_s"] = seconds * frame["devices"]
    active = frame.groupby(["county", "kind"], as_index=False)[["active_days", "active_s"]].sum()
    return active, devices


def _plots(session: Session, codes: list[str], moment: datetime) -> pd.DataFrame:
    """Per county: plots, plots with a device active at `moment`, their areas (one aggregate query)."""
    t = _utc(moment)
    status, revoked = col(Device.status), col(Device.revoked_at)
    since = func.coalesce(col(Device.provisioned_at), col(Device.created_at))
    covered = (
        select(col(Device.plot_id).label("plot_id"))
        .where(
            col(Device.plot_id).is_not(None),
            status != DeviceStatus.inactive,
            not_(and_(status == DeviceStatus.revoked, revoked.is_(None))),
            since <= t,
            or_(revoked.is_(None), revoked > t),
        )
        .distinct()
        .subquery("covered")
    )
    is_covered = covered.c.plot_id.is_not(None)
    rows = session.exec(
        select(
            col(Township.county_code),
            func.count(col(Plot.id)),
            func.sum(case((is_covered, 1), else_=0)),
            func.coalesce(func.sum(col(Plot.area_mu)), 0.0),
            func.coalesce(func.sum(case((is_covered, col(Plot.area_mu)), else_=0.0)), 0.0),
        )
        .join(Village, col(Village.code) == col(Plot.village_code))
        .join(Township, col(Township.code) == col(Village.township_code))
        .outerjoin(covered, covered.c.plot_id == col(Plot.id))
        .where(col(Township.county_code).in_(codes))
        .group_by(col(Township.county_code))
    ).all()
    plots = pd.DataFrame(rows, columns=["county", "plots", "covered", "area", "area_with"]).set_index("county")
    return plots.astype({"plots": int, "covered": int, "area": float, "area_with": float})


# ---------------------------------------------------------------- telemetry: one query per kind


def _telemetry_query(rollups: Rollups, kind: str, prefixes: list[str], start_ms: int, end_ms: int) -> str:
    """Readings and device-days per county over the period, from the county rollups (one point per county
    and day): InfluxDB 1.x opens a cursor per series, so the daily rollups' 100,000 device series would
    cost it minutes where 100 county series cost milliseconds."""
    alternatives = "|".join(sorted(prefixes))
    where = f'time >= {start_ms}ms AND time < {end_ms}ms AND "county" =~ /^({alternatives})/'
    metrics = rollups.metrics(kind)
    fields = ", ".join(f"sum({ident('count_' + m)}) AS {ident('s_' + m)}" for m in metrics)
    days = ", ".join(f"sum({ident('days_' + m)}) AS {ident('n_' + m)}" for m in metrics)
    return f'SELECT {fields}, {days} FROM {rollups.source(kind, COUNTY_RES)} WHERE {where} GROUP BY "county"'


def _telemetry_rows(rollups: Rollups, kind: str, answer: list[dict[str, Any]]) -> list[tuple[str, str, float, float]]:
    """county, kind, readings (largest metric count summed), reporting (device-days with data)."""
    metrics = rollups.metrics(kind)
    rows = []
    for series in answer:
        county = (series.get("tags") or {}).get("county")
        columns = series.get("columns", [])
        for values in series.get("values", []):
            rec = dict(zip(columns, values, strict=False))
            readings = max((rec.get(f"s_{m}") or 0) for m in metrics)
            reporting = max((rec.get(f"n_{m}") or 0) for m in metrics)
            rows.append((county, kind, float(readings), float(reporting)))
    return rows


# ---------------------------------------------------------------- the comparison


def _pct(num: float, den: float) -> float | None:
    return None if den <= 0 else round(100.0 * num / den, 4)


def _ranks(values: dict[str, float | None], higher_is_better: bool) -> dict[str, int | None]:
    known = sorted(((v, c) for c, v in values.items() if v is not None), reverse=higher_is_better)
    ranks: dict[str, int | None] = dict.fromkeys(values)
    rank, last = 0, None
    for i, (v, c) in enumerate(known):
        if v != last:
            rank, last = i + 1, v
        ranks[c] = rank
    return ranks


def _composite(
    session: Session, codes: list[str], year: int, index_id: str, catalogue: Catalogue
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """The composite index over the compared counties: (summary with weights, county -> member values and score)."""
    index = catalogue.index(index_id)
    members = [m.indicator for m in index.members]
    base: dict[str, Any] = {"index": index.id, "name_zh": index.name_zh, "name_en": index.name_en, "members": members}
    long = load_statistics(session, counties=codes, indicators=members)
    if long.empty:
        return {**base, "year": None, "reason": "no county statistics imported for these counties"}, {}
    wide = to_wide(long).reindex(columns=members).dropna()
    wide = wide[wide.index.get_level_values("year") <= year]
    per_year = wide.groupby(level="year").size()
    years = [y for y, n in per_year.items() if n >= 2]
    if not years:
        return {**base, "year": None, "reason": "fewer than two compared counties have every member in any year"}, {}
    stat_year = int(max(years))
    result = composite_index(wide, index, catalogue=catalogue)
    per_county: dict[str, dict[str, float]] = {}
    that_year = wide.xs(stat_year, level="year")  # one cross-section, not a lookup per county and member
    member_values = {str(c): dict(zip(members, map(float, row), strict=True)) for c, row in that_year.iterrows()}
    for (county, y), score in result.scores.items():
        if int(y) == stat_year:
            row = dict(member_values[str(county)])
            row[index.id] = round(float(score), 4)
            per_county[str(county)] = row
    summary = {
        **base,
        "year": stat_year,
        "method": result.method,
        "objects": int(result.m),
        "pooled_years": sorted(int(y) for y in per_year.index),
        "weights": [
            {"indicator": ind, "dimension": r["dimension"], "weight": round(float(r["weight"]), 6)}
            for ind, r in result.weights.iterrows()
        ],
        "dimension_weights": {k: round(float(v), 6) for k, v in result.dimension_weights.items()},
    }
    return summary, per_county


def compare(
    session: Session,
    rollups: Rollups,
    counties: list[CountyInfo],
    period: Period,
    *,
    prefixes: list[str] | None = None,
    now: datetime | None = None,
    index_id: str = DEFAULT_INDEX,
    catalogue: Catalogue | None = None,
) -> dict[str, Any]:
    """Every county of `counties` side by side for `period` (see the module docstring)."""
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    catalogue = catalogue or get_catalogue()
    now = (now or datetime.now(UTC)).astimezone(UTC)
    codes = [c.code for c in counties]
    prefixes = prefixes or codes
    end = period.closed_end(now)
    days = [period.start + timedelta(days=i) for i in range(max(0, (end - period.start).days))]
    bounds = [local_midnight(d, period.tz) for d in [*days, end]] if days else []
    t_end = min(period.end_dt(), now)

    # the InfluxDB queries (one per device kind) run while the registry is read: both cores work
    kinds = list(rollups.kinds) if bounds and codes else []
    start_ms = int(bounds[0].timestamp() * 1000) if bounds else 0
    end_ms = int(bounds[-1].timestamp() * 1000) if bounds else 0
    with ThreadPoolExecutor(max_workers=4) as pool:
        pending = {
            k: pool.submit(rollups.influx.query, _telemetry_query(rollups, k, prefixes, start_ms, end_ms))
            for k in kinds
        }
        active, device_count = _active_days(session, codes, bounds)
        plots = _plots(session, codes, t_end) if codes else pd.DataFrame()
        timings["registry_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        rows = [r for k, f in pending.items() for r in _telemetry_rows(rollups, k, f.result())]
    telemetry = pd.DataFrame(rows, columns=["county", "kind", "readings", "reporting"])
    timings["influx_wait_s"] = time.perf_counter() - t1
    timings["influx_queries"] = len(kinds)

    t2 = time.perf_counter()
    intervals = {k: v.interval_s for k, v in rollups.catalogue.kinds.items()}
    merged = active.merge(telemetry, on=["county", "kind"], how="left").fillna({"readings": 0.0, "reporting": 0.0})
    merged["expected"] = merged["active_s"] / merged["kind"].map(intervals).astype(float)
    merged["counted"] = np.minimum(merged["readings"], merged["expected"])
    merged["reporting"] = np.minimum(merged["reporting"], merged["active_days"])
    per_county = merged.groupby("county")[["active_days", "reporting", "expected", "counted", "readings"]].sum()

    values: dict[str, dict[str, float | None]] = {c: {} for c in codes}
    inputs: dict[str, dict[str, dict[str, Any]]] = {c: {} for c in codes}
    for c in codes:
        t = per_county.loc[c] if c in per_county.index else None
        p = plots.loc[c] if c in plots.index else None
        ad, rep = (float(t["active_days"]), float(t["reporting"])) if t is not None else (0.0, 0.0)
        exp, got = (float(t["expected"]), float(t["counted"])) if t is not None else (0.0, 0.0)
        values[c]["device_online_rate"] = _pct(rep, ad)
        inputs[c]["device_online_rate"] = {"device_days_reporting": int(rep), "active_device_days": int(ad)}
        values[c]["data_completeness"] = _pct(got, exp)
        inputs[c]["data_completeness"] = {"readings_counted": round(got), "readings_expected": round(exp)}
        n_plots, covered = (int(p["plots"]), int(p["covered"])) if p is not None else (0, 0)
        area, area_with = (float(p["area"]), float(p["area_with"])) if p is not None else (0.0, 0.0)
        values[c]["plot_device_share"] = _pct(covered, n_plots)
        inputs[c]["plot_device_share"] = {"plots_with_active_device": covered, "plots": n_plots}
        values[c]["device_coverage"] = _pct(area_with, area)
        inputs[c]["device_coverage"] = {"area_mu_with_active_device": round(area_with, 2), "area_mu": round(area, 2)}
    timings["compute_s"] = time.perf_counter() - t2

    t3 = time.perf_counter()
    composite, stats = _composite(session, codes, period.year, index_id, catalogue) if codes else ({}, {})
    timings["composite_s"] = time.perf_counter() - t3
    members = composite.get("members", [])
    for c in codes:
        for m in members:
            values[c][m] = stats.get(c, {}).get(m)
        values[c][index_id] = stats.get(c, {}).get(index_id)

    ids = [*MONITORED, index_id, *members]
    definitions = []
    ranks: dict[str, dict[str, int | None]] = {}
    for ind_id in ids:
        if ind_id == index_id:
            index = catalogue.index(index_id)
            d = {"id": index.id, "name_zh": index.name_zh, "name_en": index.name_en, "unit": index.unit}
            d |= {"direction": "higher_is_better", "source": "composite"}
        else:
            ind = catalogue.indicator(ind_id)
            d = {"id": ind.id, "name_zh": ind.name_zh, "name_en": ind.name_en, "unit": ind.unit}
            d |= {"direction": ind.direction, "source": "statistics" if ind_id in members else ind.source}
        definitions.append(d)
        ranks[ind_id] = _ranks({c: values[c][ind_id] for c in codes}, d["direction"] == "higher_is_better")

    rows = []
    for info in counties:
        c = info.code
        rows.append(
            {
                "code": c,
                "name_zh": info.name_zh,
                "name_en": info.name_en,
                "devices": int(device_count.get(c, 0)),
                "rank": ranks[index_id][c],
                "values": values[c],
                "ranks": {i: ranks[i][c] for i in ids},
                "inputs": inputs[c],
            }
        )

    # overall order: by the composite index, then by the monitored indicators' mean rank, then by code
    def order(r: dict[str, Any]) -> tuple[int, float, str]:
        known = [r["ranks"][i] for i in MONITORED if r["ranks"][i] is not None]
        mean_rank = sum(known) / len(known) if known else float("inf")
        return (r["rank"] if r["rank"] is not None else 10**9, mean_rank, r["code"])

    rows.sort(key=order)
    return {
        "period": {"label": period.label, "start": period.start.isoformat(), "end": period.end.isoformat()},
        "days": len(days),
        "computed_at": now.isoformat(timespec="seconds"),
        "indicators": definitions,
        "counties": rows,
        "composite": composite,
        "seconds": round(time.perf_counter() - t0, 4),
        "timings": {k: round(v, 4) if isinstance(v, float) else v for k, v in timings.items()},
    }


def table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per county (the CSV and the first Excel sheet): rank, code, name, every indicator."""
    out = []
    for r in result["counties"]:
        row: dict[str, Any] = {
            "period": result["period"]["label"],
            "rank": r["rank"],
            "county_code": r["code"],
            "county": f"{r['name_zh']} {r['name_en']}".strip(),
            "devices": r["devices"],
        }
        for d in result["indicators"]:
            row[d["id"]] = r["values"].get(d["id"])
            row[f"{d['id']}_rank"] = r["ranks"].get(d["id"])
        out.append(row)
    return out


def weight_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    comp = result.get("composite") or {}
    return [{"index": comp.get("index"), "year": comp.get("year"), **w} for w in comp.get("weights", [])]
