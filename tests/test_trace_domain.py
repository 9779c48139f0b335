"""Trace domain: vocabulary, canonical records, YAML import (demo season, precise errors), migration, CLI."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine
from sqlmodel import Session, SQLModel, func, select
from typer.testing import CliRunner

from core.db import alembic_config, make_engine
from core.models import Farm, Plot
from core.registry_io import DEMO_FILE, ImportErrors, RowError, load_demo
from ledger import records, vocab
from ledger.codes import canonical_lot_uri, normalize_code
from ledger.models import (
    Facility,
    Inspection,
    InspectionItem,
    Lot,
    LotParent,
    LotSource,
    Product,
    TraceEvent,
    TraceEventLot,
)
from ledger.records import (
    RecordNotFound,
    RecordRef,
    canonical_bytes,
    record,
    records_many,
    records_of_lot,
    register_kind,
)
from ledger.trace_io import (
    DEMO_TRACE_FILE,
    fill_event_ids,
    find_lot,
    import_trace,
    import_trace_data,
    load_demo_trace,
)
from ledger.vocab import AttributeErrors, UnknownTerm, normalize_disposition, normalize_step, validate_attributes

TRACE_TABLES = {
    "product",
    "facility",
    "lot",
    "lot_source",
    "lot_parent",
    "trace_event",
    "trace_event_lot",
    "inspection",
    "inspection_item",
}
DEMO_COUNTS = {"products": 3, "facilities": 2, "lots": 12, "events": 42, "inspections": 5}
BAG = "M35C-W3XR-D6R"  # rice-5kg:2026-M01-A, from milled lot M01 <- dried D01 <- three paddy plot lots
FAILED = "3RAR-5JGY-ZHF"  # the paddy of plot 211122104206-001 that fails its residue test
CBV = "https://ref.gs1.org/cbv/"
NS = "https://w3id.org/village-trace/voc/"


def _url(path: Path) -> str:
    return f"sqlite:///{path}"


def _copy_db(src: Path, dst: Path) -> Engine:
    shutil.copy(src, dst)
    return make_engine(_url(dst))


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Migrated databases built once: the demo registry, and the registry with the demo season."""
    folder = tmp_path_factory.mktemp("templates")
    registry = folder / "registry.db"
    command.upgrade(alembic_config(_url(registry)), "heads")  # all tables: other kinds' collectors query theirs
    engine = make_engine(_url(registry))
    with Session(engine) as session:
        load_demo(session)
        session.commit()
    engine.dispose()
    demo = folder / "demo.db"
    engine = _copy_db(registry, demo)
    with Session(engine) as session:
        load_demo_trace(session)
        session.commit()
    engine.dispose()
    return {"registry": registry, "demo": demo}


@pytest.fixture
def registry_db(templates: dict[str, Path], tmp_path: Path) -> Iterator[Engine]:
    engine = _copy_db(templates["registry"], tmp_path / "registry.db")
    yield engine
    engine.dispose()


@pytest.fixture
def demo_db(templates: dict[str, Path], tmp_path: Path) -> Iterator[Engine]:
    engine = _copy_db(templates["demo"], tmp_path / "demo.db")
    yield engine
    engine.dispose()


def _counts(engine: Engine) -> dict[str, int]:
    tables = {"products": Product, "facilities": Facility, "lots": Lot, "events": TraceEvent, "inspections": Inspection}
    with Session(engine) as session:
        return {k: session.exec(select(func.count()).select_from(t)).one() for k, t in tables.items()}


def _all_record_bytes(session: Session) -> dict[RecordRef, bytes]:
    out = {}
    for lot_id in session.exec(select(Lot.id)).all():
        for ref in records_of_lot(session, lot_id):
            out[ref] = canonical_bytes(record(session, ref.kind, ref.id))
    return out


# ---------------------------------------------------------------- vocabulary


@pytest.mark.parametrize(
    "spelling",
    [
        "commissioning",
        " Commissioning ",
        "cbv:BizStep-commissioning",
        "urn:epcglobal:cbv:bizstep:commissioning",
        f"{CBV}BizStep-commissioning",
        "BizStep-commissioning",
    ],
)
def test_cbv_step_spellings_give_one_uri(spelling: str) -> None:
    assert normalize_step(spelling) == f"{CBV}BizStep-commissioning"


@pytest.mark.parametrize("spelling", ["spraying", "SPRAYING", "vt:BizStep-spraying", f"{NS}BizStep-spraying"])
def test_project_step_spellings_give_one_uri(spelling: str) -> None:
    assert normalize_step(spelling) == f"{NS}BizStep-spraying"


def test_step_errors_are_precise() -> None:
    with pytest.raises(UnknownTerm, match="did you mean spraying"):
        normalize_step("spraing")
    with pytest.raises(UnknownTerm, match=f"project step, its URI is {re.escape(NS)}BizStep-sowing"):
        normalize_step(f"{CBV}BizStep-sowing")
    with pytest.raises(UnknownTerm, match="not a URI of this vocabulary"):
        normalize_step("https://example.org/steps/sowing")
    with pytest.raises(UnknownTerm, match="non-empty"):
        normalize_step("  ")


def test_dispositions() -> None:
    for spelling in ("non_conformant", "cbv:Disp-non_conformant", "urn:epcglobal:cbv:disp:non_conformant"):
        assert normalize_disposition(spelling) == f"{CBV}Disp-non_conformant"
    with pytest.raises(UnknownTerm, match="did you mean conformant"):
        normalize_disposition("conformnt")


