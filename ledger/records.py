"""Canonical trace records: the exact bytes a ledger leaf is computed from.

A record is `{"schema": "<kind>/<version>", "content": {...}, "salt": "<32 hex>"}` serialized as
RFC 8785 (JCS) canonical JSON by the `rfc8785` package (DESIGN "Ledger"); its leaf is
`keccak256(keccak256(canonical_bytes(record)))` (ledger/merkle.py). Kinds are looked up in a
registry (`register_kind`), so other modules add theirs ("growth/1", "digest/1", "manifest/1")
without touching this file. This module defines "lot/1", "event/1", "inspection/1" and
"correction/1" (an EPCIS error declaration: an anchored event is corrected, never edited).

Fixed forms, so that the same fact never hashes two ways:
- keys are snake_case; every key of a kind's content is always present (null when unknown);
- lots are named by `ledger.codes.canonical_lot_uri` (GS1 canonical Digital Link for GTIN lots,
  the project identifier base otherwise), never by a deployment's URL; products by their
  Digital Link product URI `https://id.gs1.org/01/{gtin14}` (null without GTIN) and their code;
- steps and dispositions are full URIs (ledger/vocab.py);
- event times are RFC 3339 in the event's own offset ("2026-05-26T08:30:00+08:00"; milliseconds
  only when there are any); dates are YYYY-MM-DD;
- numbers are JSON numbers. Decimals are rounded to their declared precision when they are
  stored (units and attributes in vocab.yaml, inspection values to 6 places), and are written
  here exactly as stored: a stored double always serializes to the same shortest round-trip
  text under JCS (0.1 is "0.1", 5.0 is "5"), so there is no float drift between runs or machines;
- lists whose order carries no meaning (sources, parents, inputs, outputs, items) are sorted;
- plots by plot_no and village code, farms and facilities by their registry codes. Nothing
  personal ever enters a record: no contact names or phones, no farm names, no coordinates.
- database ids, `created_at`/`recorded_at` and the EPCIS `event_id` (derived from the event)
  are not content: a record means the same in any database it is loaded into.

Which records belong to a lot (`records_of_lot`): the lot itself, its events and its inspections,
AND those of all its ancestors through LotParent (recursively). A consumer scanning a bag of
milled rice wants the paddy's field events and inspections too; siblings and descendants are
not included.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import rfc8785
from sqlmodel import Session, col, select

from core.models import Farm, Herd, Plot
from ledger.codes import GS1_CANONICAL_BASE, canonical_lot_uri
from ledger.models import (
    EventCorrection,
    Facility,
    Inspection,
    InspectionItem,
    Lot,
    LotParent,
    LotSource,
    TraceEvent,
    TraceEventLot,
)
from ledger.vocab import get_vocab

LOT = "lot/1"
EVENT = "event/1"
INSPECTION = "inspection/1"
CORRECTION = "correction/1"
CBV_ERROR_REASON = "https://ref.gs1.org/cbv/ER-"
_KIND = re.compile(r"^[a-z][a-z0-9_]*/[1-9][0-9]*$")


@dataclass(frozen=True, order=True)
class RecordRef:
    """A record by kind (its schema id, e.g. "lot/1") and the id of the row it is made from."""

    kind: str
    id: int


class UnknownKind(KeyError):
    """A record kind nobody registered."""


class RecordNotFound(LookupError):
    """The row a record would be made from does not exist."""


Loader = Callable[[Session, int], tuple[dict[str, Any], str]]
"""(session, id) -> (content, salt hex) of one record."""
Collector = Callable[[Session, list[int]], Iterable[RecordRef]]
"""(session, ids of a lot and its ancestors) -> the records of this kind that belong to that trace."""

_LOADERS: dict[str, Loader] = {}
_COLLECTORS: dict[str, Collector] = {}


def register_kind(kind: str, loader: Loader, collector: Collector | None = None) -> None:
    """Make `record(session, kind, id)` work for `kind` ("name/version"); with `collector`,
    `records_of_lot` also lists this kind's records of a lot (e.g. per-plot growth digests)."""
    if not _KIND.match(kind):
        raise ValueError(f"record kind {kind!r}: expected 'name/version', e.g. 'growth/1'")
    _LOADERS[kind] = loader
    if collector is not None:
        _COLLECTORS[kind] = collector
    else:
        _COLLECTORS.pop(kind, None)


def kinds() -> list[str]:
    """The registered record kinds."""
    return sorted(_LOADERS)


def record(session: Session, kind: str, id: int) -> dict[str, Any]:
    """The record of row `id` of `kind`: {"schema", "content", "salt"}."""
    loader = _LOADERS.get(kind)
    if loader is None:
        raise UnknownKind(f"unknown record kind {kind!r}; registered: {', '.join(kinds())}")
    content, salt = loader(session, id)
    if not re.fullmatch(r"[0-9a-f]{32}", salt):
        raise ValueError(f"{kind} {id}: the salt must be 16 bytes as 32 lower-case hex digits")
    return {"schema": kind, "content": content, "salt": salt}


