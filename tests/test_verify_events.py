"""Event-driven verification on PostgreSQL (migration 0014's notifications, api/services/verifier.py):
a write to a lot invalidates its verified state at once (not after API_VERIFY_CACHE_S), a scan during
a verification answers immediately, and windows' chain checks are shared between lots."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlmodel import Session, select

from api.demo import seed
from api.services.shared_checks import CLOCK_SLACK_S
from api.services.tracing import CHECKING, TraceService
from core.db import get_engine, migrate
from core.influx import InfluxV1
from core.services import ANVIL_DEV_KEY, anvil, influxd, postgres
from core.settings import Settings
from ledger.connect import reading_chain
from ledger.models import Lot, TraceEvent
from ledger.records import EVENT, records_of_lot
from ledger.verify import TAMPERED, VERIFIED

BAG = "M35CW3XRD6R"  # 5 kg bags of milled lot 2026-M01
SAME_WINDOW_BAG = "91SPQFCCETM"  # bags of the same milled lot
OTHER_BAG = "KT9031CDHKW"  # bags of milled lot 2026-M02: another lineage
TTL = 600.0  # far longer than the test: whatever changes, changes by an event


@dataclass
class PgWorld:
    settings: Settings
    engine: Engine


@pytest.fixture(scope="module")
def world() -> Iterator[PgWorld]:
    folder = Path(tempfile.mkdtemp(prefix="village-events-"))  # not under tmp_path: PostgreSQL's user reads it
    folder.chmod(0o755)
    pg = postgres(folder / "pg").start()
    influx_server = influxd(folder / "influx").start()
    chain = anvil(folder / "anvil").start()
    try:
        url = pg.create_database("village")
        migrate(url)
        env = {
            "VILLAGE_DATA_DIR": str(folder / "data"),
            "DATABASE_URL": url,
            "INFLUX_URL": influx_server.url,
            "CHAIN_RPC_URL": chain.url,
            "CHAIN_PRIVATE_KEY": ANVIL_DEV_KEY,
            "CHAIN_TIMEOUT_S": 5,
        }
        settings = Settings(_env_file=None, **env)  # type: ignore[arg-type]
        engine = get_engine(url)
        influx = InfluxV1(influx_server.url, "village")
        out = seed(engine, influx, settings)
        assert out["windows"] and not out["chain_error"], out
        influx.close()
        contract = reading_chain(settings)
        assert contract is not None
        settings = Settings(
            _env_file=None,
            **env,
            CHAIN_CONTRACT_ADDRESS=contract.address,
            API_VERIFY_CACHE_S=TTL,  # type: ignore[arg-type]
        )
        yield PgWorld(settings, engine)
        engine.dispose()
    finally:
        chain.stop()
        influx_server.stop()
        pg.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def service(world: PgWorld) -> Iterator[TraceService]:
    svc = TraceService(world.engine, world.settings)
    svc.open()
    assert svc.listener is not None and svc.listener.ready.wait(30), "not listening"
    yield svc
    svc.close()


def wait_heard(svc: TraceService, before: int, timeout: float = 20.0) -> None:
    assert svc.listener is not None
    deadline = time.monotonic() + timeout
    while svc.listener.heard == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert svc.listener.heard > before, "no ledger_change notification heard"


def an_event_of(engine: Engine, code: str) -> int:
    with Session(engine) as s:
        lot = s.exec(select(Lot).where(Lot.code == code)).one()
        assert lot.id is not None
        return next(r.id for r in records_of_lot(s, lot.id) if r.kind == EVENT)


def edit_event(engine: Engine, event_id: int, **changes: object) -> dict:
    """Edit an anchored event's attributes in place (tampering, as hand-made SQL would); the original ones."""
    with Session(engine) as s:
        event = s.get(TraceEvent, event_id)
        assert event is not None
        original = dict(event.attributes)
        event.attributes = {**original, **changes}
        s.add(event)
        s.commit()
    return original


def restore_event(engine: Engine, event_id: int, attributes: dict) -> None:
    with Session(engine) as s:
        event = s.get(TraceEvent, event_id)
        assert event is not None
        event.attributes = attributes
        s.add(event)
        s.commit()


