"""A lot's growing season as the sensors saw it: record kind "growth/1".

Computed inside InfluxDB (InfluxQL aggregates with `GROUP BY time(1d)` in the county's time
zone) over the lot's plots for its season: days monitored and data completeness, paddy water
level and soil moisture statistics, growing degree days and rain from the village's weather
stations, and the alerts the crop's thresholds (core/data/crops.yaml) would have raised.
Numbers are rounded (2 decimals) so that a recomputation from the same readings gives the same
record; verification recomputes it and compares.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlmodel import Session, col, select

from core.catalogue import Catalogue
from core.crops import thresholds
from core.influx import InfluxV1
from core.models import Device, Plot
from ledger.anchor_models import GrowthSummary
from ledger.codes import canonical_lot_uri
from ledger.digests import day_bounds, quote
from ledger.models import Lot, LotSource, TraceEvent
from ledger.records import RecordNotFound, RecordRef, register_kind, rows_where_in
from ledger.vocab import get_vocab

GROWTH = "growth/1"
SEASON_STEPS = ("sowing", "transplanting", "fertilising", "spraying", "irrigating", "harvesting")


def season_of(session: Session, lot_id: int, tz: str = "Asia/Shanghai") -> tuple[date, date] | None:
    """First field event to harvest of a lot grown on plots (None for lots without plots)."""
    return seasons_of(session, [lot_id], tz)[lot_id]


def seasons_of(
    session: Session, lot_ids: Iterable[int], tz: str = "Asia/Shanghai"
) -> dict[int, tuple[date, date] | None]:
    """`season_of` of many lots: the local days of their first season step and of their harvest
    (or their last step); without steps, April 15 to October 15 of the harvest year."""
    ids = set(lot_ids)
    src, ev, lot = LotSource.__table__.c, TraceEvent.__table__.c, Lot.__table__.c  # type: ignore[attr-defined]
    grown = {r[0] for r in rows_where_in(session, [src.lot_id], src.lot_id, ids, src.plot_id.is_not(None))}
    vocab = get_vocab()
    steps = [vocab.normalize_step(s) for s in SEASON_STEPS]
    harvesting = vocab.normalize_step("harvesting")
    times: dict[int, list[tuple[datetime, str]]] = defaultdict(list)
    for lot_id, t, step in rows_where_in(
        session, [ev.lot_id, ev.event_time, ev.biz_step], ev.lot_id, grown, ev.biz_step.in_(steps)
    ):
        times[lot_id].append((t, step))
    years = dict(rows_where_in(session, [lot.id, lot.harvest_year], lot.id, grown - set(times)))
    zone = ZoneInfo(tz)

    def local(t: datetime) -> date:
        return (t if t.tzinfo else t.replace(tzinfo=ZoneInfo("UTC"))).astimezone(zone).date()

    out: dict[int, tuple[date, date] | None] = {}
    for lot_id in ids:
        if lot_id not in grown:
            out[lot_id] = None
        elif lot_times := times.get(lot_id):
            days = [(local(t), s) for t, s in lot_times]
            harvest = [d for d, s in days if s == harvesting]
            out[lot_id] = min(d for d, _ in days), max(harvest) if harvest else max(d for d, _ in days)
        else:
            year = years.get(lot_id)
            out[lot_id] = None if year is None else (date(year, 4, 15), date(year, 10, 15))
    return out


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 2)


def _daily(influx: InfluxV1, q: str, tz: str) -> list[list[Any]]:
    series = influx.query(f"{q} GROUP BY time(1d) fill(none) tz('{tz}')")
    return series[0]["values"] if series else []


def _where(tag: str, values: list[str], start: datetime, end: datetime) -> str:
    ors = " OR ".join(f'"{tag}" = {quote(v)}' for v in values) or "false"
    t0 = start.astimezone(ZoneInfo("UTC")).strftime("%Y-%m-%dT%H:%M:%SZ")
    t1 = end.astimezone(ZoneInfo("UTC")).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"WHERE ({ors}) AND time >= '{t0}' AND time < '{t1}'"


def compute(
    session: Session,
    influx: InfluxV1,
    catalogue: Catalogue,
    lot_id: int,
    tz: str,
    season: tuple[date, date] | None = None,
    devices: list[list[str]] | None = None,
) -> dict[str, Any] | None:
    """The summary content of a lot's season, or None when the lot was not grown on plots.

    `season` and `devices` ([[id, kind], ...]) are the frozen inputs of an existing summary
    (verification); without them they are found from the lot's events and its plots' devices now."""
    season = season or season_of(session, lot_id, tz)
    if season is None:
        return None
    plots = session.exec(
        select(Plot).join(LotSource, col(LotSource.plot_id) == Plot.id).where(LotSource.lot_id == lot_id)
    ).all()
    plot_nos = sorted(p.plot_no for p in plots)
    crop = plots[0].crop if plots else None
    limits = thresholds(crop)
    start, _ = day_bounds(season[0], tz)
    _, end = day_bounds(season[1], tz)
    days = (season[1] - season[0]).days + 1
    where = _where("plot", plot_nos, start, end)

    kinds = [kind for _, kind in devices] if devices is not None else [d.kind for d in plot_devices(session, lot_id)]
    expected = sum(days * 86_400 / catalogue.kinds[k].interval_s for k in kinds if k in catalogue.kinds)
    stored = 0
    monitored: set[Any] = set()
    for kind in sorted(set(kinds)):
        first_metric = next(iter(catalogue.kinds[kind].metrics))
        for t, n in _daily(influx, f'SELECT count("{first_metric}") FROM "{kind}" {where}', tz):
            stored += int(n or 0)
            if n:
                monitored.add(t)

    water = _daily(
        influx, f'SELECT mean("water_level_cm"), min("water_level_cm"), max("water_level_cm") FROM "paddy" {where}', tz
    )
    soil = _daily(
        influx, f'SELECT mean("soil_moisture"), min("soil_moisture"), max("soil_moisture") FROM "soil" {where}', tz
    )
    villages = sorted({p.village_code for p in plots})
    wx_where = _where("village", villages, start, end)
    weather = _daily(
        influx, f'SELECT max("air_temp_c"), min("air_temp_c"), sum("rain_mm") FROM "weather" {wx_where}', tz
    )
    base = float(limits["gdd_base_c"])
    gdd = sum(max(0.0, (hi + lo) / 2 - base) for _, hi, lo, _ in weather if hi is not None and lo is not None)
    rain = sum(r or 0.0 for *_, r in weather)

    def stats(rows: list[list[Any]]) -> dict[str, Any] | None:
        if not rows:
            return None
        return {
            "days": len(rows),
            "mean": _r(sum(r[1] for r in rows) / len(rows)),
            "min": _r(min(r[2] for r in rows)),
            "max": _r(max(r[3] for r in rows)),
        }

    low_water = sum(1 for r in water if r[2] is not None and r[2] < limits.get("paddy_water_min_cm", -5))
    drought = sum(1 for r in soil if r[1] is not None and r[1] < limits["soil_moisture_min"])
    lot = session.get(Lot, lot_id)
    assert lot is not None
    return {
        "lot": canonical_lot_uri(lot),
        "plots": plot_nos,
        "crop": crop,
        "season": {"start": season[0].isoformat(), "end": season[1].isoformat(), "days": days, "time_zone": tz},
        "days_monitored": len(monitored),
        "completeness_pct": _r(min(100.0, 100.0 * stored / expected)) if expected else None,
        "readings": stored,
        "water_level_cm": stats(water),
        "soil_moisture_pct": stats(soil),
        "gdd": {"base_c": base, "sum": _r(gdd)},
        "rain_mm": _r(rain) if weather else None,
        "alerts": {
            "low_water_days": low_water,
            "drought_days": drought,
            "thresholds": {
                "paddy_water_min_cm": limits.get("paddy_water_min_cm"),
                "soil_moisture_min_pct": limits["soil_moisture_min"],
            },
        },
    }


def plot_devices(session: Session, lot_id: int) -> list[Device]:
    """The devices on the plots a lot was grown on, by id."""
    plot_ids = select(LotSource.plot_id).where(LotSource.lot_id == lot_id, col(LotSource.plot_id).is_not(None))
    return list(session.exec(select(Device).where(col(Device.plot_id).in_(plot_ids)).order_by(Device.id)))


def _load(session: Session, summary_id: int) -> tuple[dict[str, Any], str]:
    g = session.get(GrowthSummary, summary_id)
    if g is None:
        raise RecordNotFound(f"growth summary {summary_id} does not exist")
    return g.content, g.salt


def _collect(session: Session, lot_ids: list[int]) -> list[RecordRef]:
    rows = session.exec(select(GrowthSummary).where(col(GrowthSummary.lot_id).in_(lot_ids))).all()
    return [RecordRef(GROWTH, g.id) for g in sorted(rows, key=lambda g: g.id or 0) if g.id is not None]


def _collect_many(session: Session, lineages: Mapping[int, list[int]]) -> dict[int, set[RecordRef]]:
    g = GrowthSummary.__table__.c  # type: ignore[attr-defined]
    every = {lot for lineage in lineages.values() for lot in lineage}
    by_lot: dict[int, list[int]] = defaultdict(list)
    for summary_id, lot_id in rows_where_in(session, [g.id, g.lot_id], g.lot_id, every):
        by_lot[lot_id].append(summary_id)
    return {
        lot: {RecordRef(GROWTH, i) for member in lineage for i in by_lot.get(member, ())}
        for lot, lineage in lineages.items()
    }


def ensure_summaries(
    session: Session,
    influx: InfluxV1,
    catalogue: Catalogue,
    tz: str,
    today: date,
    safe_villages: Mapping[str, date] | None = None,
) -> int:
    """Compute the summary of every plot-grown lot whose season has ended (once; it is then anchored)
    and, with `safe_villages` (village -> last safely sealed day, ledger/late.py), whose season is
    safely sealed in every village of its plots: later readings can no longer change it."""
    have = set(session.exec(select(GrowthSummary.lot_id)).all())
    added = 0
    for lot_id in session.exec(select(Lot.id)).all():
        if lot_id in have:
            continue
        season = season_of(session, lot_id, tz)
        if season is None or season[1] >= today:
            continue
        if safe_villages is not None:
            plots_of_lot = select(Plot.village_code).join(LotSource, col(LotSource.plot_id) == Plot.id)
            villages = session.exec(plots_of_lot.where(LotSource.lot_id == lot_id)).all()
            if any(safe_villages.get(v) is None or safe_villages[v] < season[1] for v in villages):
                continue
        devices = [[d.id, d.kind] for d in plot_devices(session, lot_id)]
        content = compute(session, influx, catalogue, lot_id, tz, season, devices)
        if content is None:
            continue
        session.add(
            GrowthSummary(lot_id=lot_id, season_start=season[0], season_end=season[1], content=content, devices=devices)
        )
        added += 1
    session.flush()
    return added


def _load_many(session: Session, ids: Sequence[int]) -> dict[int, tuple[dict[str, Any], str]]:
    t = GrowthSummary.__table__  # type: ignore[attr-defined]
    return {r.id: (r.content, r.salt) for r in rows_where_in(session, [t], t.c.id, ids)}


register_kind(GROWTH, _load, _collect, bulk=_load_many, collect_many=_collect_many)
