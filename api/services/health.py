"""Device health and open alerts of an area, for the dashboard.

Health of a device, from two sources: its last reading in InfluxDB (one `SELECT last(...) ...
GROUP BY "device"` per device kind, bounded to the last 30 days, so InfluxDB returns one row per
device) and its dead letters of the last 24 hours (one grouped SQL query). A device is
- revoked / inactive: as the registry says (not expected to report);
- failing: it sent readings that ingest rejected in the last 24 hours (dead letters);
- online: its last reading is at most ONLINE_INTERVALS catalogue intervals old;
- silent: otherwise (including never seen).

Open alerts are the conditions of the latest readings: drought stress (soil moisture below the
plot crop's minimum), low paddy water (below the crop's minimum, only inside the flooded season
windows), fever (collar body temperature above the threshold). Thresholds are data: crops in
core/data/crops.yaml, fever and paddy season in analytics/data/computation.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func
from sqlmodel import Session, col, select

from analytics.computation import load_params
from core import crops
from core.catalogue import Catalogue
from core.influx import InfluxV1
from core.models import Animal, DeadLetter, Device, DeviceStatus, Herd, Plot

ONLINE_INTERVALS = 3
LOOKBACK = "30d"
# The metric whose last value decides an alert, per device kind.
ALERT_METRICS = {"soil": "soil_moisture", "paddy": "water_level_cm", "collar": "body_temp_c"}


@dataclass
class DeviceHealth:
    id: str
    kind: str
    village: str | None
    place: str | None  # plot number, herd number or ear tag
    crop: str | None
    registry_status: str
    status: str  # online | silent | failing | inactive | revoked
    last_seen: str | None
    dead_letters_24h: int
    last_values: dict[str, float] = field(default_factory=dict)


def _devices(session: Session, villages: set[str]) -> list[tuple[Device, str | None, str | None, str | None]]:
    plots = {p.id: p for p in session.exec(select(Plot).where(col(Plot.village_code).in_(villages)))}
    herds = {h.id: h for h in session.exec(select(Herd).where(col(Herd.village_code).in_(villages)))}
    animals = {a.id: a for a in session.exec(select(Animal).where(col(Animal.herd_id).in_(list(herds))))}
    out = []
    for d in session.exec(select(Device).order_by(Device.id)):
        if d.plot_id in plots:
            p = plots[d.plot_id]
            out.append((d, p.village_code, p.plot_no, p.crop))
        elif d.herd_id in herds:
            h = herds[d.herd_id]
            out.append((d, h.village_code, h.herd_no, None))
        elif d.animal_id in animals:
            a = animals[d.animal_id]
            out.append((d, herds[a.herd_id].village_code, a.ear_tag, None))
    return out


def last_readings(influx: InfluxV1, kinds: set[str], catalogue: Catalogue) -> dict[str, tuple[int, dict[str, float]]]:
    """device -> (time of its last reading in ms, last values of the metrics alerts use)."""
    out: dict[str, tuple[int, dict[str, float]]] = {}
    for kind in sorted(kinds):
        spec = catalogue.kinds.get(kind)
        if spec is None:
            continue
        metric = ALERT_METRICS.get(kind) or next(iter(spec.metrics))
        series = influx.query(
            f'SELECT last("{metric}") FROM "{kind}" WHERE time > now() - {LOOKBACK} GROUP BY "device"'
        )
        for s in series:
            device = s.get("tags", {}).get("device")
            if device and s["values"]:
                t, v = s["values"][0][0], s["values"][0][1]
                out[device] = (int(t), {metric: v} if kind in ALERT_METRICS and v is not None else {})
    return out


def dead_letters_24h(session: Session, now: datetime) -> dict[str, int]:
    since = (now - timedelta(hours=24)).astimezone(UTC)
    rows = session.exec(
        select(DeadLetter.device_id, func.count() + func.coalesce(func.sum(DeadLetter.more), 0))
        .where(col(DeadLetter.received_at) >= since, col(DeadLetter.device_id).is_not(None))
        .group_by(DeadLetter.device_id)
    ).all()
    return {d: int(n) for d, n in rows if d}  # rejected readings: a row and the rest it counts


def device_health(
    session: Session, influx: InfluxV1 | None, catalogue: Catalogue, villages: set[str], now: datetime | None = None
) -> list[DeviceHealth]:
    now = now or datetime.now(UTC)
    devices = _devices(session, villages)
    last = last_readings(influx, {d.kind for d, *_ in devices}, catalogue) if influx is not None else {}
    dead = dead_letters_24h(session, now)
    now_ms = int(now.timestamp() * 1000)
    out = []
    for d, village, place, crop in devices:
        seen = last.get(d.id)
        interval = catalogue.kinds[d.kind].interval_s if d.kind in catalogue.kinds else 600
        if d.status != DeviceStatus.active:
            status = str(d.status)
        elif dead.get(d.id):
            status = "failing"
        elif seen and now_ms - seen[0] <= ONLINE_INTERVALS * interval * 1000:
            status = "online"
        else:
            status = "silent"
        out.append(
            DeviceHealth(
                id=d.id,
                kind=d.kind,
                village=village,
                place=place,
                crop=crop,
                registry_status=str(d.status),
                status=status,
                last_seen=datetime.fromtimestamp(seen[0] / 1000, UTC).isoformat(timespec="seconds") if seen else None,
                dead_letters_24h=dead.get(d.id, 0),
                last_values=seen[1] if seen else {},
            )
        )
    return out


def health_counts(devices: list[DeviceHealth]) -> dict[str, int]:
    counts = {k: 0 for k in ("online", "silent", "failing", "inactive", "revoked")}
    for d in devices:
        counts[d.status] = counts.get(d.status, 0) + 1
    counts["total"] = len(devices)
    return counts


def _in_season(day: Any, windows: list[list[str]]) -> bool:
    md = (day.month, day.day)
    for start, end in windows:
        a = tuple(int(x) for x in start.split("-"))
        b = tuple(int(x) for x in end.split("-"))
        if a <= md <= b:
            return True
    return False


@dataclass(frozen=True)
class Condition:
    """What a device's latest reading says about one alert kind: out of range (`breached`) or not."""

    kind: str  # drought | low_water | fever
    device: str
    village: str | None
    place: str | None
    metric: str
    value: float
    threshold: float
    breached: bool
    at: str  # the reading's time (ISO, UTC)

    def as_alert(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "device": self.device,
            "village": self.village,
            "place": self.place,
            "metric": self.metric,
            "value": round(self.value, 2),
            "threshold": self.threshold,
            "since": self.at,
        }


