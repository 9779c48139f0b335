"""The public view of a lot's trace: what the trace page and `/api/v1/trace/{code}` show.

Built from the same rows as the ledger records (ledger.records), for the lot and all its ancestors:
product and lot, origin plots with their village, township and county, the processing steps
(lineage, from the fields to the bag), the events in time order, the inspections, the growth
summaries of the plot lots (with daily means from InfluxDB for the small charts, when it answers),
and the days of the season that had late sensor data (readings that arrived after the day was
sealed and digested, kept apart with supplementary digests: ledger/late.py).

No personal data: farms appear by their registry code only (never their name or contact), and
plots by their number, area and crop (no coordinates, which could point at a smallholder's house).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlmodel import Session, col, select

from api.services.cache import TtlCache
from core.influx import InfluxError, InfluxV1
from core.models import County, Farm, Plot, Township, Village
from ledger import late
from ledger.anchor_models import GrowthSummary
from ledger.codes import format_code, lot_uri
from ledger.digests import day_bounds, quote
from ledger.models import (
    EventCorrection,
    Facility,
    Inspection,
    Lot,
    LotParent,
    LotSource,
    Product,
    TraceEvent,
    TraceEventLot,
)
from ledger.records import event_lots, inspection_content, lot_lineage, rfc3339
from ledger.vocab import get_vocab

log = logging.getLogger(__name__)


def _product(p: Product | None) -> dict[str, Any] | None:
    if p is None:
        return None
    return {"code": p.code, "gtin": p.gtin, "name_zh": p.name_zh, "name_en": p.name_en, "variety": p.variety}


def _division(row: County | Township | Village | None) -> dict[str, str] | None:
    return None if row is None else {"code": row.code, "name_zh": row.name_zh, "name_en": row.name_en}


def _depths(session: Session, lot_id: int) -> dict[int, int]:
    """Distance of every ancestor from the lot (the lot is 0), for ordering the processing steps."""
    depth = {lot_id: 0}
    frontier = [lot_id]
    while frontier:
        rows = session.exec(select(LotParent).where(col(LotParent.child_lot_id).in_(frontier))).all()
        frontier = []
        for r in rows:
            d = depth[r.child_lot_id] + 1
            if depth.get(r.parent_lot_id, -1) < d:
                depth[r.parent_lot_id] = d
                frontier.append(r.parent_lot_id)
    return depth


def origin_of(session: Session, lot_ids: list[int]) -> list[dict[str, Any]]:
    """The plots (and herds) the lots were grown on, with their village, township and county (one query)."""
    out = []
    rows = session.exec(
        select(LotSource, Plot, Village, Township, County, Farm)
        .join(Plot, col(Plot.id) == LotSource.plot_id)
        .join(Village, col(Village.code) == Plot.village_code, isouter=True)
        .join(Township, col(Township.code) == Village.township_code, isouter=True)
        .join(County, col(County.code) == Township.county_code, isouter=True)
        .join(Farm, col(Farm.id) == Plot.farm_id, isouter=True)
        .where(col(LotSource.lot_id).in_(lot_ids))
        .order_by(col(LotSource.id))
    ).all()
    seen: set[int] = set()
    for s, plot, village, township, county, farm in rows:
        if plot.id in seen:
            continue
        seen.add(plot.id)
        out.append(
            {
                "plot_no": plot.plot_no,
                "area_mu": s.area_mu or plot.area_mu,
                "crop": plot.crop,
                "farm": farm.code if farm else None,
                "village": _division(village),
                "township": _division(township),
                "county": _division(county),
            }
        )
    return sorted(out, key=lambda o: o["plot_no"])


def _corrections(session: Session, events: list[TraceEvent]) -> dict[int, dict[str, Any]]:
    """Per event id: how it was declared in error, or which event it corrects (EPCIS error declarations)."""
    ids = [e.id for e in events]
    by_id = {e.id: e for e in events}
    out: dict[int, dict[str, Any]] = {}
    rows = session.exec(
        select(EventCorrection).where(
            col(EventCorrection.event_id).in_(ids) | col(EventCorrection.corrective_event_id).in_(ids)
        )
    ).all()
    for c in rows:
        declared = rfc3339(c.declared_at, c.declared_at_offset)
        right = by_id.get(c.corrective_event_id) if c.corrective_event_id else None
        wrong = by_id.get(c.event_id)
        out.setdefault(c.event_id, {}).update(
            {
                "corrected": {
                    "reason": c.reason,
                    "declared_at": declared,
                    "corrective_event_id": right.event_id if right else None,
                }
            }
        )
        if c.corrective_event_id is not None:
            out.setdefault(c.corrective_event_id, {}).update(
                {"corrects": {"event_id": wrong.event_id if wrong else None, "declared_at": declared}}
            )
    return out


def _event(session: Session, ev: TraceEvent, codes_by_id: dict[int, str]) -> dict[str, Any]:
    vocab = get_vocab()
    place: dict[str, Any]
    if ev.read_point_plot_id is not None:
        plot = session.get(Plot, ev.read_point_plot_id)
        place = {"plot": plot.plot_no if plot else None}
    else:
        fac = session.get(Facility, ev.read_point_facility_id)
        place = {"facility": fac.code if fac else None, "facility_name": fac.name if fac else None}
    inputs, outputs = event_lots(session, ev.id) if ev.event_type == "TransformationEvent" else ([], [])
    return {
        "time": rfc3339(ev.event_time, ev.event_time_zone_offset),
        "type": ev.event_type,
        "action": ev.action,
        "step": vocab.short_name(ev.biz_step),
        "step_uri": ev.biz_step,
        "disposition": vocab.short_name(ev.disposition) if ev.disposition else None,
        "lot": codes_by_id.get(ev.lot_id) if ev.lot_id else None,
        "inputs": [codes_by_id.get(i, "") for i in inputs],
        "outputs": [codes_by_id.get(o, "") for o in outputs],
        "place": place,
        "attributes": dict(ev.attributes),
        "event_id": ev.event_id,
    }


def _daily(
    influx: InfluxV1, measurement: str, field: str, plots: list[str], g: GrowthSummary, tz: str
) -> list[list[Any]]:
    """Daily means of one field over the plots for the summary's season, as [local day, mean]."""
    start, _ = day_bounds(g.season_start, tz)
    _, end = day_bounds(g.season_end, tz)
    ors = " OR ".join(f'"plot" = {quote(v)}' for v in plots)
    t0 = start.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    t1 = end.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    series = influx.query(
        f"SELECT mean(\"{field}\") FROM \"{measurement}\" WHERE ({ors}) AND time >= '{t0}' AND time < '{t1}' "
        f"GROUP BY time(1d) fill(none) tz('{tz}')"
    )
    zone = ZoneInfo(tz)
    rows = series[0]["values"] if series else []
    return [
        [datetime.fromtimestamp(t / 1000, UTC).astimezone(zone).date().isoformat(), round(v, 2)]
        for t, v in rows
        if v is not None
    ]