def test_a_write_to_a_lot_invalidates_its_verified_state(world: PgWorld, service: TraceService) -> None:
    """Tampering is seen on the first scan after the write's notification, not API_VERIFY_CACHE_S later;
    a write to another lineage leaves the lot's result alone."""
    assert service.verification(BAG)["status"] == VERIFIED
    assert service.verification(OTHER_BAG)["status"] == VERIFIED
    body, freshness = service.view_json(BAG)
    assert freshness is not None and b'"verified"' in body  # cached now, for up to TTL

    token_bag = service.token(BAG)
    heard = service.listener.heard  # type: ignore[union-attr]
    with Session(world.engine) as s:  # another lineage changes: the bag's result stands
        event = s.get(TraceEvent, an_event_of(world.engine, OTHER_BAG))
        assert event is not None
        event.attributes = {**event.attributes, "note": "edited"}
        s.add(event)
        s.commit()
    wait_heard(service, heard)
    assert service.token(BAG) == token_bag
    assert service.checked(BAG, wait=False).result["status"] == VERIFIED

    heard = service.listener.heard  # type: ignore[union-attr]
    changed_at = time.monotonic()
    event_id = an_event_of(world.engine, BAG)
    original = edit_event(
        world.engine, event_id, tampered_field=999
    )  # an anchored event of the bag's lineage edited in place
    wait_heard(service, heard)
    scan = service.checked(BAG, wait=False).result  # a page or the JSON: never the old "verified"
    assert scan["status"] == CHECKING and scan["previous"]["status"] == VERIFIED
    body, _ = service.view_json(BAG)
    assert json.loads(body)["verification"]["status"] == CHECKING
    v = service.verification(BAG)  # /verify waits for the check
    assert v["status"] == TAMPERED and time.monotonic() - changed_at < TTL / 10
    assert any("tampered_field" in reason for r in v["records"] for reason in r["reasons"])

    heard = service.listener.heard  # type: ignore[union-attr]
    restore_event(world.engine, event_id, original)  # put back: verified again at the next check
    wait_heard(service, heard)
    assert service.verification(BAG)["status"] == VERIFIED


def test_a_scan_during_verification_answers_immediately(world: PgWorld, service: TraceService) -> None:
    """The first scans of a lot answer "checking" at once while a background thread verifies it."""
    started = time.monotonic()
    first = service.checked(SAME_WINDOW_BAG, wait=False)
    answered = time.monotonic() - started
    assert first.result["status"] == CHECKING and "previous" not in first.result
    during = service.checked(SAME_WINDOW_BAG, wait=False)  # the check is still running (or queued)
    assert during.result["status"] in (CHECKING, VERIFIED)
    while service.checked(SAME_WINDOW_BAG, wait=False).result["status"] == CHECKING:
        assert time.monotonic() - started < 120
        time.sleep(0.02)
    took = time.monotonic() - started
    assert service.checked(SAME_WINDOW_BAG, wait=False).result["status"] == VERIFIED
    assert answered < took / 2, (answered, took)  # the scan did not wait for the verification


def test_windows_chain_checks_are_shared(world: PgWorld, service: TraceService) -> None:
    """Bags of one window ask the chain once for it, and bags of one milled lot rebuild its lineage's
    records once; a window event re-derives them without asking the chain again about an unchanged
    window."""
    assert service.verification(BAG)["status"] == VERIFIED
    asked, rebuilt = service.windows.asked, service.records.rebuilt
    assert asked >= 1 and rebuilt > 100
    v = service.verification(SAME_WINDOW_BAG)
    assert v["status"] == VERIFIED and {r["window"] for r in v["records"]} <= {
        r["window"] for r in service.verification(BAG)["records"]
    }
    assert service.windows.asked == asked  # the window's chain check was shared
    own = service.records.rebuilt - rebuilt  # the records of the milled, dried and paddy lots were shared
    assert 0 < own < len(v["records"]) / 10, (own, len(v["records"]))
    token = service.token(BAG)
    heard = service.listener.heard  # type: ignore[union-attr]
    with world.engine.begin() as conn:  # the anchoring worker touches the window (same state)
        conn.execute(text("UPDATE anchor_window SET state = state"))
    wait_heard(service, heard)
    assert service.token(BAG) != token  # invalidated by the window's event...
    assert service.verification(BAG)["status"] == VERIFIED
    assert service.windows.asked == asked  # ...and the unchanged window's answer reused


