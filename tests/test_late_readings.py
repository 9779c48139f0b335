"""The attack of issue 10 (point 8): a device overwrites a reading of a day that is already digested
and anchored. Against real mosquitto, InfluxDB, an ingest process, anvil and the API: the anchored
point stays as it was, the lot stays verified, and the late readings are kept with supplementary
digests of their own, anchored in later windows and named on the trace page and JSON."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from api.app import create_app
from core.db import get_engine
from core.influx import LATE_RP, InfluxRejected, InfluxV1
from core.localstack import LocalStack
from core.settings import Settings
from ledger.anchor_models import ON_CHAIN, AnchorWindow, LateDigest, LedgerLeaf, TelemetryDigest
from ledger.anchoring import Anchorer, PassReport
from ledger.chain import Chain
from ledger.late import LATE_DIGEST
from ledger.models import Lot
from ledger.trace_io import DEMO_TRACE_FILE, import_trace
from ledger.verify import VERIFIED, Verification, verify_lot
from tests.chain_fixtures import chain_settings
from tests.conftest import DeviceClient, wait_ingest_ready, wait_until

BAG = "M35CW3XRD6R"  # 5 kg bags whose paddy grew on PLOT (among others)
PLOT = "211122101201-001"
DEVICE = "paddy-0001"  # the paddy gauge on PLOT
JULY_1_MS = int(datetime(2026, 7, 1, tzinfo=UTC).timestamp() * 1000) - 8 * 3_600_000  # local midnight
HALF_HOUR = 1_800_000


def _anchor(worker: Anchorer, engine: Engine) -> PassReport:
    """Passes until the seals are safe and every leaf is on chain; returns the first pass's report."""
    first = worker.run_once(force_window=True)
    if first.seal_wait_s:
        time.sleep(first.seal_wait_s + 0.1)  # ingest replicas re-read the seals meanwhile
    for _ in range(60):
        worker.run_once(force_window=True)
        with Session(engine) as session:
            waiting = session.exec(select(LedgerLeaf.id).where(col(LedgerLeaf.window_seq).is_(None))).first()
            unsent = session.exec(select(AnchorWindow).where(col(AnchorWindow.state).not_in(list(ON_CHAIN)))).first()
        if waiting is None and unsent is None:
            return first
        time.sleep(0.1)
    raise AssertionError("anchoring did not settle")


def _verify(engine: Engine, chain: Chain, influx: InfluxV1, settings: Settings) -> Verification:
    with Session(engine) as session:
        lot = session.exec(select(Lot).where(Lot.code == BAG)).one()
        return verify_lot(session, lot, chain, influx, settings)


def _level(influx: InfluxV1, ts: int, source: str = '"paddy"') -> list[list[object]]:
    rows = influx.query(f"SELECT water_level_cm FROM {source} WHERE device = '{DEVICE}' AND time = {ts}ms")
    return rows[0]["values"] if rows else []


def _late_points(influx: InfluxV1, where: str = "") -> list[list[object]]:
    """Late readings of the gauge as [time, water level, batch]; none before the first one arrives."""
    source = f'"{influx.db}"."{LATE_RP}"."paddy"'
    try:
        rows = influx.query(f"SELECT water_level_cm, sealed_through FROM {source} WHERE device = '{DEVICE}'{where}")
    except InfluxRejected:  # the retention policy is created with the first late reading
        return []
    return rows[0]["values"] if rows else []


