"""EPCIS 2.0 interchange: GS1 event hash (reference vectors, invariance, sensitivity), documents (schema, offline
JSON-LD expansion, round trip) and the errors of broken documents."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import epcis
from ledger.epcis import EpcisError, event_hash, event_prehash, from_document, normalise_event, to_document
from ledger.epcis_dl import dl_normalise
from ledger.epcis_hash import utc_millis
from ledger.vocab import get_vocab

DATA = Path(__file__).parent / "data" / "epcis"
REFERENCE = sorted((DATA / "reference").glob("*.jsonld"))
CST = timezone(timedelta(hours=8))
CREATED = datetime(2026, 10, 22, 9, 30, tzinfo=CST)


def doc_prefixes(doc: dict[str, Any]) -> dict[str, str]:
    context = doc["@context"] if isinstance(doc["@context"], list) else [doc["@context"]]
    return {k: v for c in context if isinstance(c, dict) for k, v in c.items() if isinstance(v, str)}


def doc_events(doc: dict[str, Any]) -> list[dict[str, Any]]:
    body = doc["epcisBody"]
    if "eventList" in body:
        return body["eventList"]
    return body["queryResults"]["resultsBody"]["eventList"]


# --- event hash: the reference implementation's vectors ----------------------------------------------------------


def test_reference_vectors_are_all_there() -> None:
    assert len(REFERENCE) >= 20
    assert sum(len(doc_events(json.loads(p.read_text()))) for p in REFERENCE) == 39


@pytest.mark.parametrize("path", REFERENCE, ids=lambda p: p.stem)
def test_reference_vectors(path: Path) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    events, prefixes = doc_events(doc), doc_prefixes(doc)
    expected = path.with_suffix(".hashes").read_text().splitlines()
    assert [event_hash(e, prefixes) for e in events] == expected
    prehashes = path.with_suffix(".prehashes")
    if prehashes.exists():
        assert [event_prehash(e, prefixes) for e in events] == prehashes.read_text(encoding="utf-8").splitlines()


@pytest.mark.parametrize("uri,expected", json.loads((DATA / "dl_normaliser_cases.json").read_text()))
def test_digital_link_normaliser(uri: str, expected: str | None) -> None:
    assert dl_normalise(uri) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("2023-02-02T11:04:03.1415Z", "2023-02-02T11:04:03.142Z"),  # a fourth decimal of 5 rounds up
        ("2023-02-02T11:04:03.1414Z", "2023-02-02T11:04:03.141Z"),
        ("2023-12-31T23:59:59.9996Z", "2024-01-01T00:00:00.000Z"),  # and carries into the year
        ("2026-05-20T09:00:00+08:00", "2026-05-20T01:00:00.000Z"),
        ("2026-05-20t09:00:00.5-06:30", "2026-05-20T15:30:00.500Z"),
        ("2026-05-20T09:00:00", None),  # no offset: not a time the hash can place
        ("20 May 2026", None),
    ],
)
def test_times_become_utc_milliseconds(text: str, expected: str | None) -> None:
    assert utc_millis(text) == expected


# --- event hash: the same event written differently, and a different event ---------------------------------------


def sowing(**changes: Any) -> dict[str, Any]:
    """A farm step as the trace domain writes it (ledger.records.epcis_event): full URIs, vt: extension keys."""
    v = get_vocab()
    event = {
        "type": "ObjectEvent",
        "eventTime": "2026-05-20T09:00:00+08:00",
        "eventTimeZoneOffset": "+08:00",
        "quantityList": [{"epcClass": f"{v.id_base}/t/7K2QX9M4PZ3", "quantity": 12.5, "uom": "KGM"}],
        "action": "ADD",
        "bizStep": v.namespace + "BizStep-sowing",
        "disposition": "https://ref.gs1.org/cbv/Disp-active",
        "readPoint": {"id": f"{v.id_base}/plot/P-0001"},
        "bizLocation": {"id": f"{v.id_base}/village/211122101201"},
        "vt:actor": f"{v.id_base}/farm/F-01",
        "vt:method": "nursery_tray",
        "vt:seed_kg_per_mu": 2.5,
        "vt:variety": "盐丰47",
    }
    event.update(changes)
    return event


def milling(**changes: Any) -> dict[str, Any]:
    v = get_vocab()
    event = {
        "type": "TransformationEvent",
        "eventTime": "2026-10-20T14:00:00+08:00",
        "eventTimeZoneOffset": "+08:00",
        "inputQuantityList": [{"epcClass": f"{v.id_base}/t/7K2QX9M4PZ3", "quantity": 1000, "uom": "KGM"}],
        "outputQuantityList": [
            {"epcClass": "https://id.gs1.org/01/06901234567892/10/2026-A1", "quantity": 650, "uom": "KGM"}
        ],
        "bizStep": v.namespace + "BizStep-milling",
        "readPoint": {"id": f"{v.id_base}/facility/MILL-1"},
        "bizLocation": {"id": f"{v.id_base}/village/211122101201"},
        "vt:actor": f"{v.id_base}/facility/MILL-1",
    }
    event.update(changes)
    return event


def shipping(**changes: Any) -> dict[str, Any]:
    event = {
        "type": "ObjectEvent",
        "eventTime": "2026-10-21T09:00:00+08:00",
        "eventTimeZoneOffset": "+08:00",
        "quantityList": [{"epcClass": "https://id.gs1.org/01/06901234567892/10/2026-A1", "quantity": 20, "uom": "KGM"}],
        "action": "OBSERVE",
        "bizStep": "https://ref.gs1.org/cbv/BizStep-shipping",
        "disposition": "https://ref.gs1.org/cbv/Disp-in_transit",
        "readPoint": {"id": "https://id.gs1.org/414/6901234000016"},
        "bizTransactionList": [
            {"type": "https://ref.gs1.org/cbv/BTT-po", "bizTransaction": "urn:epcglobal:cbv:bt:6901234000009:PO-7"},
            {"type": "https://ref.gs1.org/cbv/BTT-desadv", "bizTransaction": "urn:epcglobal:cbv:bt:6901234000009:A1"},
        ],
        "sourceList": [
            {"type": "https://ref.gs1.org/cbv/SDT-owning_party", "source": "https://id.gs1.org/417/6901234000009"}
        ],
        "destinationList": [
            {"type": "https://ref.gs1.org/cbv/SDT-owning_party", "destination": "https://id.gs1.org/417/6901234000108"}
        ],
    }
    event.update(changes)
    return event


def test_time_notation_does_not_change_the_hash() -> None:
    local = sowing(eventTime="2026-05-20T09:00:00+08:00")
    utc = sowing(eventTime="2026-05-20T01:00:00.000Z")
    other_zone = sowing(eventTime="2026-05-19T19:00:00.0000-06:00")
    assert event_hash(local) == event_hash(utc) == event_hash(other_zone)


def test_equivalent_notations_give_the_same_hash() -> None:
    """Bare CBV words, CBV URNs, CURIEs, EPC URNs, key order and list order are all notation, not content."""
    v = get_vocab()
    reference = shipping(
        quantityList=[{"epcClass": "https://id.gs1.org/01/06901234567892/10/2026-A1", "quantity": 20.0, "uom": "KGM"}]
    )
    variant = {
        "disposition": "in_transit",
        "sourceList": [{"source": "urn:epc:id:pgln:690123.400000", "type": "owning_party"}],
        "action": "OBSERVE",
        "bizTransactionList": [  # reversed, and value before type
            {"bizTransaction": "urn:epcglobal:cbv:bt:6901234000009:A1", "type": "urn:epcglobal:cbv:btt:desadv"},
            {"bizTransaction": "urn:epcglobal:cbv:bt:6901234000009:PO-7", "type": "cbv:BTT-po"},
        ],
        "readPoint": {"id": "urn:epc:id:sgln:690123.400001.0"},
        "destinationList": [{"type": "owning_party", "destination": "https://example.cn/party/6901234000108?x=1"}],
        "eventTimeZoneOffset": "+08:00",
        "bizStep": "urn:epcglobal:cbv:bizstep:shipping",
        "quantityList": [{"uom": "KGM", "quantity": 20, "epcClass": "urn:epc:class:lgtin:690123.0456789.2026-A1"}],
        "eventTime": "2026-10-21T01:00:00Z",
        "type": "ObjectEvent",
    }
    assert event_hash(reference) == event_hash(variant)
    # the project vocabulary: full IRI or CURIE, for steps and extension keys alike
    curies = sowing(bizStep="vt:BizStep-sowing")
    curies[v.namespace + "variety"] = curies.pop("vt:variety")
    assert event_hash(curies) == event_hash(sowing())
    # a document may bind another prefix to the project namespace
    other = {("village:" + k[3:] if k.startswith("vt:") else k): val for k, val in sowing().items()}
    assert event_hash(other, {"village": v.namespace}) == event_hash(sowing())


@settings(max_examples=60, deadline=None)
@given(st.randoms(use_true_random=False))
def test_key_and_list_order_never_change_the_hash(rnd: Any) -> None:
    def shuffled(value: Any, in_list_of: str = "") -> Any:
        if isinstance(value, dict):
            items = list(value.items())
            rnd.shuffle(items)
            return {k: shuffled(v, k) for k, v in items}
        if isinstance(value, list):
            items = [shuffled(v) for v in value]
            rnd.shuffle(items)
            return items
        return value

    for event in (sowing(), milling(), shipping()):
        assert event_hash(shuffled(event)) == event_hash(event)


@pytest.mark.parametrize(
    "change",
    [
        {"eventTime": "2026-05-20T09:00:00.001+08:00"},
        {"eventTimeZoneOffset": "+09:00"},
        {"action": "OBSERVE"},
        {"bizStep": "https://ref.gs1.org/cbv/BizStep-commissioning"},
        {"disposition": "https://ref.gs1.org/cbv/Disp-in_progress"},
        {
            "quantityList": [
                {"epcClass": "https://w3id.org/village-trace/t/7K2QX9M4PZ3", "quantity": 12.6, "uom": "KGM"}
            ]
        },
        {
            "quantityList": [
                {"epcClass": "https://w3id.org/village-trace/t/7K2QX9M4PZ4", "quantity": 12.5, "uom": "KGM"}
            ]
        },
        {
            "quantityList": [
                {"epcClass": "https://w3id.org/village-trace/t/7K2QX9M4PZ3", "quantity": 12.5, "uom": "TNE"}
            ]
        },
        {"readPoint": {"id": "https://w3id.org/village-trace/plot/P-0002"}},
        {"vt:variety": "盐丰48"},
        {"vt:seed_kg_per_mu": 2.6},
        {"vt:note": "extra field"},
        {"ilmd": {"vt:harvest_date": "2026-10-01"}},
        {"type": "AggregationEvent"},
    ],
    ids=lambda c: next(iter(c)),
)
def test_a_changed_field_changes_the_hash(change: dict[str, Any]) -> None:
    assert event_hash(sowing(**change)) != event_hash(sowing())


def test_a_removed_field_changes_the_hash() -> None:
    for key in ("disposition", "bizLocation", "vt:actor", "quantityList"):
        event = sowing()
        del event[key]
        assert event_hash(event) != event_hash(sowing()), key


def test_record_time_and_event_id_are_not_hashed() -> None:
    assert event_hash(sowing(recordTime="2026-05-21T00:00:00Z", eventID="urn:uuid:1")) == event_hash(sowing())


def test_hash_format_and_other_digests() -> None:
    h = event_hash(sowing())
    assert (
        h.startswith("ni:///sha-256;") and h.endswith("?ver=CBV2.0") and len(h) == len("ni:///sha-256;?ver=CBV2.0") + 64
    )
    assert event_hash(sowing(), algorithm="sha-512").startswith("ni:///sha-512;")
    with pytest.raises(ValueError, match="unsupported"):
        event_hash(sowing(), algorithm="md5")


# --- documents ---------------------------------------------------------------------------------------------------


def test_exported_documents_validate_and_carry_event_hashes() -> None:
    events = [sowing(), milling(), shipping()]
    doc = to_document(events, created=CREATED, sender="https://w3id.org/village-trace/county/211122")
    epcis.validate_document(doc)  # raises on any schema violation
    prefix, namespace = epcis.project_namespace()
    assert doc["@context"] == [epcis.GS1_CONTEXT_URL, {prefix: namespace}]
    assert (doc["type"], doc["schemaVersion"]) == ("EPCISDocument", "2.0")
    assert doc["creationDate"] == "2026-10-22T09:30:00+08:00"
    exported = doc["epcisBody"]["eventList"]
    assert [e["eventID"] for e in exported] == [event_hash(e) for e in events]
    assert [e["eventID"] for e in exported] == [event_hash(e, {prefix: namespace}) for e in exported]
    for e in exported:
        assert e["eventTime"].endswith("+08:00") and e["eventTimeZoneOffset"] == "+08:00"
    # vocabulary values as full URIs (CBV's and the project's), extension keys with the declared prefix
    assert exported[0]["bizStep"] == f"{namespace}BizStep-sowing"
    assert exported[0]["disposition"] == "https://ref.gs1.org/cbv/Disp-active"
    assert exported[0][f"{prefix}:variety"] == "盐丰47"
    assert exported[2]["bizStep"] == "https://ref.gs1.org/cbv/BizStep-shipping"
    assert exported[2]["disposition"] == "https://ref.gs1.org/cbv/Disp-in_transit"
    assert exported[2]["bizTransactionList"][0] == {
        "type": "https://ref.gs1.org/cbv/BTT-po",
        "bizTransaction": "urn:epcglobal:cbv:bt:6901234000009:PO-7",
    }
    assert exported[2]["sourceList"][0]["type"] == "https://ref.gs1.org/cbv/SDT-owning_party"


def _find(node: Any, key: str) -> list[Any]:
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                found.append(v)
            found.extend(_find(v, key))
    elif isinstance(node, list):
        for v in node:
            found.extend(_find(v, key))
    return found


def test_exported_documents_expand_as_json_ld_offline() -> None:
    _, namespace = epcis.project_namespace()
    doc = to_document([sowing(), milling(), shipping()], created=CREATED)
    expanded = epcis.expand(doc)
    (body,) = expanded[0]["https://ref.gs1.org/epcis/epcisBody"]
    events = body["https://ref.gs1.org/epcis/eventList"]
    by_id = {e["@id"]: e for e in events}
    sow = by_id[doc["epcisBody"]["eventList"][0]["eventID"]]
    assert sow["@type"] == ["https://ref.gs1.org/epcis/ObjectEvent"]
    assert sow["https://ref.gs1.org/epcis/bizStep"] == [{"@id": namespace + "BizStep-sowing"}]
    assert sow["https://ref.gs1.org/epcis/disposition"] == [{"@id": "https://ref.gs1.org/cbv/Disp-active"}]
    assert sow["https://ref.gs1.org/epcis/readPoint"] == [{"@id": "https://w3id.org/village-trace/plot/P-0001"}]
    assert sow[namespace + "variety"] == [{"@value": "盐丰47"}]
    (quantity,) = sow["https://ref.gs1.org/epcis/quantityList"]
    assert quantity["https://ref.gs1.org/epcis/epcClass"] == [{"@id": "https://w3id.org/village-trace/t/7K2QX9M4PZ3"}]
    assert _find(events, "https://ref.gs1.org/epcis/bizStep").count([{"@id": namespace + "BizStep-milling"}]) == 1
    ship = by_id[doc["epcisBody"]["eventList"][2]["eventID"]]
    assert ship["https://ref.gs1.org/epcis/bizStep"] == [{"@id": "https://ref.gs1.org/cbv/BizStep-shipping"}]
    types = _find(ship["https://ref.gs1.org/epcis/bizTransactionList"], "https://ref.gs1.org/epcis/bizTransactionType")
    assert sorted(t[0]["@id"] for t in types) == [
        "https://ref.gs1.org/cbv/BTT-desadv",
        "https://ref.gs1.org/cbv/BTT-po",
    ]
    # the unversioned GS1 context URL is served from the vendored copy as well
    doc["@context"][0] = "https://ref.gs1.org/standards/epcis/epcis-context.jsonld"
    assert epcis.expand(doc)[0]["https://ref.gs1.org/epcis/epcisBody"]


def test_remote_documents_other_than_gs1_context_are_refused() -> None:
    doc = to_document([sowing()], created=CREATED)
    doc["@context"].append("https://example.org/contexts/other.jsonld")
    with pytest.raises(EpcisError) as err:
        epcis.expand(doc)
    assert err.value.errors[0][0] == "/@context"
    assert "refusing to load" in err.value.errors[0][1] and "https://example.org/contexts/other.jsonld" in str(
        err.value
    )
    with pytest.raises(epcis.RemoteDocumentRefused):
        epcis.document_loader("https://schema.org/")


def test_round_trip_preserves_events() -> None:
    events = [sowing(), milling(), shipping()]
    back = from_document(to_document(events, created=CREATED))
    assert back == [{"type": e["type"], "eventID": event_hash(e), **e} for e in events]
    assert json.loads(json.dumps(to_document(back, created=CREATED))) == to_document(events, created=CREATED)


def test_round_trip_normalises_other_notations() -> None:
    variant = {
        "eventTime": datetime(2026, 10, 21, 1, 0, tzinfo=UTC),
        "type": "ObjectEvent",
        "action": "OBSERVE",
        "bizStep": "shipping",
        "disposition": "urn:epcglobal:cbv:disp:in_transit",
        "quantityList": [{"epcClass": "urn:epc:class:lgtin:690123.0456789.2026-A1", "quantity": 20.0, "uom": "KGM"}],
    }
    normal = normalise_event(variant)
    assert normal == {
        "type": "ObjectEvent",
        "eventTime": "2026-10-21T01:00:00+00:00",
        "eventTimeZoneOffset": "+00:00",
        "quantityList": [{"epcClass": "https://id.gs1.org/01/06901234567892/10/2026-A1", "quantity": 20, "uom": "KGM"}],
        "action": "OBSERVE",
        "bizStep": "https://ref.gs1.org/cbv/BizStep-shipping",
        "disposition": "https://ref.gs1.org/cbv/Disp-in_transit",
    }
    assert normalise_event(normal) == normal
    # eventTimeZoneOffset (required by EPCIS) was filled in from eventTime; nothing else changed
    assert event_hash(normal) == event_hash({**variant, "eventTimeZoneOffset": "+00:00"})
    (back,) = from_document(to_document([variant], created=CREATED))
    assert back == {"type": "ObjectEvent", "eventID": event_hash(normal), **normal}


@pytest.mark.parametrize(
    "step,disposition",
    [
        ("shipping", "in_transit"),  # bare words of GS1's context
        ("cbv:BizStep-shipping", "cbv:Disp-in_transit"),  # CURIEs
        ("https://ref.gs1.org/cbv/BizStep-shipping", "https://ref.gs1.org/cbv/Disp-in_transit"),  # full URIs
    ],  # (EPCIS 1.x URNs are not allowed in JSON documents by GS1's schema: normalise_event takes them)
)
def test_every_spelling_of_a_cbv_term_imports_and_exports_as_its_full_uri(step: str, disposition: str) -> None:
    original = to_document([shipping()], created=CREATED)
    doc = copy.deepcopy(original)
    (event,) = doc["epcisBody"]["eventList"]
    event["bizStep"], event["disposition"] = step, disposition
    event["bizTransactionList"][0]["type"] = {"shipping": "po", "cbv:BizStep-shipping": "cbv:BTT-po"}.get(
        step, event["bizTransactionList"][0]["type"]
    )
    (back,) = from_document(doc)  # the eventID still matches: the spelling does not change the hash
    assert back["bizStep"] == "https://ref.gs1.org/cbv/BizStep-shipping"
    assert back["disposition"] == "https://ref.gs1.org/cbv/Disp-in_transit"
    assert back["bizTransactionList"][0]["type"] == "https://ref.gs1.org/cbv/BTT-po"
    assert to_document([back], created=CREATED) == original


@pytest.mark.parametrize("step", ["vt:BizStep-drying", "https://w3id.org/village-trace/voc/BizStep-drying"])
def test_every_spelling_of_a_project_step_imports_and_exports_as_its_full_uri(step: str) -> None:
    drying = sowing(bizStep=step)
    (exported_event,) = to_document([drying], created=CREATED)["epcisBody"]["eventList"]
    assert exported_event["bizStep"] == "https://w3id.org/village-trace/voc/BizStep-drying"
    doc = to_document([sowing(bizStep="vt:BizStep-drying")], created=CREATED)
    doc["epcisBody"]["eventList"][0]["bizStep"] = step
    (back,) = from_document(doc)
    assert back["bizStep"] == "https://w3id.org/village-trace/voc/BizStep-drying"
    assert back["eventID"] == exported_event["eventID"] == event_hash(drying)


def test_foreign_documents_are_normalised_and_keep_their_hash() -> None:
    """A partner's document with its own prefixes: their CURIEs become full IRIs, ours our prefix."""
    doc = json.loads((DATA / "reference" / "ReferenceEventHashAlgorithm3.jsonld").read_text())
    expected = (DATA / "reference" / "ReferenceEventHashAlgorithm3.hashes").read_text().split()
    (event,) = from_document(doc)  # no eventID in the file: computed
    assert event["eventID"] == expected[0]
    assert event["readPoint"] == {
        "id": "https://id.gs1.org/414/4012345000115",
        "https://ns.example.com/epcis/myField1": "AB-12",
    }
    assert event["https://ns.example.com/epcis/userExt"] == "CD-34"
    assert event["epcList"] == ["https://id.gs1.org/01/00614141111114/21/987"]
    reexported = to_document([event], created=CREATED)  # without the partner's prefix, same event hash
    assert reexported["epcisBody"]["eventList"][0]["eventID"] == expected[0]