def canonical_bytes(rec: dict[str, Any]) -> bytes:
    """RFC 8785 (JCS) canonical JSON of a record: the bytes its leaf is computed from."""
    return rfc8785.dumps(rec)


def record_bytes(session: Session, ref: RecordRef) -> bytes:
    """The canonical bytes of a record by reference."""
    return canonical_bytes(record(session, ref.kind, ref.id))


# ---------------------------------------------------------------- fixed forms


def rfc3339(utc: datetime, offset: str) -> str:
    """An instant in the given "+hh:mm" offset; milliseconds only when there are any."""
    sign = -1 if offset[0] == "-" else 1
    tz = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])))
    local = utc.astimezone(tz)
    return local.isoformat(timespec="milliseconds" if local.microsecond else "seconds")


def product_uri(gtin: str | None) -> str | None:
    """The Digital Link URI of a product (no lot), or None without a GTIN."""
    return f"{GS1_CANONICAL_BASE}/01/{gtin}" if gtin else None


def _lot_or_missing(session: Session, lot_id: int) -> Lot:
    lot = session.get(Lot, lot_id)
    if lot is None:
        raise RecordNotFound(f"lot {lot_id} does not exist")
    return lot


def _lot_uri(session: Session, lot_id: int | None) -> str | None:
    return None if lot_id is None else canonical_lot_uri(_lot_or_missing(session, lot_id))


def _place(session: Session, plot_id: int | None, facility_id: int | None) -> dict[str, str]:
    if plot_id is not None:
        plot = session.get(Plot, plot_id)
        assert plot is not None
        return {"plot": plot.plot_no, "village": plot.village_code}
    facility = session.get(Facility, facility_id)
    assert facility is not None
    return {"facility": facility.code, "village": facility.village_code}


def _code_of(session: Session, table: type[Farm] | type[Facility], id: int | None) -> str | None:
    if id is None:
        return None
    row = session.get(table, id)
    assert row is not None
    return row.code


