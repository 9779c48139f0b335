"""The demo's province: two more counties (core/data/demo_province.yaml, synthetic and marked
illustrative) with a season of readings, the illustrative county statistics, and the officers' view.

`village demo` loads them after the demo county, so the county comparison (`/province`) has three
counties to rank for a province officer of Liaoning and two for a city officer of Panjin. Their
devices never connect to the broker: their readings are written straight to InfluxDB (as
api/demo.py does for the API tests), with a share of device-days missing per county (an outage
rate, data in YAML below) so the counties differ; the rollups and indicators then run per county
like the demo county's. Their devices are dated active from FIRST_DAY, the start of that history,
and the demo county's devices from the start of the season they backfill (they buffered it), so the
three are compared over the same days.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from analytics.province import _village_county
from analytics.statistics_io import load_demo as load_demo_statistics
from core.influx import InfluxV1
from core.models import Device, DeviceStatus, Plot
from core.registry_io import import_yaml
from ingest.enrich import DeviceDirectory
from ingest.payload import Reading
from ingest.pipeline import to_line
from simulators.devices import default_interval_ms, generate

DEMO_FILE = Path(__file__).parents[1] / "core" / "data" / "demo_province.yaml"
COUNTIES = {"211104": 0.05, "210726": 0.17}  # county -> share of device-days without readings (outages)
FIRST_DAY = date(2026, 6, 1)  # the extra counties' devices are active from here
READINGS = (date(2026, 7, 1), date(2026, 10, 1))  # their readings: the third quarter
PERIOD = "2026-Q3"  # the period the demo's province link opens on
TZ_OFFSET = timedelta(hours=8)  # Asia/Shanghai, no daylight saving


def _local_midnight_ms(day: date) -> int:
    return int((datetime(day.year, day.month, day.day, tzinfo=UTC) - TZ_OFFSET).timestamp() * 1000)


def _devices_of(session: Session, counties: list[str]) -> list[tuple[str, str, str]]:
    """(device, kind, county) of the plot devices of `counties`."""
    village_county = _village_county(session, counties)
    rows = session.exec(
        select(Device.id, Device.kind, Plot.village_code)
        .join(Plot, col(Plot.id) == col(Device.plot_id))
        .where(col(Plot.village_code).in_(list(village_county)))
    ).all()
    return [(d, k, village_county[v]) for d, k, v in rows]


def load(session: Session, *, installed: dict[str, datetime] | None = None) -> dict[str, int]:
    """Import the two counties and the statistics; date devices active (caller commits).
    `installed`: county -> when its devices started (the demo county: its season's first day)."""
    result = import_yaml(session, DEMO_FILE)
    load_demo_statistics(session)
    start = datetime(FIRST_DAY.year, FIRST_DAY.month, FIRST_DAY.day, tzinfo=UTC) - TZ_OFFSET
    dates = {c: start for c in COUNTIES} | (installed or {})
    for county, since in dates.items():
        ids = [d for d, _k, _c in _devices_of(session, [county])]
        session.exec(  # type: ignore[call-overload]
            update(Device)
            .where(col(Device.id).in_(ids))
            .where(col(Device.revoked_at).is_(None))
            .where(col(Device.provisioned_at).is_(None) | (col(Device.provisioned_at) > since))
            .values(status=DeviceStatus.active, provisioned_at=since)
        )
    return result.created


def write_readings(engine: Engine, influx: InfluxV1, start: date = READINGS[0], end: date = READINGS[1]) -> int:
    """Readings of every device of the extra counties at its catalogue interval, days missing at each
    county's outage rate (seeded: the same every run); returns how many were written."""
    directory = DeviceDirectory(engine)
    with Session(engine) as session:
        devices = _devices_of(session, list(COUNTIES))
    written = 0
    for device_id, kind, county in sorted(devices):
        info = directory.get(device_id)
        if info is None or not info.tags:
            continue
        rng = random.Random(f"{device_id}-outages")
        step = default_interval_ms(kind)
        per_day = 86_400_000 // step
        lines: list[str] = []
        day = start
        while day < end:
            if rng.random() >= COUNTIES[county]:
                lines += [
                    to_line(Reading(device_id, kind, r["ts"], r["values"]), info.tags)
                    for r in generate(device_id, kind, _local_midnight_ms(day), count=per_day, seed=device_id)
                ]
            day += timedelta(days=1)
        for i in range(0, len(lines), 10_000):
            influx.write("\n".join(lines[i : i + 10_000]))
        written += len(lines)
    return written