def conditions(devices: list[DeviceHealth], tz: str, now: datetime | None = None) -> list[Condition]:
    """The alert condition of the latest reading of each online or failing device that has an alert
    kind and a threshold (low paddy water counts as in range outside the flooded season windows)."""
    now = now or datetime.now(UTC)
    params = load_params()
    fever_c = float(params.fever.above_c)
    season = params.paddy.season
    today = now.astimezone(ZoneInfo(tz)).date()
    out = []
    for d in devices:
        if d.status not in ("online", "failing") or d.last_seen is None:
            continue
        limits = crops.thresholds(d.crop)
        checks = {
            "soil": ("drought", "soil_moisture", lambda v, t: v < t, limits.get("soil_moisture_min")),
            "paddy": ("low_water", "water_level_cm", lambda v, t: v < t, limits.get("paddy_water_min_cm")),
            "collar": ("fever", "body_temp_c", lambda v, t: v > t, fever_c),
        }
        if d.kind not in checks:
            continue
        kind, metric, breached, threshold = checks[d.kind]
        value = d.last_values.get(metric)
        if value is None or threshold is None:
            continue
        out_of_range = bool(breached(value, threshold))
        if kind == "low_water" and not _in_season(today, season):
            out_of_range = False
        out.append(Condition(kind, d.id, d.village, d.place, metric, value, threshold, out_of_range, d.last_seen))
    return out


def open_alerts(devices: list[DeviceHealth], tz: str, now: datetime | None = None) -> list[dict[str, Any]]:
    """Alerts raised by the latest reading of each online or failing device."""
    return [c.as_alert() for c in conditions(devices, tz, now) if c.breached]
