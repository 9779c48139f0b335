"""EPCIS 2.0 documents in and out of the trace database: a lot's events survive the round trip."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, delete
from sqlmodel import Session, select
from typer.testing import CliRunner

from core.db import get_engine, migrate
from core.settings import get_settings
from ledger.epcis import EpcisError
from ledger.epcis_io import export_lot, import_document
from ledger.models import Lot, TraceEvent, TraceEventLot
from ledger.records import EVENT, record, records_of_lot
from ledger.trace_io import load_demo_trace

BAG = "M35CW3XRD6R"


def demo_engine(path: Path) -> Engine:
    url = f"sqlite:///{path}"
    migrate(url)
    engine = get_engine(url)
    with Session(engine) as session:
        load_demo_trace(session)
        session.commit()
    return engine


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[tuple[Engine, Engine]]:
    source, target = demo_engine(tmp_path / "a.db"), demo_engine(tmp_path / "b.db")
    with Session(target) as session:  # the other system knows the lots, not the events
        session.exec(delete(TraceEventLot))  # type: ignore[call-overload]
        session.exec(delete(TraceEvent))  # type: ignore[call-overload]
        session.commit()
    yield source, target
    source.dispose()
    target.dispose()


def contents(session: Session, code: str) -> dict[str, dict]:
    lot = session.exec(select(Lot).where(Lot.code == code)).one()
    out = {}
    for ref in records_of_lot(session, lot.id):  # type: ignore[arg-type]
        if ref.kind == EVENT:
            ev = session.get(TraceEvent, ref.id)
            out[ev.event_id] = record(session, EVENT, ref.id)["content"]  # type: ignore[union-attr]
    return out


def test_a_lots_events_round_trip_through_epcis(engines: tuple[Engine, Engine]) -> None:
    source, target = engines
    with Session(source) as session:
        doc = export_lot(session, session.exec(select(Lot).where(Lot.code == BAG)).one())
        expected = contents(session, BAG)
    assert doc["type"] == "EPCISDocument" and len(doc["epcisBody"]["eventList"]) == len(expected) > 10
    with Session(target) as session:
        result = import_document(session, json.dumps(doc))
        session.commit()
    assert len(result.created) == len(expected) and result.unchanged == 0
    with Session(target) as session:
        assert contents(session, BAG) == expected  # same events, same hashes, same hashed content
        again = import_document(session, doc)
    assert again.created == [] and again.unchanged == len(expected)


def test_unknown_lot_and_place_are_named_and_nothing_is_stored(engines: tuple[Engine, Engine]) -> None:
    source, target = engines
    with Session(source) as session:
        doc = export_lot(session, session.exec(select(Lot).where(Lot.code == BAG)).one())
    events = doc["epcisBody"]["eventList"]
    first = next(i for i, e in enumerate(events) if "quantityList" in e)
    events[first]["quantityList"][0]["epcClass"] = "https://w3id.org/village-trace/t/0000000000" + "0"
    events[first]["readPoint"]["id"] = "https://w3id.org/village-trace/plot/NOPE"
    events[first].pop("eventID")  # recomputed on import
    with Session(target) as session:
        with pytest.raises(EpcisError) as e:
            import_document(session, doc)
        paths = [p for p, _ in e.value.errors]
        assert f"/epcisBody/eventList/{first}/quantityList/0" in paths
        assert f"/epcisBody/eventList/{first}/readPoint/id" in paths
        assert session.exec(select(TraceEvent)).first() is None


def test_cli_export_and_import(engines: tuple[Engine, Engine], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cli.main import app

    source, target = engines
    runner = CliRunner()
    out = tmp_path / "events.jsonld"
    monkeypatch.setenv("DATABASE_URL", str(source.url))
    get_settings.cache_clear()
    res = runner.invoke(app, ["lots", "export-epcis", "M35C-W3XR-D6R", "-o", str(out)])
    assert res.exit_code == 0, res.output
    monkeypatch.setenv("DATABASE_URL", str(target.url))
    get_settings.cache_clear()
    res = runner.invoke(app, ["lots", "import-epcis", str(out)])
    assert res.exit_code == 0 and "events imported" in res.output, res.output
    out.write_text("{not json")
    res = runner.invoke(app, ["lots", "import-epcis", str(out)])
    assert res.exit_code == 1 and "nothing was imported" in res.output
    get_settings.cache_clear()