def growth_of(
    session: Session,
    lot_ids: list[int],
    codes_by_id: dict[int, str],
    influx: InfluxV1 | None,
    tz: str,
    curves: TtlCache | None = None,
) -> list[dict[str, Any]]:
    """The growth summaries of the lots (plot lots of the lineage), with daily means when InfluxDB answers."""
    out = []
    rows = session.exec(select(GrowthSummary).where(col(GrowthSummary.lot_id).in_(lot_ids))).all()
    for g in sorted(rows, key=lambda g: codes_by_id.get(g.lot_id, "")):
        content = dict(g.content)
        daily: dict[str, list[list[Any]]] = {}
        plots = content.get("plots") or []
        if influx is not None and plots:
            try:
                for key, measurement, field in (
                    ("water_level_cm", "paddy", "water_level_cm"),
                    ("soil_moisture_pct", "soil", "soil_moisture"),
                ):
                    if not content.get(key):
                        continue
                    # a summary's season is closed, so is its curve: kept by what the query reads
                    curve_key = (measurement, field, tuple(plots), g.season_start, g.season_end)
                    curve = curves.get(curve_key) if curves is not None else None
                    if curve is None:
                        curve = _daily(influx, measurement, field, plots, g, tz)
                        if curves is not None:
                            curves.set(curve_key, curve)
                    daily[key] = curve
            except InfluxError as e:
                log.warning("daily growth series unavailable: %s", e)
                daily = {}
        out.append({"lot": codes_by_id.get(g.lot_id), **content, "daily": daily})
    return out