def test_vocabulary_data_is_consistent() -> None:
    v = vocab.get_vocab()
    uris = [s.uri for s in v.steps.values()]
    assert len(uris) == len(set(uris))
    assert len([s for s in v.steps.values() if s.namespace == "cbv"]) == 41  # every CBV 2.0 business step
    farm_steps = {"sowing", "transplanting", "fertilising", "spraying", "irrigating", "harvesting", "drying", "milling"}
    assert {s.name for s in v.steps.values() if s.namespace == "project"} == farm_steps
    assert all(v.steps[n].uri == f"{v.namespace}BizStep-{n}" for n in farm_steps)
    assert v.prefix == "vt" and v.namespace == NS
    assert v.unit("kg").uom == "KGM" and v.unit("bag").uom is None


def test_validate_attributes_stores_one_form() -> None:
    out = validate_attributes(
        "spraying", {"target": " rice blast ", "dose": 20.00000004, "dose_unit": "g/mu", "product": "X"}
    )
    assert out == {"dose": 20.0, "dose_unit": "g/mu", "product": "X", "target": "rice blast"}
    assert list(out) == sorted(out)
    assert validate_attributes("irrigating", {"water_mm": 12.34}) == {"water_mm": 12.3}  # decimals: 1
    assert validate_attributes("harvesting", {"moisture_pct": None}) == {}  # null is absent
    assert validate_attributes("fertilising", {"product": "urea", "organic": False})["organic"] is False


def test_validate_attributes_lists_every_problem() -> None:
    with pytest.raises(AttributeErrors) as e:
        validate_attributes(
            "spraying",
            {"dose": "lots", "dose_unit": "buckets", "colour": "red", "preharvest_interval_days": 2.5},
        )
    problems = dict(e.value.errors)
    assert problems["product"] == "is required"
    assert "must be a number (got 'lots')" in problems["dose"]
    assert "must be one of g/mu, mL/mu, kg/ha, L/ha (got 'buckets')" in problems["dose_unit"]
    assert "unknown attribute for step spraying" in problems["colour"]
    assert "must be an integer" in problems["preharvest_interval_days"]
    assert str(e.value).startswith("spraying: attribute ")
    with pytest.raises(AttributeErrors, match="must be at most 100"):
        validate_attributes("drying", {"final_moisture_pct": 140})
    with pytest.raises(AttributeErrors, match="must be a number"):
        validate_attributes("irrigating", {"water_mm": True})  # a bool is not a number
    with pytest.raises(AttributeErrors, match="its attributes: none"):
        validate_attributes("receiving", {"anything": 1})
    with pytest.raises(UnknownTerm):
        validate_attributes("growing", {})


# ---------------------------------------------------------------- demo import


def test_demo_import_is_idempotent(demo_db: Engine) -> None:
    assert _counts(demo_db) == DEMO_COUNTS
    with Session(demo_db) as session:
        before = _all_record_bytes(session)
        salts = sorted(session.exec(select(Lot.salt)).all())
        result = load_demo_trace(session)
        session.commit()
    assert not result.changed
    assert dict(result.unchanged) == DEMO_COUNTS
    assert _counts(demo_db) == DEMO_COUNTS
    with Session(demo_db) as session:
        assert sorted(session.exec(select(Lot.salt)).all()) == salts
        assert _all_record_bytes(session) == before


def test_demo_data_set_shape(demo_db: Engine) -> None:
    county_plots = {p["plot_no"] for p in yaml.safe_load(DEMO_FILE.read_text(encoding="utf-8"))["plots"]}
    doc = yaml.safe_load(DEMO_TRACE_FILE.read_text(encoding="utf-8"))
    used = {s["plot_no"] for lot in doc["lots"] for s in lot.get("sources", [])}
    assert used and used <= county_plots
    with Session(demo_db) as session:
        bag = find_lot(session, BAG)
        assert bag.product is not None and bag.product.gtin == "06947512300010"
        assert canonical_lot_uri(bag) == "https://id.gs1.org/01/06947512300010/10/2026-M01-A"
        passed = dict(session.exec(select(Inspection.report_no, Inspection.passed)).all())
        assert passed.pop("PJQ-2026-1006-05") is False  # the demo shows a fail
        assert all(passed.values())
        failed = find_lot(session, FAILED)
        assert session.exec(select(LotParent).where(LotParent.parent_lot_id == failed.id)).first() is None
        events = session.exec(select(TraceEvent)).all()
        assert {e.event_time_zone_offset for e in events} == {"+08:00"}
        steps = {vocab.get_vocab().short_name(e.biz_step) for e in events}
        assert {"sowing", "transplanting", "harvesting", "drying", "milling", "packing", "shipping"} <= steps
        # certificate hashes are the SHA-256 of the certificate texts in the file
        texts = {i["report_no"]: i["certificate_text"] for i in doc["inspections"]}
        for report_no, digest in session.exec(select(Inspection.report_no, Inspection.certificate_sha256)):
            assert digest == hashlib.sha256(texts[report_no].encode()).hexdigest()