# --- broken documents --------------------------------------------------------------------------------------------


def errors_of(doc: Any) -> list[tuple[str, str]]:
    with pytest.raises(EpcisError) as err:
        from_document(doc)
    return err.value.errors


def exported() -> dict[str, Any]:
    return to_document([sowing(), milling(), shipping()], created=CREATED)


def test_schema_violations_name_their_path() -> None:
    doc = exported()
    doc["epcisBody"]["eventList"][2]["action"] = "MOVE"
    doc["epcisBody"]["eventList"][0]["quantityList"][0]["uom"] = "kg"
    del doc["epcisBody"]["eventList"][1]["eventTime"]
    paths = {path for path, _ in errors_of(doc)}
    assert {
        "/epcisBody/eventList/2/action",
        "/epcisBody/eventList/0/quantityList/0/uom",
        "/epcisBody/eventList/1",
    } <= paths
    messages = dict(errors_of(doc))
    assert "MOVE" in messages["/epcisBody/eventList/2/action"]


def test_a_time_without_offset_is_a_schema_violation() -> None:
    doc = exported()
    doc["epcisBody"]["eventList"][0]["eventTime"] = "2026-05-20T09:00:00"
    assert errors_of(doc)[0][0] == "/epcisBody/eventList/0/eventTime"


