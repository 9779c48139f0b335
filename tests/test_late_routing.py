"""Late readings at ingest: the routing rule, the seal cache's freshness, and the spool-replay race
(a batch spooled while InfluxDB was away and replayed after its day was sealed and digested),
against a real InfluxDB and a real SQLite registry."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from core.catalogue import get_catalogue
from core.db import make_engine, migrate
from core.influx import LATE_RP, InfluxV1
from core.provisioning import provision
from core.services import InfluxD, influxd
from ingest.enrich import DeviceDirectory
from ingest.late import Seal, Seals, SealsUnavailable, route
from ingest.metrics import IngestMetrics
from ingest.payload import Validator
from ingest.pipeline import Message, Pipeline
from ingest.spool import Spool
from ledger import digests, late
from ledger.anchor_models import TelemetrySeal
from ledger.trace_io import load_demo_trace

TZ = "Asia/Shanghai"
VILLAGE = "211122101201"
PLOT = "211122101201-001"
JULY_1 = date(2026, 7, 1)
JULY_1_MS = int(datetime(2026, 7, 1, tzinfo=UTC).timestamp() * 1000) - 8 * 3_600_000  # local midnight
END_MS = JULY_1_MS + 86_400_000
KEY = f"paddy,county=211122,device=paddy-0001,plot={PLOT},village={VILLAGE}"

# ---------------------------------------------------------------- the routing rule


def test_route_sends_readings_before_the_seal_end_to_late_with_their_batch_tag() -> None:
    seals = {VILLAGE: Seal(END_MS, ",sealed_through=2026-07-01")}
    before, at_end, other = (
        f"{KEY} water_level_cm=4.5 {END_MS - 1}",
        f"{KEY} water_level_cm=4.6 {END_MS}",  # the first instant of the next day: on time
        f"paddy,county=211122,device=paddy-0009,plot=x,village=211122999999 water_level_cm=1 {JULY_1_MS}",
    )
    on_time, late_lines = route([before, at_end, other], seals, END_MS)
    assert on_time == [at_end, other]
    assert late_lines == [f"{KEY},sealed_through=2026-07-01 water_level_cm=4.5 {END_MS - 1}"]


def test_route_passes_everything_without_seals_and_live_readings_without_parsing() -> None:
    lines = [f"{KEY} water_level_cm=4.5 {JULY_1_MS}", "garbage without a time", f"{KEY} a=1 {END_MS + 5}"]
    assert route(lines, {}, 0) == (lines, [])
    seals = {VILLAGE: Seal(END_MS, ",sealed_through=2026-07-01")}
    on_time, late_lines = route(lines, seals, END_MS)
    assert on_time == lines[1:] and late_lines == [f"{KEY},sealed_through=2026-07-01 water_level_cm=4.5 {JULY_1_MS}"]


def test_route_reads_the_village_tag_through_escapes_and_never_another_tag() -> None:
    seals = {VILLAGE: Seal(END_MS, ",sealed_through=2026-07-01")}
    # an escaped ",village=..." inside another tag's value is not the village tag
    tricky = rf"paddy,county=a\,village\={VILLAGE},device=d,village=211122999999 v=1 {JULY_1_MS}"
    spaced = rf"paddy,device=a\ b,village={VILLAGE} v=1 {JULY_1_MS}"
    string_field = f'paddy,village={VILLAGE} note="a b c" {JULY_1_MS}'
    on_time, late_lines = route([tricky, spaced, string_field], seals, END_MS)
    assert on_time == [tricky]
    assert late_lines == [
        rf"paddy,device=a\ b,village={VILLAGE},sealed_through=2026-07-01 v=1 {JULY_1_MS}",
        f'paddy,village={VILLAGE},sealed_through=2026-07-01 note="a b c" {JULY_1_MS}',
    ]


# ---------------------------------------------------------------- the seal cache


@pytest.fixture(scope="module")
def registry_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("registry") / "registry.db"
    url = f"sqlite:///{path}"
    migrate(url)
    eng = make_engine(url)
    with Session(eng) as session:
        load_demo_trace(session)
        session.commit()
        provision(session, "paddy-0001")
        session.commit()
    eng.dispose()
    return path


@pytest.fixture
def engine(registry_template: Path, tmp_path: Path) -> Iterator[Engine]:
    path = tmp_path / "registry.db"
    path.write_bytes(registry_template.read_bytes())
    eng = make_engine(f"sqlite:///{path}")
    try:
        yield eng
    finally:
        eng.dispose()


def seal(engine: Engine, through: date, now: datetime | None = None) -> None:
    with Session(engine) as session:
        late.advance_seals(session, None, {VILLAGE}, through, now or datetime.now(UTC), 0, TZ)  # type: ignore[arg-type]
        session.commit()


def test_a_replica_never_routes_with_a_copy_older_than_its_ttl(engine: Engine) -> None:
    clock = [1000.0]
    seals = Seals(engine, ttl=30, clock=lambda: clock[0])
    assert seals.current() == ({}, 0)
    seal(engine, JULY_1)
    clock[0] += 29.9  # within the TTL this copy may be stale: ANCHOR_SEAL_WAIT_S covers exactly this
    assert seals.current() == ({}, 0)
    clock[0] += 0.1
    by_village, horizon = seals.current()
    assert by_village == {VILLAGE: Seal(END_MS, ",sealed_through=2026-07-01")} and horizon == END_MS


def test_an_unreadable_registry_routes_nothing(tmp_path: Path) -> None:
    broken = make_engine(f"sqlite:///{tmp_path / 'not-migrated.db'}")  # no telemetry_seal table
    with pytest.raises(SealsUnavailable, match="telemetry seals"):
        Seals(broken, ttl=30).current()
    broken.dispose()


# ---------------------------------------------------------------- against a real InfluxDB


@pytest.fixture(scope="module")
def influx_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxD]:
    server = influxd(tmp_path_factory.mktemp("influx"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def make_pipeline(engine: Engine, influx: InfluxV1, spool_dir: Path, seals: Seals | None = None) -> Pipeline:
    catalogue = get_catalogue()
    return Pipeline(
        catalogue=catalogue,
        validator=Validator(catalogue, 65536, 300, 400),
        directory=DeviceDirectory(engine, ttl=0.2),
        influx=influx,
        spool=Spool(spool_dir / "spool.sqlite", 10_000_000),
        engine=engine,
        metrics=IngestMetrics(),
        retry_s=0.05,
        seals=seals,
    )


def reading(ts: int, level: float) -> Message:
    doc = {"ts": ts, "values": {"water_level_cm": level, "water_temp_c": 20.0}}
    return Message("v1/devices/paddy-0001/telemetry", orjson.dumps(doc), int(time.time() * 1000))


def test_spool_replay_after_the_digest_goes_to_late_and_leaves_the_digest_unchanged(
    engine: Engine, influx_server: InfluxD, tmp_path: Path
) -> None:
    influx = InfluxV1(influx_server.url, "spoolrace", timeout=2)
    influx.ensure_database()
    pipeline = make_pipeline(engine, influx, tmp_path)
    pipeline.handle([reading(JULY_1_MS + 3_600_000 * h, 5.0 + h / 10) for h in range(6)])  # on time
    assert influx.count("paddy", "water_level_cm") == 6
    influx_server.stop()  # InfluxDB goes away with a batch of the same day in flight
    pipeline.handle([reading(JULY_1_MS + 3_600_000 * 2, 49.0), reading(JULY_1_MS + 3_600_000 * 9, 7.5)])
    assert len(pipeline.spool) == 1  # acknowledged: the spool holds it, unrouted
    influx_server.start()
    seal(engine, JULY_1)  # the anchoring worker seals the day and, after its wait, digests it
    before = digests.compute(influx, "plot", PLOT, JULY_1, TZ)
    assert before[0] == 6
    time.sleep(0.25)  # the replica's copy of the seals is now older than its TTL
    assert pipeline.drain_spool() and len(pipeline.spool) == 0
    assert digests.compute(influx, "plot", PLOT, JULY_1, TZ) == before  # the anchored day is untouched
    original = influx.query(f"SELECT water_level_cm FROM paddy WHERE time = {JULY_1_MS + 7_200_000}ms")
    assert original[0]["values"][0][1] == 5.2  # not 49
    late_rows = influx.query(
        f'SELECT water_level_cm, sealed_through FROM "spoolrace"."{LATE_RP}"."paddy" WHERE plot = \'{PLOT}\''
    )
    assert [r[1:] for r in late_rows[0]["values"]] == [[49.0, "2026-07-01"], [7.5, "2026-07-01"]]
    assert pipeline.metrics.late._value.get() == 2
    influx.close()
    pipeline.spool.close()


def test_readings_wait_in_the_spool_while_the_seals_cannot_be_read(
    engine: Engine, influx_server: InfluxD, tmp_path: Path
) -> None:
    influx = InfluxV1(influx_server.url, "noseals", timeout=2)
    influx.ensure_database()
    broken = make_engine(f"sqlite:///{tmp_path / 'not-migrated.db'}")
    pipeline = make_pipeline(engine, influx, tmp_path, seals=Seals(broken, ttl=30))
    pipeline.handle([reading(JULY_1_MS, 4.0)])
    assert len(pipeline.spool) == 1 and influx.count("paddy", "water_level_cm") == 0
    pipeline.seals = Seals(engine, ttl=30)  # the registry answers again (seal through the day before)
    seal(engine, JULY_1 - timedelta(days=1))
    assert pipeline.drain_spool() and influx.count("paddy", "water_level_cm") == 1
    broken.dispose()
    influx.close()
    pipeline.spool.close()


def test_seal_rows_are_what_ingest_reads(engine: Engine) -> None:
    now = datetime(2026, 7, 3, 1, tzinfo=UTC)
    seal(engine, JULY_1, now)
    with Session(engine) as session:
        row = session.get(TelemetrySeal, VILLAGE)
        assert row is not None and row.until_ms == END_MS and row.sealed_through == JULY_1
        assert late.safe_through(row, now, 60) is None  # just sealed: nothing is safe yet
        assert late.safe_through(row, now + timedelta(seconds=60), 60) == JULY_1


def test_a_batch_without_late_readings_closes_even_before_any_late_retention_policy(
    engine: Engine, influx_server: InfluxD
) -> None:
    influx = InfluxV1(influx_server.url, "nolate", timeout=2)
    influx.ensure_database()  # no retention policy `late`: no late reading was ever written
    now = datetime.now(UTC)
    with Session(engine) as session:
        for day in range(3):  # sealed, moved (closing a batch), moved again (digesting the closed one)
            report = late.advance_seals(session, influx, {VILLAGE}, JULY_1 + timedelta(days=day), now, 0, TZ)
            assert report.sealed == 1 and report.late_digests == 0
        row = session.get(TelemetrySeal, VILLAGE)
        assert row is not None and row.late_digested == JULY_1 and row.previous == JULY_1 + timedelta(days=1)
    influx.close()