def test_events_carry_their_epcis_event_hash(demo_db: Engine) -> None:
    from ledger.epcis import event_hash

    with Session(demo_db) as session:
        events = session.exec(select(TraceEvent).order_by(TraceEvent.id)).all()
        ids = [e.event_id for e in events]
        assert all(re.fullmatch(r"ni:///sha-256;[0-9a-f]{64}\?ver=CBV2\.0", i or "") for i in ids), ids[:3]
        assert len(set(ids)) == len(ids)
        first = events[0]
        assert first.event_id == event_hash(records.epcis_event(session, first.id))  # type: ignore[arg-type]
        # a second row for the same EPCIS event is reported, not given the same id
        twin = TraceEvent(**first.model_dump(exclude={"id", "event_id", "salt", "recorded_at"}))
        session.add(twin)
        session.flush()
        assert fill_event_ids(session, [twin.id]) == {twin.id: first.id}  # type: ignore[list-item,dict-item]
        assert twin.event_id is None
        session.rollback()


def test_find_lot_by_code_uri_and_reference(demo_db: Engine) -> None:
    with Session(demo_db) as session:
        bag = find_lot(session, BAG)
        assert find_lot(session, BAG.lower().replace("-", "")) is bag
        assert find_lot(session, "https://x.example/01/06947512300010/10/2026-M01-A") is bag
        assert find_lot(session, "https://x.example/01/6947512300010/10/2026-M01-A") is bag
        assert find_lot(session, "rice-5kg:2026-M01-A") is bag
        assert find_lot(session, f"https://x.example/t/{FAILED}").lot_no == "2026-104206-001"
        with pytest.raises(LookupError, match="no lot"):
            find_lot(session, "rice-5kg:2026-M09-Z")
        with pytest.raises(ValueError, match="Expected 0, got 3"):
            find_lot(session, "https://x.example/01/06947512300013/10/2026-M01-A")


# ---------------------------------------------------------------- records


def test_records_of_a_bag_include_its_ancestors(demo_db: Engine) -> None:
    with Session(demo_db) as session:
        bag = find_lot(session, BAG)
        refs = records_of_lot(session, bag.id)  # type: ignore[arg-type]
        lots = [session.get(Lot, r.id).lot_no for r in refs if r.kind == "lot/1"]  # type: ignore[union-attr]
        assert lots[0] == "2026-M01-A"
        assert sorted(lots[1:]) == ["2026-101201-001", "2026-101201-002", "2026-101203-001", "2026-D01", "2026-M01"]
        events = [session.get(TraceEvent, r.id) for r in refs if r.kind == "event/1"]
        steps = [vocab.get_vocab().short_name(e.biz_step) for e in events]  # type: ignore[union-attr]
        assert steps[0] == "sowing" and "spraying" in steps and "harvesting" in steps  # the paddy's field events
        assert steps.count("sowing") == 3 and steps[-1] == "shipping"
        assert "storing" not in steps  # that is the sibling bag lot's event
        times = [e.event_time for e in events]  # type: ignore[union-attr]
        assert times == sorted(times)
        reports = [session.get(Inspection, r.id).report_no for r in refs if r.kind == "inspection/1"]  # type: ignore[union-attr]
        assert reports == ["PJQ-2026-1010-01", "PJQ-2026-1021-03"]  # not the failed paddy's report
        failed = find_lot(session, FAILED)
        failed_refs = records_of_lot(session, failed.id)  # type: ignore[arg-type]
        inspection = record(session, "inspection/1", next(r.id for r in failed_refs if r.kind == "inspection/1"))
        assert inspection["content"]["passed"] is False
        assert [i["passed"] for i in inspection["content"]["items"]] == [True, True, False]  # sorted by item


def test_record_shape_and_fixed_forms(demo_db: Engine) -> None:
    with Session(demo_db) as session:
        bag = find_lot(session, BAG)
        rec = record(session, "lot/1", bag.id)  # type: ignore[arg-type]
        assert set(rec) == {"schema", "content", "salt"} and rec["schema"] == "lot/1"
        assert re.fullmatch(r"[0-9a-f]{32}", rec["salt"])
        content = rec["content"]
        assert content["product"]["uri"] == "https://id.gs1.org/01/06947512300010"
        assert content["parents"][0]["lot"].startswith("https://w3id.org/village-trace/t/")
        spraying = session.exec(
            select(TraceEvent).where(TraceEvent.biz_step == f"{NS}BizStep-spraying").order_by(TraceEvent.id)
        ).first()
        ev = record(session, "event/1", spraying.id)["content"]  # type: ignore[union-attr]
        assert ev["event_time"] == "2026-07-28T06:30:00+08:00"
        assert ev["biz_step"] == f"{NS}BizStep-spraying"
        assert ev["read_point"] == {"plot": "211122101201-001", "village": "211122101201"}
        assert ev["actor"] == {"farm": "PS-F001"}
        assert ev["attributes"]["dose"] == 20
        raw = canonical_bytes(record(session, "event/1", spraying.id))  # type: ignore[union-attr]
        assert b'"dose":20,' in raw  # JCS numbers: 20.0 is written 20
        assert raw == canonical_bytes(json.loads(raw))  # canonical: parsing and re-serializing changes nothing


def test_canonical_bytes_stable_across_reloads(templates: dict[str, Path], tmp_path: Path) -> None:
    engine = _copy_db(templates["demo"], tmp_path / "a.db")
    with Session(engine) as session:
        first = _all_record_bytes(session)
    engine.dispose()
    engine = make_engine(_url(tmp_path / "a.db"))
    with Session(engine) as session:
        again = _all_record_bytes(session)
    engine.dispose()
    assert len(first) == 12 + 42 + 5
    assert again == first
    salts = [json.loads(b)["salt"] for b in first.values()]
    assert len(set(salts)) == len(salts)  # every record has its own salt


