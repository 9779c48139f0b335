"""Verification and proof bundles against a real anvil and a real InfluxDB: tampering with a stored
event, an inspection, or an InfluxDB reading after anchoring is named; untouched lots stay verified;
a bundle checks offline with only the RPC endpoint."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event
from sqlmodel import Session, select
from typer.testing import CliRunner

from core.db import get_engine, migrate
from core.influx import InfluxV1
from core.services import ANVIL_DEV_KEY, Anvil, InfluxD, influxd
from core.services import anvil as make_anvil
from core.settings import Settings, get_settings
from ingest.enrich import DeviceDirectory
from ingest.payload import Reading
from ingest.pipeline import to_line
from ledger import records
from ledger.anchor_models import TelemetryDigest
from ledger.anchoring import Anchorer
from ledger.bundle import lot_bundle, production_bundle
from ledger.bundle_verify import verify_bundle
from ledger.chain import Chain
from ledger.models import Inspection, InspectionItem, Lot, TraceEvent
from ledger.records import records_of_lot
from ledger.trace_io import load_demo_trace
from ledger.verify import PENDING, TAMPERED, VERIFIED, check_record, verify_lot
from simulators.devices import generate
from tests.chain_fixtures import chain_settings

BAG = "M35CW3XRD6R"  # 5 kg bags of milled lot 2026-M01, from plots 211122101201-001/-002 and 211122101203-001
OTHER_BAG = "KT9031CDHKW"  # bags of 2026-M02, from other plots
PLOT = "211122101201-001"
DAY_MS = int(datetime(2026, 7, 1, 0, 0, tzinfo=UTC).timestamp() * 1000) - 8 * 3_600_000  # local midnight


@dataclass
class Base:
    """Built once per module: InfluxDB with two days of a plot's readings, anvil with the demo
    season anchored, the registry database as a template; each test gets a copy of the database
    and the chain reverted to this state (evm_snapshot / evm_revert)."""

    template: Path
    influx: InfluxD
    node: Anvil
    chain: Chain
    snapshot: str


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Base]:
    folder = tmp_path_factory.mktemp("verify")
    influx_server = influxd(folder / "influx").start()
    node = make_anvil(folder / "anvil", slots_in_an_epoch=1)
    node.start()
    try:
        chain = Chain.connect(chain_settings(node), private_key=ANVIL_DEV_KEY)
        chain.ensure_contract(folder / "trace_anchor.json")
        template = folder / "registry.db"
        url = f"sqlite:///{template}"
        migrate(url)
        engine = get_engine(url)
        with Session(engine) as session:
            load_demo_trace(session)
            session.commit()
        with InfluxV1(influx_server.url, "village") as influx:
            influx.ensure_database()
            directory = DeviceDirectory(engine)
            lines = []
            for device, kind in (("paddy-0001", "paddy"), ("soil-0001", "soil"), ("wx-0001", "weather")):
                info = directory.get(device)
                assert info is not None and info.tags
                for r in generate(device, kind, DAY_MS, count=2 * 144):  # two days every 10 minutes
                    lines.append(to_line(Reading(device, kind, r["ts"], r["values"]), info.tags))
            influx.write("\n".join(lines))
            settings = chain_settings(node, ANCHOR_WINDOW_SECONDS=0, DATABASE_URL=url)
            report = Anchorer(engine, settings, chain=chain, influx=influx).run_once()
        assert report.derived["digests"] > 100 and report.derived["growth"] >= 5, report.derived
        assert not report.chain_error
        engine.dispose()
        get_engine.cache_clear()
        yield Base(template, influx_server, node, chain, str(node.rpc("evm_snapshot")))
    finally:
        node.stop()
        influx_server.stop()


@pytest.fixture
def anvil(base: Base) -> Anvil:
    return base.node


@pytest.fixture
def chain(base: Base) -> Chain:
    return base.chain


@pytest.fixture
def world(base: Base, tmp_path: Path) -> Iterator[tuple[Engine, InfluxV1, Settings]]:
    db = tmp_path / "registry.db"
    shutil.copyfile(base.template, db)
    assert base.node.rpc("evm_revert", base.snapshot) is True  # the chain as the template left it
    base.snapshot = str(base.node.rpc("evm_snapshot"))
    url = f"sqlite:///{db}"
    engine = get_engine(url)
    influx = InfluxV1(base.influx.url, "village")
    yield engine, influx, chain_settings(base.node, ANCHOR_WINDOW_SECONDS=0, DATABASE_URL=url)
    influx.close()
    engine.dispose()


def lot(session: Session, code: str) -> Lot:
    row = session.exec(select(Lot).where(Lot.code == code)).first()
    assert row is not None
    return row


def check(engine: Engine, chain: Chain, influx: InfluxV1, settings: Settings, code: str = BAG):  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        return verify_lot(session, lot(session, code), chain, influx, settings)


def test_untouched_lot_is_verified_with_block_and_time(world, chain: Chain) -> None:  # type: ignore[no-untyped-def]
    engine, influx, settings = world
    v = check(engine, chain, influx, settings)
    assert v.status == VERIFIED, [(c.kind, c.status, c.reasons) for c in v.records if c.status != VERIFIED]
    kinds = {c.kind for c in v.records}
    assert {"lot/1", "event/1", "inspection/1", "growth/1", "digest/1", "manifest/1"} <= kinds
    assert all(c.block_number and c.anchored_at and c.tx_hash for c in v.records)
    with Session(engine) as session:  # the day with readings has a real digest
        d = session.exec(
            select(TelemetryDigest).where(TelemetryDigest.value == PLOT, TelemetryDigest.readings > 0)
        ).all()
    assert {x.day.isoformat() for x in d} == {"2026-07-01", "2026-07-02"}
    assert sum(x.readings for x in d) == 3 * 288  # the plot's gauge, probe and weather station


def test_changed_event_is_named_and_other_lots_stay_verified(world, chain: Chain) -> None:  # type: ignore[no-untyped-def]
    engine, influx, settings = world
    with Session(engine) as session:
        spray = session.exec(select(TraceEvent).where(TraceEvent.biz_step.endswith("BizStep-spraying"))).first()  # type: ignore[union-attr]
        assert spray is not None
        spray.attributes = {**spray.attributes, "dose": 2.0}  # someone makes the spraying look lighter
        session.add(spray)
        session.commit()
        spray_id = spray.id
    bad = [c for c in check(engine, chain, influx, settings).records if c.status == TAMPERED]
    others = check(engine, chain, influx, settings, OTHER_BAG)
    affected = {c.record_id for c in bad if c.kind == "event/1"}
    if spray_id in affected:
        (c,) = [c for c in bad if c.record_id == spray_id]
        assert any("dose" in r and "-> 2" in r for r in c.reasons), c.reasons
    else:  # the spraying belongs to the other bag's lineage
        assert others.status == TAMPERED
    assert {check(engine, chain, influx, settings).status, others.status} == {TAMPERED, VERIFIED} or len(affected) > 0


def test_changed_inspection_result_is_tampered(world, chain: Chain) -> None:  # type: ignore[no-untyped-def]
    engine, influx, settings = world
    v0 = check(engine, chain, influx, settings)
    insp_ids = [c.record_id for c in v0.records if c.kind == "inspection/1"]
    with Session(engine) as session:
        item = session.exec(select(InspectionItem).where(InspectionItem.inspection_id == insp_ids[0])).first()
        assert item is not None
        item.value = round(item.value / 2, 6)
        session.add(item)
        session.commit()
    v = check(engine, chain, influx, settings)
    (bad,) = [c for c in v.records if c.status == TAMPERED]
    assert bad.kind == "inspection/1" and bad.record_id == insp_ids[0]
    assert any("items" in r and "value" in r for r in bad.reasons), bad.reasons
    assert v.status == TAMPERED


def test_changed_influx_reading_is_named_by_its_day_digest(world, chain: Chain) -> None:  # type: ignore[no-untyped-def]
    engine, influx, settings = world
    # overwrite one stored reading (same series and time) with another water level
    series = influx.query(f"SELECT * FROM paddy WHERE plot = '{PLOT}' LIMIT 1", epoch="ms")
    row = dict(zip(series[0]["columns"], series[0]["values"][0], strict=True))
    tags = tuple((k, row[k]) for k in ("county", "device", "plot", "village"))
    fields = {k: v for k, v in row.items() if k in ("water_level_cm", "water_temp_c")}
    original = dict(fields)
    fields["water_level_cm"] = fields["water_level_cm"] + 7.5
    influx.write(to_line(Reading(row["device"], "paddy", row["time"], fields), tags))
    try:
        _check_influx_tamper(engine, chain, influx, settings)
    finally:  # InfluxDB is shared by the module's tests: put the reading back
        influx.write(to_line(Reading(row["device"], "paddy", row["time"], original), tags))
    assert check(engine, chain, influx, settings).status == VERIFIED


def _check_influx_tamper(engine: Engine, chain: Chain, influx: InfluxV1, settings: Settings) -> None:
    v = check(engine, chain, influx, settings)
    bad = [c for c in v.records if c.status == TAMPERED]
    kinds = {c.kind for c in bad}
    assert "digest/1" in kinds, [(c.kind, c.reasons) for c in bad]
    digest = next(c for c in bad if c.kind == "digest/1")
    assert any("sha256" in r for r in digest.reasons)
    assert check(engine, chain, influx, settings, OTHER_BAG).status == VERIFIED


def test_deleted_failed_inspection_shows_as_tampered_not_absent(world, chain: Chain) -> None:  # type: ignore[no-untyped-def]
    engine, influx, settings = world
    with Session(engine) as session:
        failed = session.exec(select(Inspection).where(Inspection.passed == False)).first()  # noqa: E712
        assert failed is not None
        code = session.get(Lot, failed.lot_id).code  # type: ignore[union-attr]
        for item in session.exec(select(InspectionItem).where(InspectionItem.inspection_id == failed.id)):
            session.delete(item)
        session.flush()
        session.delete(failed)
        session.commit()
    # the worker runs again: it must not bless the removal with a smaller manifest
    Anchorer(engine, settings, chain=chain, influx=influx).run_once()
    v = check(engine, chain, influx, settings, code)
    gone = [c for c in v.records if c.status == TAMPERED]
    assert gone and any("gone" in r for c in gone for r in c.reasons)


def test_new_record_is_pending_until_anchored(world, chain: Chain) -> None:  # type: ignore[no-untyped-def]
    engine, influx, settings = world
    with Session(engine) as session:
        bag = lot(session, BAG)
        ev = session.exec(select(TraceEvent).where(TraceEvent.lot_id == bag.id)).first()
        assert ev is not None
        shipped = TraceEvent(**{**ev.model_dump(exclude={"id", "event_id", "salt", "recorded_at"})})
        session.add(shipped)
        session.commit()
    v = check(engine, chain, influx, settings)
    assert v.status == PENDING and v.counts[PENDING] >= 1 and v.counts[TAMPERED] == 0
    worker = Anchorer(engine, settings, chain=chain, influx=influx)
    worker.run_once()
    for _ in range(50):  # anvil may mine the transaction a moment after accepting it: the next pass sees it
        if check(engine, chain, influx, settings).status == VERIFIED:
            break
        time.sleep(0.1)
        worker.run_once()
    assert check(engine, chain, influx, settings).status == VERIFIED


def test_proof_bundle_checks_offline_and_catches_an_edit(world, chain: Chain, anvil) -> None:  # type: ignore[no-untyped-def]
    engine, influx, settings = world
    with Session(engine) as session:
        bundle = lot_bundle(session, lot(session, BAG), chain, influx, settings)
    assert bundle["records"] and not bundle["pending"]
    assert all(r["window"]["tx_hash"] and r["window"]["block_hash"] for r in bundle["records"])
    text = json.dumps(bundle)
    assert "contact" not in text and "phone" not in text
    result = verify_bundle(json.loads(text), anvil.url, chain_id=chain.chain_id, contract=chain.address)
    assert result.ok, [r.problems for r in result.records if not r.ok]
    # an auditor's copy with one changed byte of one record fails, naming that record only
    forged = json.loads(text)
    rec = next(r for r in forged["records"] if r["kind"] == "inspection/1")
    rec["canonical"] = rec["canonical"].replace('"passed":true', '"passed":false', 1)
    rec["leaf"] = "0x" + __import__("ledger.merkle", fromlist=["leaf_hash"]).leaf_hash(rec["canonical"].encode()).hex()
    result = verify_bundle(forged, anvil.url, chain_id=chain.chain_id, contract=chain.address)
    assert not result.ok and sum(not r.ok for r in result.records) == 1


def test_production_record_bundle_for_a_cooperative(world, chain: Chain, anvil) -> None:  # type: ignore[no-untyped-def]
    engine, influx, settings = world
    from core.models import Farm

    with Session(engine) as session:
        farm = session.exec(select(Farm).where(Farm.code == "PS-F001")).first()
        assert farm is not None
        bundle = production_bundle(session, farm, 2026, chain, influx, settings)
    subject = bundle["subject"]
    assert subject["farm"] == "PS-F001" and subject["area_mu"] == 152 + 161
    assert [p["plot_no"] for p in subject["plots"]] == ["211122101201-001", "211122101201-002"]
    assert subject["monitored_days"] >= 2
    assert verify_bundle(bundle, anvil.url, chain_id=chain.chain_id, contract=chain.address).ok


def test_cli_verify_and_verify_bundle(world, chain: Chain, anvil, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _engine, influx, settings = world
    from cli.main import app

    env = {
        "DATABASE_URL": settings.resolved_database_url(),
        "CHAIN_RPC_URL": anvil.url,
        "CHAIN_CONTRACT_ADDRESS": chain.address,
        "INFLUX_URL": influx.url,
        "INFLUX_DB": influx.db,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    runner = CliRunner()
    out = runner.invoke(app, ["verify", "M35C-W3XR-D6R", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["status"] == VERIFIED
    bundle_path = tmp_path / "bundle.json"
    out = runner.invoke(app, ["proof", "M35C-W3XR-D6R", "-o", str(bundle_path)])
    assert out.exit_code == 0, out.output
    out = runner.invoke(app, ["verify-bundle", str(bundle_path), "--rpc", anvil.url])
    assert out.exit_code == 2 and "--chain-id" in out.output, out.output  # no CHAIN_ID: refused
    out = runner.invoke(app, ["verify-bundle", str(bundle_path), "--rpc", anvil.url, "--chain-id", "31337"])
    assert out.exit_code == 0 and "records proven" in out.output, out.output
    out = runner.invoke(app, ["verify", "NOT-A-CODE"])
    assert out.exit_code == 2 and "error" in out.output
    get_settings.cache_clear()


def _statements(engine: Engine, run: Callable[[], Any]) -> tuple[Any, int]:
    """What `run()` returns, and how many SQL statements it sent."""
    sent: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        return run(), len(sent)
    finally:
        event.remove(engine, "before_cursor_execute", count)


def test_verifying_a_lot_takes_a_bounded_number_of_statements(world, chain: Chain) -> None:  # type: ignore[no-untyped-def]
    """Set-based verification: the statements do not grow with the lot's records (40 more events of
    the bag, anchored, cost at most the new window's proof pages), and the records come out as
    `check_record` makes them one by one."""
    engine, influx, settings = world

    def verify(memo: dict[Any, Any] | None = None) -> Any:
        with Session(engine) as session:
            return verify_lot(session, lot(session, BAG), chain, influx, settings, memo=memo)

    before, n_before = _statements(engine, verify)
    assert before.status == VERIFIED and len(before.records) > 150, (before.status, len(before.records))
    assert n_before <= 80, n_before  # a constant of the lineage (3 lots, 3 plots), not of its hundreds of records
    with Session(engine) as session:
        bag = lot(session, BAG)
        model = session.exec(select(TraceEvent).where(TraceEvent.lot_id == bag.id)).first()
        assert model is not None
        keep = model.model_dump(exclude={"id", "event_id", "salt"})
        for i in range(40):  # the bag observed 40 more times
            session.add(TraceEvent(**{**keep, "event_time": keep["event_time"] + timedelta(minutes=i + 1)}))
        session.commit()
    Anchorer(engine, settings, chain=chain, influx=influx).run_once()
    after, n_after = _statements(engine, verify)
    assert after.status == VERIFIED and len(after.records) >= len(before.records) + 40
    assert n_after <= n_before + 3, (n_before, n_after)  # another window: its pages, its row
    memo: dict[Any, Any] = {}
    verify(memo)
    again, n_again = _statements(engine, lambda: verify(memo))
    assert again.records == after.records and n_again <= n_after, (n_after, n_again)
    with Session(engine) as session:
        one_by_one = [
            check_record(session, ref, chain, influx, settings) for ref in records_of_lot(session, lot(session, BAG).id)
        ]
    assert after.records == one_by_one
    with Session(engine) as session:  # the lot's records as every kind's one-lot collector lists them
        for row in session.exec(select(Lot)).all():
            assert row.id is not None
            refs = records_of_lot(session, row.id)
            lineage = [r.id for r in refs if r.kind == "lot/1"]
            for kind, collect in records._COLLECTORS.items():
                assert [r for r in refs if r.kind == kind] == list(collect(session, lineage)), (row.code, kind)
