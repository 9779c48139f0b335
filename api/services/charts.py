"""Data of the dashboard's ECharts charts (api/static/charts.js) beyond what the snapshot carries:

- `county_map`: the boundaries (core/boundaries.py) and the caller's plots and herds at their registry
  coordinates, each with its devices' status (the colour) and open alerts (the markers);
- `device_history`: per local day over the last days, how many of the caller's devices reported
  (from the daily rollups, and the raw points after their watermark) and how many readings were
  dead-lettered (registry), beside the number of active devices.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlmodel import Session, col, select

from analytics.rollups import Rollups
from core import boundaries
from core.catalogue import get_catalogue
from core.influx import InfluxV1
from core.models import DeadLetter, Device, DeviceStatus, Herd, Plot, Village
from core.settings import Settings

# worst first: the colour of a plot is that of its worst device
STATUS_ORDER = ("alert", "failing", "silent", "online", "inactive", "revoked", "no_device")


def _worst(statuses: list[str]) -> str:
    return min(statuses, key=STATUS_ORDER.index) if statuses else "no_device"


def county_map(
    session: Session, villages: set[str], devices: list[dict[str, Any]], alerts: list[dict[str, Any]]
) -> dict[str, Any]:
    """Boundaries of the caller's province, and the caller's plots and herds as points (plots at their
    coordinates, a herd at the centre of its village's plots), with status, devices and alerts."""
    names = {v.code: v.name_zh for v in session.exec(select(Village).where(col(Village.code).in_(villages)))}
    by_place: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for d in devices:
        if d.get("place"):
            by_place[d["place"]].append(d)
    alerts_at: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for a in alerts:
        alerts_at[a.get("place") or ""].append(a)
    herd_of_animal = {}
    plots = session.exec(select(Plot).where(col(Plot.village_code).in_(villages)).order_by(Plot.plot_no)).all()
    centre: dict[str, list[tuple[float, float]]] = defaultdict(list)
    points = []

    def point(kind: str, key: str, village: str, lon: float, lat: float, extra: dict[str, Any]) -> dict[str, Any]:
        own = by_place.get(key, [])
        own_alerts = alerts_at.get(key, [])
        status = "alert" if own_alerts else _worst([d["status"] for d in own])
        return {
            "kind": kind,
            "id": key,
            "village": village,
            "village_name": names.get(village, village),
            "lon": lon,
            "lat": lat,
            "status": status,
            "devices": [{"id": d["id"], "kind": d["kind"], "status": d["status"]} for d in own],
            "alerts": [{"kind": a["kind"], "device": a["device"], "value": a["value"]} for a in own_alerts],
            **extra,
        }

    for p in plots:
        if p.lat is None or p.lon is None:
            continue
        centre[p.village_code].append((p.lon, p.lat))
        points.append(point("plot", p.plot_no, p.village_code, p.lon, p.lat, {"crop": p.crop, "area_mu": p.area_mu}))
    for h in session.exec(select(Herd).where(col(Herd.village_code).in_(villages)).order_by(Herd.herd_no)).all():
        spots = centre.get(h.village_code)
        if not spots:
            continue
        lon, lat = sum(x for x, _ in spots) / len(spots), sum(y for _, y in spots) / len(spots)
        # collars report their animal's ear tag as place: they count for the herd
        members = [d for d in devices if d.get("village") == h.village_code and d["kind"] == "collar"]
        for d in members:
            herd_of_animal[d["place"]] = h.herd_no
        entry = point("herd", h.herd_no, h.village_code, lon, lat, {"species": h.species, "head_count": h.head_count})
        extra_devices = [d for d in members if d["place"] != h.herd_no]
        entry["devices"] += [{"id": d["id"], "kind": d["kind"], "status": d["status"]} for d in extra_devices]
        herd_alerts = [a for a in alerts if herd_of_animal.get(a.get("place") or "") == h.herd_no]
        entry["alerts"] += [{"kind": a["kind"], "device": a["device"], "value": a["value"]} for a in herd_alerts]
        statuses = [d["status"] for d in entry["devices"]]
        entry["status"] = "alert" if entry["alerts"] else _worst(statuses)
        points.append(entry)
    counties = {v[:6] for v in villages}
    provinces = {c[:2] for c in counties}
    shapes = boundaries.feature_collection(session)
    shapes["features"] = [f for f in shapes["features"] if f["id"][:2] in provinces]
    return {
        "counties": sorted(counties),
        "boundaries": shapes,
        "illustrative": sorted({f["id"] for f in shapes["features"] if f["properties"]["illustrative"]}),
        "points": points,
        "statuses": list(STATUS_ORDER),
    }


def device_history(
    session: Session, settings: Settings, influx: InfluxV1, device_ids: set[str], days: int = 30
) -> dict[str, Any]:
    """Per local day of the last `days` (today included): devices that reported, readings dead-lettered."""
    tz = ZoneInfo(settings.county_timezone)
    today = datetime.now(UTC).astimezone(tz).date()
    first = today - timedelta(days=days - 1)
    labels = [(first + timedelta(days=i)).isoformat() for i in range(days)]
    rollups = Rollups(influx, tz=settings.county_timezone, catalogue=get_catalogue(settings.catalogue_file))
    start_ms = rollups.midnight_ms(first)
    end_ms = rollups.midnight_ms(today + timedelta(days=1))
    reporting: dict[str, set[str]] = defaultdict(set)
    kinds = set(session.exec(select(Device.kind).where(col(Device.id).in_(device_ids))).all())
    for kind in sorted(kinds):
        metrics = rollups.metrics(kind) if kind in rollups.catalogue.kinds else []
        if not metrics:
            continue
        watermark = rollups.watermark(kind) or 0
        split = max(start_ms, min(end_ms, rollups.midnight_ms(rollups.local_day(watermark)) if watermark else 0))
        parts = [(rollups.source(kind, "1d"), f'"count_{metrics[0]}"', start_ms, split)]
        parts.append((rollups.raw_source(kind), f'"{metrics[0]}"', split, end_ms))
        for source, fld, a, b in parts:
            if b <= a:
                continue
            q = (
                f"SELECT count({fld}) FROM {source} WHERE time >= {a}ms AND time < {b}ms "
                f"GROUP BY time(1d), \"device\" fill(none) tz('{settings.county_timezone}')"
            )
            for s in influx.query(q):
                device = (s.get("tags") or {}).get("device")
                if device not in device_ids:
                    continue
                for t, n in s["values"]:
                    if n:
                        day = datetime.fromtimestamp(t / 1000, UTC).astimezone(tz).date().isoformat()
                        reporting[day].add(device)
    dead: dict[str, int] = defaultdict(int)
    since = datetime.combine(first, datetime.min.time(), tz).astimezone(UTC)
    rows = session.exec(
        select(DeadLetter.received_at, DeadLetter.device_id).where(DeadLetter.received_at >= since)
    ).all()
    for received, device in rows:
        if device in device_ids:
            t = received if received.tzinfo else received.replace(tzinfo=UTC)
            dead[t.astimezone(tz).date().isoformat()] += 1
    active = session.exec(
        select(Device.id).where(col(Device.id).in_(device_ids), Device.status == DeviceStatus.active)
    ).all()
    rollups.store.close()
    return {
        "days": labels,
        "reporting": [len(reporting.get(d, ())) for d in labels],
        "dead_letters": [dead.get(d, 0) for d in labels],
        "active": len(active),
        "timezone": settings.county_timezone,
    }