SALTS = ["11" * 16, "22" * 16, "33" * 16]
CODE = "JFPD18RSDBW"
PLOT = "211122101201-001"


def _facts(variant: int) -> dict[str, list[dict[str, Any]]]:
    """The same facts, spelled two different ways."""
    if variant == 0:
        return {
            "products": [{"code": "p", "name_zh": "稻谷", "unit": "kg"}],
            "lots": [
                {
                    "product": "p",
                    "lot_no": "L1",
                    "code": CODE,
                    "farm": "PS-F001",
                    "quantity": 100,
                    "salt": SALTS[0],
                    "sources": [{"plot_no": PLOT, "area_mu": 152}],
                }
            ],
            "events": [
                {
                    "action": "OBSERVE",
                    "step": "spraying",
                    "disposition": "active",
                    "time": "2026-07-28T06:30:00+08:00",
                    "lot": "p:L1",
                    "read_point": {"plot_no": PLOT},
                    "attributes": {"product": "X", "dose": 20, "dose_unit": "g/mu"},
                    "salt": SALTS[1],
                }
            ],
            "inspections": [
                {
                    "lot": "p:L1",
                    "lab": "lab",
                    "report_no": "R1",
                    "sampled_on": "2026-10-06",
                    "certificate_text": "certificate",
                    "items": [{"item": "cadmium", "value": 0.1, "unit": "mg/kg", "limit": 0.2, "method": "GB"}],
                    "salt": SALTS[2],
                }
            ],
        }
    return {
        "products": [{"code": " p ", "name_zh": "稻谷", "name_en": "", "unit": "kg"}],
        "lots": [
            {
                "lot_no": "L1",
                "product": "p",
                "code": "jfpd-18rs-dbw",
                "farm": " PS-F001",
                "unit": "kg",
                "quantity": 100.0000001,
                "salt": SALTS[0],
                "sources": [{"area_mu": 152.0, "plot_no": PLOT}],
            }
        ],
        "events": [
            {
                "type": "ObjectEvent",
                "action": "OBSERVE",
                "step": f"{NS}BizStep-spraying",
                "disposition": "urn:epcglobal:cbv:disp:active",
                "time": datetime.fromisoformat("2026-07-28T06:30:00.000400+08:00"),  # sub-millisecond noise
                "lot": "JFPD-18RS-DBW",
                "read_point": {"plot_no": PLOT},
                "actor": {"farm": "PS-F001"},
                "attributes": {"dose_unit": "g/mu", "dose": 20.0000001, "product": " X"},
                "salt": SALTS[1],
            }
        ],
        "inspections": [
            {
                "lot": CODE,
                "lab": "lab",
                "report_no": "R1",
                "sampled_on": date(2026, 10, 6),
                "certificate_sha256": hashlib.sha256(b"certificate").hexdigest().upper(),
                "items": [{"item": "cadmium", "value": 0.1000000001, "unit": "mg/kg", "limit": 0.2, "method": "GB"}],
                "salt": SALTS[2],
            }
        ],
    }


def test_equivalent_inputs_give_the_same_bytes(templates: dict[str, Path], tmp_path: Path) -> None:
    out = []
    for variant in (0, 1):
        engine = _copy_db(templates["registry"], tmp_path / f"v{variant}.db")
        with Session(engine) as session:
            import_trace_data(session, _facts(variant))
            session.commit()
            lot = find_lot(session, CODE)
            out.append([canonical_bytes(record(session, r.kind, r.id)) for r in records_of_lot(session, lot.id)])  # type: ignore[arg-type]
        engine.dispose()
    assert len(out[0]) == 3
    assert out[0] == out[1]


Mutation = Callable[[Session, dict[str, Any]], None]


def _first(session: Session, query: Any) -> Any:
    return session.exec(query).first()