def test_an_expired_result_is_renewed_without_reading_the_database(world: PgWorld) -> None:
    """When API_VERIFY_CACHE_S has passed and nothing was heard of the lot, the re-check asks the chain
    about the lot's windows (once, shared) and renews the result without a single SQL statement; a
    write heard after that makes the next check a full one again, which sees it."""
    from sqlalchemy import event as sa_event

    ttl = 2.0
    svc = TraceService(world.engine, world.settings.model_copy(update={"api_verify_cache_s": ttl}))
    svc.open()
    try:
        assert svc.listener is not None and svc.listener.ready.wait(30), "not listening"
        first = svc.verification(BAG)
        assert first["status"] == VERIFIED and svc.renewed == 0
        time.sleep(ttl + 0.2)  # expired: a result is never served past API_VERIFY_CACHE_S
        assert svc._current_result(BAG) is None  # (a scan now would answer "checking")

        statements: list[str] = []

        def count(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
            statements.append(statement)

        sa_event.listen(world.engine, "before_cursor_execute", count)
        try:
            asked = svc.windows.asked
            renewed = svc.verification(BAG)
        finally:
            sa_event.remove(world.engine, "before_cursor_execute", count)
        assert renewed["status"] == VERIFIED and svc.renewed >= 1
        assert statements == [], statements  # from the memory of what it read, nothing from the database
        assert svc.windows.asked > asked  # the chain was asked again about the lot's window(s)
        assert renewed["records"] == first["records"]
        assert svc.checked(BAG, wait=False).result["status"] == VERIFIED  # current again

        event_id = an_event_of(world.engine, BAG)
        heard = svc.listener.heard
        original = edit_event(
            world.engine, event_id, tampered_field=7
        )  # a write heard: the next check is a full one and sees it
        wait_heard(svc, heard)
        times = svc.renewed
        assert svc.verification(BAG)["status"] == TAMPERED and svc.renewed == times
        heard = svc.listener.heard
        restore_event(world.engine, event_id, original)
        wait_heard(svc, heard)
        assert svc.verification(BAG)["status"] == VERIFIED
    finally:
        svc.close()


# ---- verifications shared by workers (api/services/shared_checks.py)

KEY = b"k" * 32


@pytest.fixture
def workers(world: PgWorld) -> Iterator[tuple[TraceService, TraceService]]:
    """Two API workers of one deployment: same database, same signing key, each its own caches."""
    pair = (TraceService(world.engine, world.settings, KEY), TraceService(world.engine, world.settings, KEY))
    for svc in pair:
        svc.open()
        assert svc.listener is not None and svc.listener.ready.wait(30), "not listening"
        assert svc.shared is not None
    with Session(world.engine) as s:
        s.execute(text("DELETE FROM trace_check"))
        s.commit()
    time.sleep(CLOCK_SLACK_S + 0.1)  # what a worker verifies now postdates its listening, by the clocks' slack
    yield pair
    for svc in pair:
        svc.close()


def _no_full_verification(svc: TraceService) -> None:
    def refuse(code: str, answers, memo):  # type: ignore[no-untyped-def]
        raise AssertionError(f"{code} verified again by the second worker")

    svc._compute_verification = refuse  # type: ignore[method-assign]


def test_a_lot_verified_by_one_worker_is_not_verified_again_by_another(
    workers: tuple[TraceService, TraceService], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second worker's first scan shows the first worker's result and trace view at once: no
    "checking", no verification and no view of its own."""
    import api.services.tracing as tracing

    a, b = workers
    a.view_json(BAG)  # a scan: the view is built, the verification queued
    first = a.verification(BAG)
    assert first["status"] == VERIFIED
    _no_full_verification(b)

    def no_view(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the second worker built the view again")

    monkeypatch.setattr(tracing, "build_view", no_view)
    scan = b.checked(BAG, wait=False)
    assert scan.result["status"] == VERIFIED and b.adopted == 1
    assert b.verification(BAG)["records"] == first["records"]
    body, freshness = b.view_json(BAG)
    assert freshness is not None and json.loads(body)["verification"]["status"] == VERIFIED
    theirs = json.loads(a.view_json(BAG)[0])
    assert {k: v for k, v in json.loads(body).items() if k != "verification"} == {
        k: v for k, v in theirs.items() if k != "verification"
    }


def test_a_shared_verification_older_than_a_change_is_not_taken(
    world: PgWorld, workers: tuple[TraceService, TraceService]
) -> None:
    """A write to the lot's lineage after the first worker's check: the second worker does not take the
    shared (now stale) result; it checks the lot itself and sees the tampering."""
    a, b = workers
    assert a.verification(BAG)["status"] == VERIFIED
    event_id = an_event_of(world.engine, BAG)
    heard = b.listener.heard  # type: ignore[union-attr]
    original = edit_event(world.engine, event_id, tampered_field=3)
    try:
        wait_heard(b, heard)
        assert b.checked(BAG, wait=False).result["status"] == CHECKING and b.adopted == 0
        assert b.verification(BAG)["status"] == TAMPERED
    finally:
        heard = b.listener.heard  # type: ignore[union-attr]
        restore_event(world.engine, event_id, original)
        wait_heard(b, heard)
    assert b.verification(BAG)["status"] == VERIFIED


def test_forged_shared_verification_is_refused(world: PgWorld, workers: tuple[TraceService, TraceService]) -> None:
    """Someone who can write the table (another service's role, hand-made SQL) plants a "verified"
    badge for a tampered lot, or re-signs a row with a key of their own: the MAC fails, the worker
    ignores the row and verifies the lot itself."""
    from api.services.shared_checks import SharedChecks

    a, b = workers
    assert a.verification(BAG)["status"] == VERIFIED
    event_id = an_event_of(world.engine, BAG)
    original = edit_event(
        world.engine, event_id, tampered_field=5
    )  # tampered in place, then the planted row is made after it
    time.sleep(2 * CLOCK_SLACK_S + 0.5)  # past the clocks' slack: a row begun now postdates the change
    try:
        with Session(world.engine) as s:  # the row as stored, moved to now and re-signed with another key
            row = s.execute(text("SELECT basis, asked, payload, records FROM trace_check WHERE code = :c"), {"c": BAG})
            _, _, payload, records = row.one()
        now = time.time()
        forged = SharedChecks(world.engine, b"attacker's own key".ljust(32, b"!"))
        import zlib

        import orjson

        forged.store(BAG, now, now, orjson.loads(zlib.decompress(payload)), records)
        assert b.checked(BAG, wait=False).result["status"] == CHECKING and b.adopted == 0
        assert b.shared is not None and b.shared.refused == 1
        assert b.verification(BAG)["status"] == TAMPERED
        with Session(world.engine) as s:  # a signed row with its badge edited: refused too
            s.execute(text("UPDATE trace_check SET asked = asked + 1 WHERE code = :c"), {"c": BAG})
            s.commit()
        c = TraceService(world.engine, world.settings, KEY)
        c.open()
        try:
            assert c.listener is not None and c.listener.ready.wait(30)
            c.checked(BAG, wait=False)
            assert c.adopted == 0 and c.shared is not None and c.shared.refused == 1
        finally:
            c.close()
    finally:
        restore_event(world.engine, event_id, original)


def test_lot_codes_learned_at_start_up_need_no_lookup(world: PgWorld) -> None:
    """A scan of a code or a Digital Link of a lot learned at start-up is resolved without a query."""
    from sqlalchemy import event as sa_event

    from ledger.models import Product

    svc = TraceService(world.engine, world.settings)
    with Session(world.engine) as s:
        lot = s.exec(select(Lot).where(Lot.code == BAG)).one()
        gtin = s.get(Product, lot.product_id).gtin  # type: ignore[union-attr]
        lots = len(s.exec(select(Lot.id)).all())
    assert svc.learn_codes() == lots
    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    sa_event.listen(world.engine, "before_cursor_execute", count)
    try:
        assert svc.code_for(BAG) == BAG
        assert svc.code_for_gtin_lot(gtin, lot.lot_no) == BAG  # type: ignore[arg-type]
    finally:
        sa_event.remove(world.engine, "before_cursor_execute", count)
    assert statements == []
    assert svc.code_for("ZZZZZZZZZZX") is None  # an unknown code is still looked up (and not found)