def test_a_changed_event_no_longer_matches_its_event_id() -> None:
    doc = exported()
    doc["epcisBody"]["eventList"][1]["outputQuantityList"][0]["quantity"] = 700
    ((path, message),) = errors_of(doc)
    assert path == "/epcisBody/eventList/1/eventID"
    assert "does not match" in message
    assert event_hash(milling(outputQuantityList=doc["epcisBody"]["eventList"][1]["outputQuantityList"])) in message


def test_an_event_id_that_is_not_an_event_hash_is_refused() -> None:
    doc = exported()
    doc["epcisBody"]["eventList"][0]["eventID"] = "urn:uuid:3a5b7c1e-2f4d-4c6b-8a9e-0f1e2d3c4b5a"
    ((path, message),) = errors_of(doc)
    assert path == "/epcisBody/eventList/0/eventID" and "not a GS1 event hash" in message


def test_missing_event_ids_are_computed() -> None:
    doc = exported()
    ids = [e.pop("eventID") for e in doc["epcisBody"]["eventList"]]
    assert [e["eventID"] for e in from_document(doc)] == ids


def test_duplicate_events_are_detected_whatever_their_notation() -> None:
    doc = exported()
    again = copy.deepcopy(doc["epcisBody"]["eventList"][0])
    again.pop("eventID")
    again["eventTime"] = "2026-05-20T01:00:00.000Z"  # the same instant
    again["bizStep"] = "vt:BizStep-sowing"  # the same step, as a CURIE
    doc["epcisBody"]["eventList"].append(again)
    ((path, message),) = errors_of(doc)
    assert path == "/epcisBody/eventList/3"
    assert "duplicate" in message and "/epcisBody/eventList/0" in message


