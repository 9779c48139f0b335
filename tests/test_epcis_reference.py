"""The event hash of exported documents against GS1's reference implementation, epcis-event-hash-generator 1.9.3
(a pinned test dependency): every exported demo event and a fertilising event with a boolean, floats and a
non-ASCII product name.

Where the two differ, the algorithm decides. CBV 2.0's EPCIS Event Hash ID is syntax-agnostic: one event hashes
the same in XML and in JSON-LD. A JSON boolean is the xsd:boolean ``true`` (JSON-LD reads it so; XML writes it
so), and the reference's own XML reader writes ``organic=true``; only its JSON reader writes ``organic=True``
(Python's ``str(True)``), so it gives the same event two hashes. We follow the algorithm and its XML reader.
"""

from __future__ import annotations

import copy
import json
import unicodedata
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pytest
from epcis_event_hash_generator import hash_generator, json_to_py, xml_to_py
from sqlmodel import Session, select

from ledger.epcis import event_prehash, to_document
from ledger.epcis_io import export_lot
from ledger.models import Lot
from ledger.vocab import get_vocab
from tests.test_epcis_io import BAG, demo_engine

CST = timezone(timedelta(hours=8))
CREATED = datetime(2026, 10, 22, 9, 30, tzinfo=CST)


def reference_json(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(pre-hash, hash) of each event of a JSON-LD document, as the reference's JSON reader makes them."""
    events = json_to_py.event_list_from_epcis_document_json(copy.deepcopy(doc))
    prehashes = hash_generator.derive_prehashes_from_events(events)
    return list(zip(prehashes, hash_generator.calculate_hashes_from_pre_hashes(prehashes), strict=True))


def reference_xml(xml: str) -> list[tuple[str, str]]:
    """(pre-hash, hash) of each event of an EPCIS XML document, as the reference's XML reader makes them."""
    events = xml_to_py.event_list_from_epcis_document_str(xml)
    prehashes = hash_generator.derive_prehashes_from_events(events)
    return list(zip(prehashes, hash_generator.calculate_hashes_from_pre_hashes(prehashes), strict=True))


def as_python_bools(prehash: str) -> str:
    """Our pre-hash as the reference's JSON reader writes booleans (Python's True/False)."""
    return prehash.replace("=true", "=True").replace("=false", "=False")


def fertilising(product: str = "生物有机肥 bio-organic fertiliser", rate: float = 62.5, organic: bool = True) -> dict:
    v = get_vocab()
    return {
        "type": "ObjectEvent",
        "eventTime": "2026-06-20T09:00:00+08:00",
        "eventTimeZoneOffset": "+08:00",
        "quantityList": [{"epcClass": f"{v.id_base}/t/7K2QX9M4PZ3", "quantity": 12.5, "uom": "KGM"}],
        "action": "OBSERVE",
        "bizStep": v.namespace + "BizStep-fertilising",
        "readPoint": {"id": f"{v.id_base}/plot/P-0001"},
        "vt:method": "topdressing",
        "vt:organic": organic,
        "vt:product": product,
        "vt:rate_kg_per_mu": rate,
    }


def as_xml(event: dict[str, Any]) -> str:
    """The fertilising event in the EPCIS 2.0 XML binding (extensions as elements in the vt namespace)."""
    v = get_vocab()
    (q,) = event["quantityList"]

    def text(value: Any) -> str:
        return ("true" if value else "false") if isinstance(value, bool) else escape(str(value))

    extensions = "".join(f"<vt:{k[3:]}>{text(value)}</vt:{k[3:]}>" for k, value in event.items() if k.startswith("vt:"))
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<epcis:EPCISDocument xmlns:epcis="urn:epcglobal:epcis:xsd:2" xmlns:vt="{v.namespace}" '
        'schemaVersion="2.0" creationDate="2026-10-22T09:30:00+08:00"><EPCISBody><EventList><ObjectEvent>'
        f"<eventTime>{event['eventTime']}</eventTime><eventTimeZoneOffset>+08:00</eventTimeZoneOffset>"
        f"<epcList/><action>{event['action']}</action><bizStep>{event['bizStep']}</bizStep>"
        f"<readPoint><id>{event['readPoint']['id']}</id></readPoint>"
        f"<quantityList><quantityElement><epcClass>{q['epcClass']}</epcClass><quantity>{q['quantity']}</quantity>"
        f"<uom>{q['uom']}</uom></quantityElement></quantityList>{extensions}"
        "</ObjectEvent></EventList></EPCISBody></epcis:EPCISDocument>"
    )