MUTATIONS: dict[str, tuple[str, Mutation]] = {
    "lot quantity": ("lot", lambda s, x: setattr(x["bag"], "quantity", 2001.0)),
    "lot number": ("lot", lambda s, x: setattr(x["bag"], "lot_no", "2026-M01-Z")),
    "lot code": ("lot", lambda s, x: setattr(x["bag"], "code", normalize_code("0000-0000-000"))),
    "harvest year": ("lot", lambda s, x: setattr(x["bag"], "harvest_year", 2027)),
    "lot salt": ("lot", lambda s, x: setattr(x["bag"], "salt", "0" * 32)),
    "product name": ("lot", lambda s, x: setattr(x["bag"].product, "name_zh", "大米")),
    "parent quantity": ("lot", lambda s, x: setattr(x["parent"], "quantity", 9999.0)),
    "source area": ("paddy", lambda s, x: setattr(x["source"], "area_mu", 151.0)),
    "plot number": ("paddy", lambda s, x: setattr(s.get(Plot, x["source"].plot_id), "plot_no", "211122101201-099")),
    "farm": ("paddy", lambda s, x: setattr(x["paddy"], "farm_id", x["paddy"].farm_id + 1)),
    "attribute value": (
        "event",
        lambda s, x: setattr(x["event"], "attributes", {**x["event"].attributes, "dose": 21.0}),
    ),
    "event time": (
        "event",
        lambda s, x: setattr(x["event"], "event_time", x["event"].event_time + timedelta(seconds=1)),
    ),
    "time zone offset": ("event", lambda s, x: setattr(x["event"], "event_time_zone_offset", "+09:00")),
    "business step": ("event", lambda s, x: setattr(x["event"], "biz_step", f"{NS}BizStep-fertilising")),
    "disposition": ("event", lambda s, x: setattr(x["event"], "disposition", f"{CBV}Disp-active")),
    "actor": ("event", lambda s, x: setattr(x["event"], "actor_farm_id", x["event"].actor_farm_id + 1)),
    "event salt": ("event", lambda s, x: setattr(x["event"], "salt", "f" * 32)),
    "transformation input": ("drying", lambda s, x: s.delete(x["input"])),
    "certificate": ("inspection", lambda s, x: setattr(x["inspection"], "certificate_sha256", "0" * 64)),
    "verdict": ("inspection", lambda s, x: setattr(x["inspection"], "passed", False)),
    "item value": ("inspection", lambda s, x: setattr(x["item"], "value", x["item"].value + 0.001)),
    "item limit": ("inspection", lambda s, x: setattr(x["item"], "limit_value", 0.3)),
    "item method": ("inspection", lambda s, x: setattr(x["item"], "method", "GB 2762-2017")),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_changing_any_field_changes_the_bytes(demo_db: Engine, name: str) -> None:
    target, mutate = MUTATIONS[name]
    with Session(demo_db) as session:
        bag = find_lot(session, BAG)
        paddy = find_lot(session, "paddy-yf47:2026-101201-001")
        milled = find_lot(session, "rice-bulk:2026-M01")
        event = _first(session, select(TraceEvent).where(TraceEvent.biz_step == f"{NS}BizStep-spraying"))
        drying = _first(session, select(TraceEvent).where(TraceEvent.biz_step == f"{NS}BizStep-drying"))
        inspection = _first(session, select(Inspection).where(Inspection.lot_id == milled.id))
        things = {
            "bag": bag,
            "paddy": paddy,
            "parent": _first(session, select(LotParent).where(LotParent.child_lot_id == bag.id)),
            "source": _first(session, select(LotSource).where(LotSource.lot_id == paddy.id)),
            "event": event,
            "input": _first(session, select(TraceEventLot).where(TraceEventLot.trace_event_id == drying.id)),
            "inspection": inspection,
            "item": _first(session, select(InspectionItem).where(InspectionItem.inspection_id == inspection.id)),
        }
        refs = {
            "lot": RecordRef("lot/1", bag.id),  # type: ignore[arg-type]
            "paddy": RecordRef("lot/1", paddy.id),  # type: ignore[arg-type]
            "event": RecordRef("event/1", event.id),
            "drying": RecordRef("event/1", drying.id),
            "inspection": RecordRef("inspection/1", inspection.id),
        }
        ref = refs[target]
        before = canonical_bytes(record(session, ref.kind, ref.id))
        mutate(session, things)
        session.flush()
        after = canonical_bytes(record(session, ref.kind, ref.id))
        session.rollback()
        assert after != before
        assert canonical_bytes(record(session, ref.kind, ref.id)) == before


def test_no_personal_data_in_any_record(demo_db: Engine) -> None:
    with Session(demo_db) as session:
        farms = session.exec(select(Farm)).all()
        personal = [v for f in farms for v in (f.contact_name, f.contact_phone) if v]
        names = [f.name for f in farms]
        coordinates = [str(c) for p in session.exec(select(Plot)) for c in (p.lat, p.lon) if c is not None]
        assert len(personal) == 12 and coordinates
        blobs = _all_record_bytes(session)
        events = [records.epcis_event(session, r.id) for r in blobs if r.kind == "event/1"]
    text = b"\n".join(blobs.values()).decode("utf-8") + json.dumps(events, ensure_ascii=False)
    for value in personal + names + coordinates:
        assert value not in text
    assert "contact" not in text and "phone" not in text


def test_record_kinds_are_extensible(demo_db: Engine) -> None:
    def growth(session: Session, id: int) -> tuple[dict[str, Any], str]:
        return {"plot": f"plot-{id}", "mean_water_level_cm": 4.5}, "ab" * 16

    def collect(session: Session, lot_ids: list[int]) -> list[RecordRef]:
        return [RecordRef("extra/1", i) for i in lot_ids]

    register_kind("extra/1", growth, collect)
    try:
        assert record(Session(demo_db), "extra/1", 7) == {
            "schema": "extra/1",
            "content": {"plot": "plot-7", "mean_water_level_cm": 4.5},
            "salt": "ab" * 16,
        }
        with Session(demo_db) as session:
            bag = find_lot(session, BAG)
            refs = records_of_lot(session, bag.id)  # type: ignore[arg-type]
        assert [r for r in refs if r.kind == "extra/1"] == [RecordRef("extra/1", i) for i in refs_lots(refs)]
    finally:
        records._LOADERS.pop("extra/1", None)
        records._COLLECTORS.pop("extra/1", None)
    with pytest.raises(ValueError, match="name/version"):
        register_kind("extra", growth)
    with pytest.raises(records.UnknownKind, match="extra/1"):
        record(Session(demo_db), "extra/1", 7)
    with pytest.raises(records.RecordNotFound):
        record(Session(demo_db), "lot/1", 10_000)


def refs_lots(refs: list[RecordRef]) -> list[int]:
    return [r.id for r in refs if r.kind == "lot/1"]


def test_epcis_view_of_events(demo_db: Engine) -> None:
    with Session(demo_db) as session:
        packing = _first(session, select(TraceEvent).where(TraceEvent.biz_step == f"{CBV}BizStep-packing"))
        ev = records.epcis_event(session, packing.id)
        assert ev["type"] == "TransformationEvent" and "action" not in ev
        assert ev["eventTime"] == "2026-10-22T14:00:00+08:00" and ev["eventTimeZoneOffset"] == "+08:00"
        assert ev["inputQuantityList"] == [
            {"epcClass": canonical_lot_uri(find_lot(session, "rice-bulk:2026-M01")), "quantity": 20000.0, "uom": "KGM"}
        ]
        assert [q["epcClass"] for q in ev["outputQuantityList"]] == [
            "https://id.gs1.org/01/06947512300010/10/2026-M01-A",
            "https://id.gs1.org/01/06947512300010/10/2026-M01-B",
        ]
        assert all("uom" not in q for q in ev["outputQuantityList"])  # bags are counted
        assert ev["vt:packages"] == 4000 and ev["vt:actor"].endswith("/facility/PS-MILL-01")
        spraying = _first(session, select(TraceEvent).where(TraceEvent.biz_step == f"{NS}BizStep-spraying"))
        ev = records.epcis_event(session, spraying.id)
        assert ev["action"] == "OBSERVE" and ev["readPoint"] == {
            "id": "https://w3id.org/village-trace/plot/211122101201-001"
        }
        assert ev["bizLocation"] == {"id": "https://w3id.org/village-trace/village/211122101201"}


# ---------------------------------------------------------------- import errors


BAD = """\
products:
  - {code: paddy, name_zh: 稻谷, unit: kg}
  - {code: bag, gtin: "06947512300017", name_zh: 大米, unit: bag}
lots:
  - {product: paddy, lot_no: P1, farm: PS-F001, harvest_year: 2026, sources: [{plot_no: "211122101201-001"}]}
  - product: paddy
    lot_no: P2
    farm: PS-F001
    code: JFPD-18RS-DBX
  - product: paddy
    lot_no: P3
    farm: PS-F001
    sources:
      - {plot_no: "999999999999-001"}
  - {product: bag, lot_no: B1, quantity: 10}
events:
  - {action: ADD, step: sowng, time: 2026-04-14T07:30:00+08:00, lot: "paddy:P1",
     read_point: {plot_no: "211122101201-001"}}
  - action: OBSERVE
    step: spraying
    time: 2026-07-28T06:30:00+08:00
    lot: "paddy:P1"
    read_point: {plot_no: "211122101201-001"}
    attributes:
      product: x
      dose: lots
      dose_unit: g/mu
  - {action: OBSERVE, step: irrigating, time: "2026-07-15 06:00:00", lot: "paddy:P1",
     read_point: {plot_no: "211122101201-001"}, attributes: {water_mm: 5}}
  - {type: TransformationEvent, action: OBSERVE, step: drying, time: 2026-10-08T09:00:00+08:00,
     inputs: ["paddy:P1"], outputs: ["paddy:NOPE"],
     read_point: {facility: NOPE}, attributes: {final_moisture_pct: 14}}
  - {action: OBSERVE, step: irrigating, time: 2026-07-15T06:00:00+08:00, lot: "paddy:P1",
     read_point: {facility: PS-DRY-01}}
  - {action: OBSERVE, step: irrigating, time: 2026-07-16T06:00:00+08:00, lot: "bag:B1",
     read_point: {plot_no: "211122101201-001"}, attributes: {water_mm: 5}}
inspections:
  - lot: "paddy:P1"
    lab: L
    report_no: R1
    sampled_on: 2026-10-06
    reported_on: 2026-10-01
    certificate_sha256: "0000000000000000000000000000000000000000000000000000000000000000"
    certificate_text: x
    items:
      - {item: cadmium, value: 0.1, unit: mg/kg, limit: 0.2, method: GB 2762-2022}
      - {item: cadmium, value: 0.1, unit: mg/kg, limit: 0.2, method: GB 2762-2022}
"""


def _line(text: str, marker: str, nth: int = 0) -> int:
    lines = [i + 1 for i, line in enumerate(text.splitlines()) if marker in line]
    return lines[nth]


def _find(errors: list[RowError], entity: str, index: int, field: str | None) -> RowError:
    found = [e for e in errors if (e.entity, e.index, e.field) == (entity, index, field)]
    assert found, f"no error for {entity}[{index}] {field}: {[str(e) for e in errors]}"
    return found[0]


def test_import_errors_are_precise_and_nothing_is_imported(registry_db: Engine, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD, encoding="utf-8")
    with Session(registry_db) as session, pytest.raises(ImportErrors) as e:
        import_trace(session, path)
    errors = e.value.errors
    assert all(err.source == str(path) for err in errors)
    expected = [
        (
            "products",
            1,
            "gtin",
            _line(BAD, "06947512300017"),
            "Invalid GTIN check digit for '06947512300017': Expected 0, got 7",
        ),
        ("lots", 1, "code", _line(BAD, "JFPD-18RS-DBX"), "wrong check character in 'JFPD-18RS-DBX': expected 'W'"),
        ("lots", 2, "sources[0].plot_no", _line(BAD, "999999999999-001"), "plot '999999999999-001' does not exist"),
        ("events", 0, "step", _line(BAD, "sowng"), "unknown business step 'sowng'; did you mean sowing"),
        ("events", 1, "attributes.dose", _line(BAD, "dose: lots"), "must be a number (got 'lots')"),
        ("events", 2, "time", _line(BAD, "2026-07-15 06:00:00"), "timezone"),
        ("events", 3, "action", _line(BAD, "type: TransformationEvent"), "a TransformationEvent has no action"),
        ("events", 3, "outputs[0]", _line(BAD, "paddy:NOPE"), "lot 'paddy:NOPE' does not exist"),
        ("events", 3, "read_point.facility", _line(BAD, "{facility: NOPE}"), "facility 'NOPE' does not exist"),
        ("events", 4, "read_point", _line(BAD, "read_point: {facility: PS-DRY-01}"), "irrigating happens at a plot"),
        ("events", 4, "attributes.water_mm", _line(BAD, "2026-07-15T06:00:00"), "is required"),
        ("inspections", 0, "certificate_text", _line(BAD, "certificate_text"), "not both"),
        ("inspections", 0, "reported_on", _line(BAD, "reported_on"), "cannot precede the sampling"),
        ("inspections", 0, "items[1].item", _line(BAD, "item: cadmium", 1), "duplicate item 'cadmium'"),
    ]
    for entity, index, fld, line, message in expected:
        error = _find(errors, entity, index, fld)
        assert message in error.message, str(error)
        assert error.line == line, str(error)
    # the bag product failed (bad GTIN): its lot and the event on it are not reported again
    assert not [err for err in errors if err.entity == "lots" and err.index == 3]
    assert not [err for err in errors if err.entity == "events" and err.index == 5]
    assert str(errors[0]).startswith(f"{path}:{_line(BAD, '06947512300017')}: products[1] field 'gtin': ")
    assert _counts(registry_db) == dict.fromkeys(DEMO_COUNTS, 0)


def test_recorded_facts_are_never_rewritten(demo_db: Engine, tmp_path: Path) -> None:
    text = DEMO_TRACE_FILE.read_text(encoding="utf-8")
    changed = text.replace("quantity: 97280, farm: PS-F001", "quantity: 97281, farm: PS-F001")
    changed = changed.replace("{item: cadmium, value: 0.06,", "{item: cadmium, value: 0.09,")  # lot D02
    assert changed.count("97281") == 1
    path = tmp_path / "changed.yaml"
    path.write_text(changed, encoding="utf-8")
    with Session(demo_db) as session:
        before = _all_record_bytes(session)
        with pytest.raises(ImportErrors) as e:
            import_trace(session, path)
        messages = [str(err) for err in e.value.errors]
        assert len(messages) == 2, messages
        assert (
            "lots[0] field 'quantity': lot paddy-yf47:2026-101201-001 is already recorded with quantity 97280.0"
            in messages[0]
        )
        assert "never rewritten" in messages[0]
        assert "inspections[2] field 'items'" in messages[1]  # D02 is not made from the changed lot
        assert _all_record_bytes(session) == before


def test_events_are_deduplicated_and_new_ones_added(demo_db: Engine) -> None:
    new_event = {
        "action": "OBSERVE",
        "step": "sensor_reporting",
        "time": "2026-10-27T08:00:00+08:00",
        "lot": BAG,
        "read_point": {"facility": "PS-MILL-01"},
        "attributes": {"metric": "air_temp_c", "value": 11.5},
    }
    with Session(demo_db) as session:
        result = import_trace_data(session, {"events": [new_event]})
        session.commit()
        assert result.created["events"] == 1
        again = import_trace_data(session, {"events": [dict(new_event, time="2026-10-27T00:00:00Z")]})
        assert again.created["events"] == 1  # another offset is another fact (it says where the clock was)
        session.rollback()
        same = import_trace_data(session, {"events": [new_event]})
        assert same.created["events"] == 0 and same.unchanged["events"] == 1
        with pytest.raises(ImportErrors, match=r"events\[1\]: the same event as events\[0\]"):
            import_trace_data(session, {"events": [dict(new_event, time="2026-10-28T08:00:00+08:00")] * 2})


def test_lot_parent_cycles_are_refused(registry_db: Engine) -> None:
    data = {
        "products": [{"code": "p", "name_zh": "稻谷"}],
        "lots": [
            {"product": "p", "lot_no": "A", "farm": "PS-F001", "parents": [{"lot": "p:B", "relation": "merge"}]},
            {"product": "p", "lot_no": "B", "farm": "PS-F001", "parents": [{"lot": "p:A", "relation": "split"}]},
            {"product": "p", "lot_no": "C", "farm": "PS-F001", "parents": [{"lot": "p:C", "relation": "split"}]},
        ],
    }
    with Session(registry_db) as session, pytest.raises(ImportErrors) as e:
        import_trace_data(session, data)
    messages = [str(err) for err in e.value.errors]
    assert any("lots[0] field 'parents': lot p:A would be its own ancestor" in m for m in messages), messages
    assert any("lots[2] field 'parents[0].lot': a lot cannot be its own parent" in m for m in messages), messages
    assert _counts(registry_db)["lots"] == 0


def test_yaml_problems_are_reported_with_the_line(registry_db: Engine, tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("products:\n  - {code: p, name_zh: x\nlots: []\n", encoding="utf-8")
    with Session(registry_db) as session, pytest.raises(ImportErrors, match=r"broken.yaml:3: file: not valid YAML"):
        import_trace(session, path)
    path.write_text("plots: []\n", encoding="utf-8")
    with Session(registry_db) as session, pytest.raises(ImportErrors, match="unknown section"):
        import_trace(session, path)


# ---------------------------------------------------------------- migration


def test_migration_upgrade_and_downgrade_on_sqlite(tmp_path: Path) -> None:
    url = _url(tmp_path / "m.db")
    cfg = alembic_config(url)
    command.upgrade(cfg, "0008")
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            assert tables >= TRACE_TABLES | {"plot", "farm"}
            diffs = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
        ours = [d for d in diffs if _diff_table(d) in TRACE_TABLES | {"event_correction", "growth_summary"}]
        assert ours == [], ours  # the migrations create exactly what the models describe
        command.downgrade(cfg, "0001")
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            assert not tables & TRACE_TABLES and {"plot", "farm", "device"} <= tables
            assert conn.execute(sa.text("select version_num from alembic_version")).scalars().all() == ["0001"]
        command.upgrade(cfg, "0008")
        with engine.connect() as conn:
            assert set(sa.inspect(conn).get_table_names()) >= TRACE_TABLES | {"event_correction"}
    finally:
        engine.dispose()


def _diff_table(diff: Any) -> str | None:
    if isinstance(diff, list):  # column modifications come as a list of tuples
        return _diff_table(diff[0])
    for part in diff[1:]:
        if isinstance(part, sa.Table):
            return part.name
        if isinstance(part, sa.Index | sa.UniqueConstraint | sa.ForeignKeyConstraint) and part.table is not None:
            return part.table.name
        if isinstance(part, str) and part in TRACE_TABLES:
            return part
    return None


# ---------------------------------------------------------------- CLI


def test_cli_lots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cli.main import app
    from core.db import get_engine
    from core.settings import get_settings

    monkeypatch.setenv("DATABASE_URL", _url(tmp_path / "cli.db"))
    monkeypatch.setenv("VILLAGE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("TRACE_BASE_URL", "https://trace.example.cn")
    get_settings.cache_clear()
    get_engine.cache_clear()
    try:
        runner = CliRunner()
        result = runner.invoke(app, ["lots", "demo"])
        assert result.exit_code == 0, result.output
        assert "lots: 12 new" in result.output
        result = runner.invoke(app, ["lots", "demo"])
        assert result.exit_code == 0 and "lots: 0 new, 12 unchanged" in result.output
        result = runner.invoke(app, ["lots", "list"])
        assert result.exit_code == 0, result.output
        assert BAG in result.output and "FAIL" in result.output and "Lots (12)" in result.output
        result = runner.invoke(app, ["lots", "show", BAG.lower()])
        assert result.exit_code == 0, result.output
        assert "https://trace.example.cn/01/06947512300010/10/2026-M01-A" in result.output
        assert "211122101201-001" in result.output and "spraying" in result.output  # the paddy's field events
        assert "PJQ-2026-1021-03" in result.output
        assert "13800000101" not in result.output
        result = runner.invoke(app, ["lots", "show", FAILED])
        assert "FAIL" in result.output and "tricyclazole" in result.output
        result = runner.invoke(app, ["lots", "show", BAG[:-1] + "X"])
        assert result.exit_code == 2 and "wrong check character" in result.output
        result = runner.invoke(app, ["lots", "show", "rice-5kg:none"])
        assert result.exit_code == 1 and "no lot" in result.output
        result = runner.invoke(app, ["lots", "qr", BAG])
        assert result.exit_code == 0 and "█" in result.output
        assert result.output.rstrip().endswith("https://trace.example.cn/01/06947512300010/10/2026-M01-A")
        svg, png = tmp_path / "bag.svg", tmp_path / "bag.png"
        result = runner.invoke(
            app, ["lots", "qr", FAILED, "--svg", str(svg), "--png", str(png), "--base", "https://x.cn"]
        )
        assert result.exit_code == 0, result.output
        assert svg.read_bytes().startswith(b"<?xml") and png.read_bytes().startswith(b"\x89PNG")
        assert "https://x.cn/t/3RAR5JGYZHF" in result.output
        bad = tmp_path / "bad.yaml"
        bad.write_text(BAD, encoding="utf-8")
        result = runner.invoke(app, ["lots", "import", str(bad)])
        assert (
            result.exit_code == 1 and "did you mean sowing" in result.output and "nothing was imported" in result.output
        )
        result = runner.invoke(app, ["lots", "import", str(tmp_path / "missing.yaml")])
        assert result.exit_code == 2
    finally:
        get_settings.cache_clear()
        get_engine.cache_clear()


def test_bulk_loaders_make_the_records_verification_makes(demo_db: Engine) -> None:
    """The anchoring worker builds records with the set-based loaders, verification one by one: a
    difference between the two would make every record of a kind read as tampered."""
    with Session(demo_db) as session:
        refs = sorted({ref for lot_id in session.exec(select(Lot.id)).all() for ref in records_of_lot(session, lot_id)})
        by_kind: dict[str, list[int]] = {}
        for ref in refs:
            by_kind.setdefault(ref.kind, []).append(ref.id)
        assert {"lot/1", "event/1", "inspection/1"} <= set(by_kind)
        for kind, ids in by_kind.items():
            many = records_many(session, kind, ids)
            one = [record(session, kind, i) for i in ids]
            assert [canonical_bytes(r) for r in many] == [canonical_bytes(r) for r in one], kind
        with pytest.raises(RecordNotFound):
            records_many(session, "inspection/1", [10**9])