def test_attack_overwrite_anchored_day(stack: LocalStack, anvil, chain: Chain) -> None:  # type: ignore[no-untyped-def]
    engine = get_engine(stack.database_url)
    with Session(engine) as session:
        import_trace(session, DEMO_TRACE_FILE)  # the demo season's lots, from the stack's plots
        session.commit()
    stack.start_ingest(1)  # INGEST_REGISTRY_TTL_S=1 (the stack fixture)
    wait_ingest_ready(stack, DeviceClient(stack, "wx-0005"), "weather", {"air_temp_c": 10.0})
    device = DeviceClient(stack, DEVICE)
    day = [{"ts": JULY_1_MS + i * HALF_HOUR, "values": {"water_level_cm": 4.0 + i / 10}} for i in range(48)]
    assert device.send([day]) == [0]  # an offline backfill of 1 July
    influx = stack.influx()
    assert wait_until(lambda: influx.count("paddy", "water_level_cm", f"device = '{DEVICE}'") == 48)

    # the anchoring worker seals the village's days, waits for ingest to see the seal, digests, anchors
    settings = chain_settings(
        anvil,
        ANCHOR_WINDOW_SECONDS=0,
        DATABASE_URL=stack.database_url,
        INGEST_REGISTRY_TTL_S=1,  # as the ingest process: the wait covers its reload and a write in flight
        ANCHOR_SEAL_WAIT_S=3,
    )
    clock: list[Callable[[], datetime]] = [lambda: datetime.now(UTC)]
    worker = Anchorer(engine, settings, chain=chain, influx=influx, clock=lambda: clock[0]())
    sealing = _anchor(worker, engine)
    assert sealing.derived["sealed"] >= 1 and sealing.derived["digests"] == 0  # no digest before the seal is safe
    assert _verify(engine, chain, influx, settings).status == VERIFIED
    with Session(engine) as session:
        anchored = session.exec(
            select(TelemetryDigest).where(TelemetryDigest.value == PLOT, TelemetryDigest.day == "2026-07-01")
        ).one()
        assert anchored.readings == 48
        digest_window = session.exec(
            select(LedgerLeaf.window_seq).where(LedgerLeaf.kind == "digest/1", LedgerLeaf.record_id == anchored.id)
        ).one()

    # the attack: the same series and timestamp with another value, plus a new reading on that day
    target = JULY_1_MS + 10 * HALF_HOUR
    attack = [
        {"ts": target, "values": {"water_level_cm": -25.0}},
        {"ts": JULY_1_MS + 10 * HALF_HOUR + 60_000, "values": {"water_level_cm": 9.0}},
    ]
    assert device.send([attack]) == [0]
    assert wait_until(lambda: len(_late_points(influx)) == 2)
    assert _level(influx, target) == [[target, 5.0]]  # the anchored point is unchanged
    assert influx.count("paddy", "water_level_cm", f"device = '{DEVICE}'") == 48
    assert _verify(engine, chain, influx, settings).status == VERIFIED

    # the next day the seal moves on; once that is safe, the closed batch gets its supplementary digest
    clock[0] = lambda: datetime.now(UTC) + timedelta(days=1)
    _anchor(worker, engine)
    with Session(engine) as session:
        (first,) = session.exec(select(LateDigest).where(LateDigest.value == PLOT)).all()
        assert (first.day.isoformat(), first.supplement, first.readings) == ("2026-07-01", 1, 2)
        first_window = session.exec(
            select(LedgerLeaf.window_seq).where(LedgerLeaf.kind == LATE_DIGEST, LedgerLeaf.record_id == first.id)
        ).one()
    assert first_window is not None and digest_window is not None and first_window > digest_window
    v = _verify(engine, chain, influx, settings)
    assert v.status == VERIFIED, [(c.kind, c.reasons) for c in v.records if c.status != VERIFIED]
    assert [c.status for c in v.records if c.kind == LATE_DIGEST] == [VERIFIED]

    # a further late reading at the very same time: a new batch, so supplement 1 is never rewritten
    assert device.send([{"ts": target, "values": {"water_level_cm": 30.0}}]) == [0]
    assert wait_until(lambda: len(_late_points(influx)) == 3)
    clock[0] = lambda: datetime.now(UTC) + timedelta(days=2)
    _anchor(worker, engine)
    with Session(engine) as session:
        rows = session.exec(select(LateDigest).where(LateDigest.value == PLOT).order_by(LateDigest.supplement)).all()
        assert [(r.supplement, r.readings) for r in rows] == [(1, 2), (2, 1)]
    same_time = _late_points(influx, f" AND time = {target}ms")
    assert sorted(r[1] for r in same_time) == [-25.0, 30.0]  # both kept, each in its own batch
    assert len({r[2] for r in same_time}) == 2
    v = _verify(engine, chain, influx, settings)
    assert v.status == VERIFIED, [(c.kind, c.reasons) for c in v.records if c.status != VERIFIED]
    assert [c.status for c in v.records if c.kind == LATE_DIGEST] == [VERIFIED, VERIFIED]

    # the trace JSON and page say which day had late data, and how much
    api = Settings(
        _env_file=None,  # type: ignore[call-arg]
        VILLAGE_DATA_DIR=str(stack.root),
        DATABASE_URL=stack.database_url,
        INFLUX_URL=influx.url,
        CHAIN_RPC_URL=anvil.url,
        CHAIN_CONTRACT_ADDRESS=chain.address,
        API_JWT_SECRET="test-secret-for-the-late-readings-test-0123456789",
    )
    with TestClient(create_app(api)) as client:
        trace = client.get(f"/api/v1/trace/{BAG}").json()
        assert {"day": "2026-07-01", "plot": PLOT, "readings": 3, "supplements": 2} in trace["late_data"]
        page = client.get(f"/t/{BAG}?lang=en").text
        assert 'id="late-data"' in page and "2026-07-01" in page and "3 late readings" in page
        verified = client.get(f"/api/v1/trace/{BAG}/verify").json()
        assert verified["status"] == VERIFIED
    device.close()
    influx.close()