@pytest.mark.parametrize("text", [b"{not json", "", "[1, 2", b"\xff\xfe"])
def test_non_json_is_an_error_at_the_root(text: str | bytes) -> None:
    ((path, message),) = errors_of(text)
    assert path == "" and message.startswith("not JSON")


def test_a_json_value_that_is_not_a_document() -> None:
    assert errors_of("[]")[0][0] == ""
    errors = errors_of({"type": "EPCISDocument"})
    assert errors and all(path == "" for path, _ in errors)


def test_unknown_remote_contexts_are_refused_on_import() -> None:
    doc = exported()
    doc["@context"].append("https://example.org/contexts/other.jsonld")
    ((path, message),) = errors_of(json.dumps(doc))
    assert path == "/@context/2" and "unknown remote context" in message


def test_export_refuses_what_it_cannot_name() -> None:
    with pytest.raises(EpcisError) as err:
        to_document([sowing(), sowing(eventTime="2026-05-20T01:00:00Z")], created=CREATED)
    assert err.value.errors[0][0] == "/epcisBody/eventList/1" and "same event" in err.value.errors[0][1]
    with pytest.raises(EpcisError) as err:
        to_document([sowing(eventTime=datetime(2026, 5, 20, 9, 0))], created=CREATED)
    assert err.value.errors[0][0] == "/epcisBody/eventList/0/eventTime"
    with pytest.raises(EpcisError) as err:
        to_document([sowing(eventID=event_hash(milling()))], created=CREATED)
    assert err.value.errors[0][0] == "/epcisBody/eventList/0/eventID"
    with pytest.raises(EpcisError) as err:
        to_document([sowing()], created=datetime(2026, 10, 22))
    assert err.value.errors[0][0] == "/creationDate"
    with pytest.raises(EpcisError) as err:
        to_document([sowing(action="MOVE")], created=CREATED)
    assert "/epcisBody/eventList/0/action" in {path for path, _ in err.value.errors}


