"""The comparison a province or city bureau publishes: every county in scope side by side for a period.

`compare(session, rollups, counties, period)` returns, per county, the monitored indicators computed
the same way for every county, the yearly statistics the composite index is built from, the
composite index (entropy weights over the compared counties, analytics.entropy) and a rank per
indicator and overall.

Scale. A province holds about 100 counties of 1,000 devices each, so the comparison never reads a
device's series: per device kind ONE InfluxQL query over the county rollups (`soil_county_1d`...,
analytics/rollups.py: each closed day's readings and device-days with readings summed per county
when the day is rolled up) sums the period per county, and the registry gives each county's active
device-days in one SQL
query per device attachment (plot, herd, animal), while InfluxDB answers. Reading 100 counties
costs 5 queries to InfluxDB and a few to the registry, whatever the number of devices (`village
bench province` times it).

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
from sqlmodel import Session, col, select

from analytics.catalogue import Catalogue, get_catalogue
from analytics.periods import Period, local_midnight
from analytics.rollups import COUNTY_RES, Rollups, ident
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
    rows = session.exec(
        select(Village.code, Township.county_code)
        .join(Township, col(Township.code) == col(Village.township_code))
        .where(col(Township.county_code).in_(codes))
    ).all()
    return dict(rows)


def _devices(session: Session, village_county: dict[str, str]) -> pd.DataFrame:
    """county, kind, since, until of every device of the counties (three joins: plot, herd, animal)."""
    villages = list(village_county)
    cols = (Device.kind, Device.status, Device.created_at, Device.provisioned_at, Device.revoked_at)
    queries = [
        select(Plot.village_code, *cols)
        .join(Plot, col(Plot.id) == col(Device.plot_id))
        .where(col(Plot.village_code).in_(villages)),
        select(Herd.village_code, *cols)
        .join(Herd, col(Herd.id) == col(Device.herd_id))
        .where(col(Herd.village_code).in_(villages)),
        select(Herd.village_code, *cols)
        .join(Animal, col(Animal.id) == col(Device.animal_id))
        .join(Herd, col(Herd.id) == col(Animal.herd_id))
        .where(col(Herd.village_code).in_(villages)),
    ]
    rows: list[Any] = []
    for q in queries:
        rows += session.exec(q).all()
    frame = pd.DataFrame(rows, columns=["village", "kind", "status", "created", "provisioned", "revoked"])
    frame["county"] = frame["village"].map(village_county)
    since = frame["provisioned"].where(frame["provisioned"].notna(), frame["created"])
    since = since.where(frame["status"] != DeviceStatus.inactive)
    since = since.where(~((frame["status"] == DeviceStatus.revoked) & frame["revoked"].isna()))
    frame["since"] = pd.to_datetime(since, utc=True)
    frame["until"] = pd.to_datetime(frame["revoked"], utc=True)
    return frame[["county", "kind", "since", "until"]]


def _plots(session: Session, village_county: dict[str, str], devices_at_end: pd.DataFrame) -> pd.DataFrame:
    """Per county: plots, plots with an active device, their areas."""
    plots = pd.DataFrame(
        session.exec(
            select(Plot.id, Plot.village_code, Plot.area_mu).where(col(Plot.village_code).in_(list(village_county)))
        ).all(),
        columns=["id", "village", "area"],
    )
    with_device = set(devices_at_end["plot_id"].dropna().astype(int)) if len(devices_at_end) else set()
    plots["county"] = plots["village"].map(village_county)
    plots["covered"] = plots["id"].isin(with_device)
    plots["area"] = plots["area"].astype(float)
    plots["area_with"] = plots["area"] * plots["covered"]
    return plots.groupby("county").agg(
        plots=("id", "size"), covered=("covered", "sum"), area=("area", "sum"), area_with=("area_with", "sum")
    )


def _plot_devices_at(session: Session, villages: list[str], moment: datetime) -> pd.DataFrame:
    rows = session.exec(
        select(Device.plot_id, Device.status, Device.created_at, Device.provisioned_at, Device.revoked_at)
        .join(Plot, col(Plot.id) == col(Device.plot_id))
        .where(col(Plot.village_code).in_(villages))
    ).all()
    frame = pd.DataFrame(rows, columns=["plot_id", "status", "created", "provisioned", "revoked"])
    if frame.empty:
        return frame
    t = pd.Timestamp(moment)
    since = pd.to_datetime(frame["provisioned"].where(frame["provisioned"].notna(), frame["created"]), utc=True)
    until = pd.to_datetime(frame["revoked"], utc=True)
    ok = (frame["status"] != DeviceStatus.inactive) & (since <= t) & (until.isna() | (until > t))
    ok &= ~((frame["status"] == DeviceStatus.revoked) & frame["revoked"].isna())
    return frame[ok.to_numpy()]


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


def _active_days(devices: pd.DataFrame, bounds: list[datetime]) -> pd.DataFrame:
    """Per county and kind: active device-days and active device-seconds over the days between `bounds`."""
    if devices.empty or len(bounds) < 2:
        return pd.DataFrame(columns=["county", "kind", "active_days", "active_s"])
    since = devices["since"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")
    until = devices["until"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")
    edges = np.array([np.datetime64(b.astimezone(UTC).replace(tzinfo=None), "ns") for b in bounds])
    starts, ends = edges[:-1], edges[1:]
    day_s = (ends - starts).astype("timedelta64[s]").astype(float)
    active = (~np.isnat(since))[:, None] & (since[:, None] <= starts[None, :])
    active &= np.isnat(until)[:, None] | (until[:, None] >= ends[None, :])
    out = devices[["county", "kind"]].copy()
    out["active_days"] = active.sum(axis=1)
    out["active_s"] = active @ day_s
    return out.groupby(["county", "kind"], as_index=False)[["active_days", "active_s"]].sum()


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
    from analytics.entropy import composite_index
    from analytics.statistics_io import load_statistics, to_wide

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
    for (county, y), score in result.scores.items():
        if int(y) == stat_year:
            row = {m: float(wide.loc[(county, y), m]) for m in members}
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
        village_county = _village_county(session, codes) if codes else {}
        devices = _devices(session, village_county) if village_county else pd.DataFrame(columns=["county", "kind"])
        active = _active_days(devices, bounds)
        plots = _plots(session, village_county, _plot_devices_at(session, list(village_county), t_end))
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
    device_count = devices.groupby("county").size() if len(devices) else pd.Series(dtype=int)

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