def test_a_boolean_extension_hashes_as_xml_writes_it() -> None:
    """The event of the disagreement: ours is the hash of its XML form, by the reference itself."""
    event = fertilising()
    doc = to_document([event], created=CREATED)
    (exported,) = doc["epcisBody"]["eventList"]
    ours = event_prehash(exported, {"vt": get_vocab().namespace})
    assert "{https://w3id.org/village-trace/voc/}organic=true" in ours
    assert "rate_kg_per_mu=62.5" in ours and "product=生物有机肥 bio-organic fertiliser" in ours
    ((xml_prehash, xml_hash),) = reference_xml(as_xml(event))
    assert (xml_prehash, xml_hash) == (ours, exported["eventID"])
    ((json_prehash, json_hash),) = reference_json(doc)
    assert json_prehash == as_python_bools(ours) and json_hash != exported["eventID"]  # its JSON reader's slip


@pytest.mark.parametrize("rate", [62.5, 80.0, 0.125, 1e-07, 1234567.0])
@pytest.mark.parametrize("organic", [True, False])
def test_floats_and_booleans_agree_with_the_reference_xml_reader(rate: float, organic: bool) -> None:
    """Numbers without trailing zeros (80.0 is 80), the same in JSON and XML; false is false."""
    event = fertilising(rate=rate, organic=organic)
    (exported,) = to_document([event], created=CREATED)["epcisBody"]["eventList"]
    ((_, xml_hash),) = reference_xml(as_xml({**event, "vt:rate_kg_per_mu": exported["vt:rate_kg_per_mu"]}))
    assert exported["eventID"] == xml_hash
    if rate == 80.0:
        assert event_prehash(event).endswith("rate_kg_per_mu=80")


def test_unicode_is_hashed_as_written_by_both() -> None:
    """The algorithm names no Unicode normalisation: NFC and NFD spellings are different strings to both."""
    nfc = unicodedata.normalize("NFC", "Café 有机肥")
    nfd = unicodedata.normalize("NFD", nfc)
    docs = [to_document([fertilising(product=p)], created=CREATED) for p in (nfc, nfd)]
    ours = [d["epcisBody"]["eventList"][0]["eventID"] for d in docs]
    theirs = [reference_xml(as_xml(fertilising(product=p)))[0][1] for p in (nfc, nfd)]
    assert ours == theirs and ours[0] != ours[1]


def test_every_exported_demo_event_agrees_with_the_reference(tmp_path: Path) -> None:
    """The demo bag's whole history: the reference's JSON reader gives our pre-hash of every event, booleans
    aside (True for true); the events without a boolean get the very same hash."""
    engine = demo_engine(tmp_path / "demo.db")
    with Session(engine) as session:
        doc = export_lot(session, session.exec(select(Lot).where(Lot.code == BAG)).one())
    engine.dispose()
    events = doc["epcisBody"]["eventList"]
    prefixes = {k: v for c in doc["@context"] if isinstance(c, dict) for k, v in c.items()}
    theirs = reference_json(json.loads(json.dumps(doc)))
    assert len(events) == len(theirs) >= 20
    with_booleans = 0
    for event, (their_prehash, their_hash) in zip(events, theirs, strict=True):
        ours = event_prehash(event, prefixes)
        assert their_prehash == as_python_bools(ours)
        if any(isinstance(v, bool) for v in event.values()):
            with_booleans += 1
        else:
            assert their_hash == event["eventID"]
    assert with_booleans >= 1  # the comparison covers the case where the two differ
