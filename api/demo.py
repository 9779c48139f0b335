"""A demo world for the API's benchmark and browser tests: the demo county and rice season, sensor
readings for the plots of the demo bags, every record anchored on a local chain, and one demo user
per role.

The readings are written straight to InfluxDB (the MQTT path is the ingest's business and has its
own tests and benchmark): DAYS days of readings at each device's catalogue interval, starting
1 July 2026 (mid-season), for every device on the plots of the demo paddy lots.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from api.models import Role
from api.users import add_user
from core import boundaries
from core.influx import InfluxV1
from core.models import Device, Plot
from core.settings import Settings
from ingest.enrich import DeviceDirectory
from ingest.payload import Reading
from ingest.pipeline import to_line
from ledger.models import LotSource
from ledger.trace_io import load_demo_trace
from simulators.devices import generate

DEMO_BAG = "M35C-W3XR-D6R"  # 5 kg bags of milled lot 2026-M01 (GTIN 06947512300010, lot 2026-M01-A)
DAYS = 3
START_MS = int(datetime(2026, 7, 1, tzinfo=UTC).timestamp() * 1000) - 8 * 3_600_000  # local midnight, +08:00
# One demo account per role: (user name, role, scope).
DEMO_USERS = (
    ("county", Role.county_admin, "211122"),
    ("shaling", Role.township_officer, "211122101"),
    ("beizhengjia", Role.village_operator, "211122101201"),
    ("analyst", Role.analyst, "211122"),
    ("panjin", Role.city_officer, "211100"),  # Panjin city: the county comparison of its counties
    ("liaoning", Role.province_officer, "210000"),  # Liaoning province: every county
)


def ensure_demo_users(session: Session, password: str | None = None) -> dict[str, str]:
    """Create (or reset) the demo users with `password` (random when None); user name -> password."""
    password = password or secrets.token_urlsafe(9)
    for username, role, scope in DEMO_USERS:
        add_user(session, username, password, role, scope, update=True)
    return {u: password for u, *_ in DEMO_USERS}


def write_readings(engine: Engine, influx: InfluxV1, days: int = DAYS) -> int:
    """Readings of every device on the demo paddy lots' plots; returns how many were written."""
    directory = DeviceDirectory(engine)
    with Session(engine) as session:
        plot_ids = select(LotSource.plot_id).where(col(LotSource.plot_id).is_not(None))
        plots = select(Plot.id).where(col(Plot.id).in_(plot_ids))
        devices = session.exec(select(Device.id, Device.kind).where(col(Device.plot_id).in_(plots))).all()
    from core.catalogue import get_catalogue

    catalogue = get_catalogue()
    written = 0
    for device_id, kind in devices:
        info = directory.get(device_id)
        if info is None or not info.tags:
            continue
        count = days * 86_400 // catalogue.kinds[kind].interval_s
        lines = [
            to_line(Reading(device_id, kind, r["ts"], r["values"]), info.tags)
            for r in generate(device_id, kind, START_MS, count=count, seed=device_id)
        ]
        for i in range(0, len(lines), 5000):
            influx.write("\n".join(lines[i : i + 5000]))
        written += len(lines)
    return written


def seed(engine: Engine, influx: InfluxV1, settings: Settings, *, anchor: bool = True) -> dict[str, object]:
    """Demo trace data, readings, and (with `anchor`) every record anchored on the configured chain."""
    with Session(engine) as session:
        load_demo_trace(session)
        boundaries.load_demo(session)  # the map's outlines: Liaoning's cities, Panjin's counties, demo villages
        session.commit()
    influx.ensure_database()
    readings = write_readings(engine, influx)
    out: dict[str, object] = {"readings": readings}
    if anchor:
        from ledger.anchoring import Anchorer
        from ledger.connect import anchoring_chain

        chain = anchoring_chain(settings)
        # the readings were written above and no ingest runs: seal and digest in the same pass
        worker = Anchorer(engine, settings, chain=chain, influx=influx, seal_wait_s=0)
        report = worker.run_once(force_window=True)
        worker.run_once()  # tracks the receipts
        out["windows"] = report.windows
        out["chain_error"] = report.chain_error
    return out