def build_view(
    session: Session,
    lot: Lot,
    base_url: str,
    influx: InfluxV1 | None,
    tz: str,
    curves: TtlCache | None = None,
) -> dict[str, Any]:
    """Everything the trace page shows about a lot, as JSON-ready data. `curves` keeps the growth
    summaries' daily curves for the next view (bags of one paddy lot share its curve)."""
    assert lot.id is not None
    lineage = lot_lineage(session, lot.id)
    depths = _depths(session, lot.id)
    lots = {x.id: x for x in session.exec(select(Lot).where(col(Lot.id).in_(lineage))).all()}
    codes_by_id = {i: x.code for i, x in lots.items() if i is not None}
    products = {p.id: p for p in session.exec(select(Product)).all()}
    facilities = {f.id: f for f in session.exec(select(Facility)).all()}
    farm_ids = [x.farm_id for x in lots.values() if x.farm_id is not None]
    farms = dict(session.exec(select(Farm.id, Farm.code).where(col(Farm.id).in_(farm_ids))).all())
    parents: dict[int, list[dict[str, Any]]] = {}
    for p in session.exec(select(LotParent).where(col(LotParent.child_lot_id).in_(lineage))).all():
        parents.setdefault(p.child_lot_id, []).append(
            {"code": codes_by_id.get(p.parent_lot_id), "relation": p.relation, "quantity": p.quantity}
        )

    def lot_json(x: Lot) -> dict[str, Any]:
        fac = facilities.get(x.facility_id) if x.facility_id else None
        return {
            "code": x.code,
            "lot_no": x.lot_no,
            "product": _product(products.get(x.product_id)),
            "quantity": x.quantity,
            "unit": x.unit,
            "harvest_year": x.harvest_year,
            "farm": farms.get(x.farm_id) if x.farm_id else None,
            "facility": {"code": fac.code, "name": fac.name, "kind": fac.kind} if fac else None,
            "parents": sorted(parents.get(x.id, []), key=lambda p: p["code"] or ""),  # type: ignore[arg-type]
        }

    ordered = sorted(lots.values(), key=lambda x: (-depths.get(x.id, 0), x.id))  # type: ignore[arg-type]
    linked = select(TraceEventLot.trace_event_id).where(col(TraceEventLot.lot_id).in_(lineage))
    events = session.exec(
        select(TraceEvent)
        .where(col(TraceEvent.lot_id).in_(lineage) | col(TraceEvent.id).in_(linked))
        .order_by(TraceEvent.event_time, TraceEvent.id)
    ).all()
    corrections = _corrections(session, list(events))
    inspections = []
    for insp in session.exec(
        select(Inspection).where(col(Inspection.lot_id).in_(lineage)).order_by(Inspection.sampled_on, Inspection.id)
    ).all():
        assert insp.id is not None
        content, _salt = inspection_content(session, insp.id)  # the hashed record, items sorted by name
        inspections.append({**content, "lot": codes_by_id.get(insp.lot_id)})
    return {
        "code": lot.code,
        "code_display": format_code(lot.code),
        "uri": lot_uri(base_url, lot),
        **{k: v for k, v in lot_json(lot).items() if k != "code"},
        "origin": origin_of(session, lineage),
        "lineage": [lot_json(x) for x in ordered],
        "events": [{**_event(session, e, codes_by_id), **corrections.get(e.id, {})} for e in events],  # type: ignore[arg-type]
        "inspections": inspections,
        "growth": growth_of(session, lineage, codes_by_id, influx, tz, curves),
        "late_data": late.summary(session, lineage),
    }