def _sorted(items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(items, key=lambda d: rfc8785.dumps(d))


# ---------------------------------------------------------------- the three kinds


def lot_content(session: Session, lot_id: int) -> tuple[dict[str, Any], str]:
    lot = _lot_or_missing(session, lot_id)
    product = lot.product
    assert product is not None
    sources = []
    for s in session.exec(select(LotSource).where(LotSource.lot_id == lot_id)):
        if s.plot_id is not None:
            plot = session.get(Plot, s.plot_id)
            assert plot is not None
            origin = {"plot": plot.plot_no, "village": plot.village_code}
        else:
            herd = session.get(Herd, s.herd_id)
            assert herd is not None
            origin = {"herd": herd.herd_no, "village": herd.village_code}
        sources.append({**origin, "area_mu": s.area_mu})
    parents = [
        {"lot": _lot_uri(session, p.parent_lot_id), "relation": p.relation, "quantity": p.quantity}
        for p in session.exec(select(LotParent).where(LotParent.child_lot_id == lot_id))
    ]
    content = {
        "lot": canonical_lot_uri(lot),
        "code": lot.code,
        "lot_no": lot.lot_no,
        "product": {
            "uri": product_uri(product.gtin),
            "code": product.code,
            "gtin": product.gtin,
            "name_zh": product.name_zh,
            "name_en": product.name_en,
            "variety": product.variety,
        },
        "quantity": lot.quantity,
        "unit": lot.unit,
        "harvest_year": lot.harvest_year,
        "farm": _code_of(session, Farm, lot.farm_id),
        "facility": _code_of(session, Facility, lot.facility_id),
        "sources": _sorted(sources),
        "parents": _sorted(parents),
    }
    return content, lot.salt


def event_lots(session: Session, event_id: int) -> tuple[list[int], list[int]]:
    """(input lot ids, output lot ids) of a transformation event, sorted."""
    rows = session.exec(select(TraceEventLot).where(TraceEventLot.trace_event_id == event_id)).all()
    return (
        sorted(r.lot_id for r in rows if r.role == "input"),
        sorted(r.lot_id for r in rows if r.role == "output"),
    )


def event_content(session: Session, event_id: int) -> tuple[dict[str, Any], str]:
    ev = session.get(TraceEvent, event_id)
    if ev is None:
        raise RecordNotFound(f"trace event {event_id} does not exist")
    inputs, outputs = event_lots(session, event_id)
    content = {
        "event_type": ev.event_type,
        "action": ev.action,
        "biz_step": ev.biz_step,
        "disposition": ev.disposition,
        "event_time": rfc3339(ev.event_time, ev.event_time_zone_offset),
        "event_time_zone_offset": ev.event_time_zone_offset,
        "lot": _lot_uri(session, ev.lot_id),
        "inputs": sorted(_lot_uri(session, i) or "" for i in inputs),
        "outputs": sorted(_lot_uri(session, o) or "" for o in outputs),
        "parent": ev.parent_uri,
        "read_point": _place(session, ev.read_point_plot_id, ev.read_point_facility_id),
        "biz_location": ev.biz_location,
        "attributes": dict(ev.attributes),
        "actor": (
            {"farm": _code_of(session, Farm, ev.actor_farm_id)}
            if ev.actor_farm_id is not None
            else {"facility": _code_of(session, Facility, ev.actor_facility_id)}
        ),
    }
    return content, ev.salt


def inspection_content(session: Session, inspection_id: int) -> tuple[dict[str, Any], str]:
    insp = session.get(Inspection, inspection_id)
    if insp is None:
        raise RecordNotFound(f"inspection {inspection_id} does not exist")
    items = session.exec(select(InspectionItem).where(InspectionItem.inspection_id == inspection_id)).all()
    content = {
        "lot": _lot_uri(session, insp.lot_id),
        "lab": insp.lab,
        "report_no": insp.report_no,
        "sampled_on": insp.sampled_on.isoformat(),
        "reported_on": insp.reported_on.isoformat() if insp.reported_on else None,
        "certificate_sha256": insp.certificate_sha256,
        "passed": insp.passed,
        "items": [
            {
                "item": i.item,
                "value": i.value,
                "unit": i.unit,
                "limit_value": i.limit_value,
                "limit_kind": i.limit_kind,
                "method": i.method,
                "passed": i.passed,
            }
            for i in sorted(items, key=lambda i: i.item)
        ],
    }
    return content, insp.salt


def correction_content(session: Session, correction_id: int) -> tuple[dict[str, Any], str]:
    """An EPCIS error declaration: which event (by its EPCIS event ID), when, why, and what replaces it."""
    c = session.get(EventCorrection, correction_id)
    if c is None:
        raise RecordNotFound(f"event correction {correction_id} does not exist")
    wrong = session.get(TraceEvent, c.event_id)
    corrective = session.get(TraceEvent, c.corrective_event_id) if c.corrective_event_id is not None else None
    assert wrong is not None and wrong.event_id is not None
    content = {
        "event": wrong.event_id,
        "declaration_time": rfc3339(c.declared_at, c.declared_at_offset),
        "reason": CBV_ERROR_REASON + c.reason,
        "corrective_events": [corrective.event_id] if corrective is not None and corrective.event_id else [],
    }
    return content, c.salt


# ---------------------------------------------------------------- the records of a lot


def lot_lineage(session: Session, lot_id: int) -> list[int]:
    """The lot and all its ancestors (through LotParent), the lot first, then ancestors by id."""
    _lot_or_missing(session, lot_id)
    seen = {lot_id}
    frontier = [lot_id]
    while frontier:
        parents = session.exec(select(LotParent.parent_lot_id).where(col(LotParent.child_lot_id).in_(frontier))).all()
        frontier = [p for p in set(parents) if p not in seen]
        seen.update(frontier)
    return [lot_id, *sorted(seen - {lot_id})]


def _events_of(session: Session, lot_ids: list[int]) -> list[RecordRef]:
    direct = select(TraceEvent.id).where(col(TraceEvent.lot_id).in_(lot_ids))
    linked = select(TraceEventLot.trace_event_id).where(col(TraceEventLot.lot_id).in_(lot_ids))
    ids = set(session.exec(direct).all()) | set(session.exec(linked).all())
    events = session.exec(select(TraceEvent).where(col(TraceEvent.id).in_(ids))).all()
    return [RecordRef(EVENT, e.id) for e in sorted(events, key=lambda e: (e.event_time, e.id)) if e.id]


def _inspections_of(session: Session, lot_ids: list[int]) -> list[RecordRef]:
    rows = session.exec(select(Inspection).where(col(Inspection.lot_id).in_(lot_ids))).all()
    return [RecordRef(INSPECTION, i.id) for i in sorted(rows, key=lambda i: (i.sampled_on, i.id)) if i.id]


def _corrections_of(session: Session, events: list[RecordRef]) -> list[RecordRef]:
    ids = [e.id for e in events]
    rows = session.exec(select(EventCorrection.id).where(col(EventCorrection.event_id).in_(ids))).all()
    return [RecordRef(CORRECTION, i) for i in sorted(rows) if i is not None]


def records_of_lot(session: Session, lot_id: int) -> list[RecordRef]:
    """Every record of a lot's trace: the lot and its ancestors (lot first), then their events in
    time order, then their inspections by sampling date, then the error declarations of those
    events, then records of registered collectors."""
    lineage = lot_lineage(session, lot_id)
    refs = [RecordRef(LOT, i) for i in lineage]
    events = _events_of(session, lineage)
    refs += events
    refs += _inspections_of(session, lineage)
    refs += _corrections_of(session, events)
    for kind, collect in _COLLECTORS.items():
        if kind not in (LOT, EVENT, INSPECTION, CORRECTION):
            refs += list(collect(session, lineage))
    return refs


register_kind(LOT, lot_content)
register_kind(EVENT, event_content)
register_kind(INSPECTION, inspection_content)
register_kind(CORRECTION, correction_content)


# ---------------------------------------------------------------- EPCIS view of an event


def id_iri(kind: str, key: str) -> str:
    """The project IRI of a plot, facility, village or farm (used as EPCIS read point and location)."""
    return f"{get_vocab().id_base}/{kind}/{quote(key, safe='')}"


def epcis_event(session: Session, event_id: int) -> dict[str, Any]:
    """A plain EPCIS 2.0 JSON-LD event (no @context, no eventID) for ledger.epcis.

    Lots are class-level identifiers in quantity lists (epcClass = canonical lot URI, uom from
    vocab units; no uom for counted items). Step attributes and the actor are extension fields
    in the project namespace, written with its prefix (vt:dose), which documents declare in
    their @context.
    """
    vocab = get_vocab()
    ev = session.get(TraceEvent, event_id)
    if ev is None:
        raise RecordNotFound(f"trace event {event_id} does not exist")

    def quantity(lot_id: int, amount: float | None = None) -> dict[str, Any]:
        lot = _lot_or_missing(session, lot_id)
        element: dict[str, Any] = {"epcClass": canonical_lot_uri(lot)}
        amount = lot.quantity if amount is None else amount
        if amount is not None:
            unit = vocab.units.get(lot.unit)
            element["quantity"] = round(amount, unit.decimals) + 0.0 if unit else amount
            if unit is not None and unit.uom:
                element["uom"] = unit.uom
        return element

    out: dict[str, Any] = {
        "type": ev.event_type,
        "eventTime": rfc3339(ev.event_time, ev.event_time_zone_offset),
        "eventTimeZoneOffset": ev.event_time_zone_offset,
    }
    if ev.event_type == "TransformationEvent":
        inputs, outputs = event_lots(session, event_id)
        # what each input gave to the outputs: the sum over its LotParent rows, when all are known
        used: dict[int, float | None] = {}
        for p in session.exec(select(LotParent).where(col(LotParent.child_lot_id).in_(outputs))):
            before = used.get(p.parent_lot_id, 0.0)
            used[p.parent_lot_id] = None if before is None or p.quantity is None else before + p.quantity
        if inputs:
            out["inputQuantityList"] = [quantity(i, used.get(i)) for i in inputs]
        if outputs:
            out["outputQuantityList"] = [quantity(o) for o in outputs]
    else:
        out["action"] = ev.action
        if ev.event_type == "AggregationEvent":
            if ev.parent_uri:
                out["parentID"] = ev.parent_uri
            if ev.lot_id is not None:
                out["childQuantityList"] = [quantity(ev.lot_id)]
        elif ev.lot_id is not None:
            out["quantityList"] = [quantity(ev.lot_id)]
    out["bizStep"] = ev.biz_step
    if ev.disposition:
        out["disposition"] = ev.disposition
    place = _place(session, ev.read_point_plot_id, ev.read_point_facility_id)
    out["readPoint"] = {
        "id": id_iri("plot", place["plot"]) if "plot" in place else id_iri("facility", place["facility"])
    }
    out["bizLocation"] = {"id": id_iri("village", ev.biz_location)}
    for name, value in ev.attributes.items():
        out[f"{vocab.prefix}:{name}"] = value
    if ev.actor_farm_id is not None:
        out[f"{vocab.prefix}:actor"] = id_iri("farm", _code_of(session, Farm, ev.actor_farm_id) or "")
    else:
        out[f"{vocab.prefix}:actor"] = id_iri("facility", _code_of(session, Facility, ev.actor_facility_id) or "")
    correction = session.exec(select(EventCorrection).where(EventCorrection.event_id == event_id)).first()
    if correction is not None:  # not part of the event hash (GS1 excludes errorDeclaration)
        corrective = session.get(TraceEvent, correction.corrective_event_id) if correction.corrective_event_id else None
        out["errorDeclaration"] = {
            "declarationTime": rfc3339(correction.declared_at, correction.declared_at_offset),
            "reason": correction.reason,
            **({"correctiveEventIDs": [corrective.event_id]} if corrective and corrective.event_id else {}),
        }
    return out