def test_foreign_extension_namespaces_get_declared_prefixes() -> None:
    event = sowing(**{"https://ns.example.com/epcis/moisture": 14.5, "ilmd": {"urn:epcglobal:cbv:mda:lotNumber": "L1"}})
    doc = to_document([event], created=CREATED)
    context = doc["@context"][1]
    (exported_event,) = doc["epcisBody"]["eventList"]
    assert context["cbvmda"] == "urn:epcglobal:cbv:mda:" and exported_event["ilmd"] == {"cbvmda:lotNumber": "L1"}
    (ns_prefix,) = (p for p, ns in context.items() if ns == "https://ns.example.com/epcis/")
    assert exported_event[f"{ns_prefix}:moisture"] == 14.5
    assert exported_event["eventID"] == event_hash(event) == event_hash(exported_event, context)
    (expanded_event,) = epcis.expand(doc)[0]["https://ref.gs1.org/epcis/epcisBody"][0][
        "https://ref.gs1.org/epcis/eventList"
    ]
    assert expanded_event["https://ns.example.com/epcis/moisture"][0]["@value"] == 14.5


def test_extension_keys_without_a_stable_form_are_refused() -> None:
    """ex:a/b hashes as {ns}a/b, its IRI as {ns a/}b: there is no normalised form that keeps the hash."""
    with pytest.raises(EpcisError) as err:
        normalise_event(sowing(**{"vt:a/b": 1}))
    assert err.value.errors[0][0] == "/vt:a~1b" and "no stable full form" in err.value.errors[0][1]
    with pytest.raises(EpcisError):
        normalise_event(sowing(**{"ex:x": 1}), {"ex": "https://ns.example.com/no-slash"})


def test_json_booleans_hash_as_their_xml_text() -> None:
    """true is written as XML writes it (the reference's Python port would write True)."""
    organic = sowing(**{"vt:organic": True})
    assert "{https://w3id.org/village-trace/voc/}organic=true" in event_prehash(organic)
    assert event_hash(organic) == event_hash(sowing(**{"vt:organic": "true"}))
    assert event_hash(organic) != event_hash(sowing(**{"vt:organic": False}))
