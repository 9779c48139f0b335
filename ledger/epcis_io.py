"""EPCIS 2.0 documents in and out of the trace database, for other traceability systems.

`export_lot` writes the events of a lot's trace (its own and its ancestors') as an EPCISDocument
(JSON-LD); `import_document` stores the events of a document whose lots, read points, locations
and actors are already in the registry and trace database, all or nothing. Events are matched by
their GS1 event hash (`eventID`), so importing the same document twice adds nothing, and an event
that is already stored under another notation is recognised as the same event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlmodel import Session, select

from core.models import Farm, Plot, Village
from ledger import epcis
from ledger.codes import GS1_CANONICAL_BASE, normalize_code
from ledger.models import Facility, Lot, Product, TraceEvent, TraceEventLot
from ledger.records import EVENT, epcis_event, records_of_lot
from ledger.vocab import AttributeErrors, UnknownTerm, get_vocab


def export_lot(session: Session, lot: Lot, sender: str | None = None) -> dict[str, Any]:
    """The EPCISDocument of every event of the lot's trace, in time order."""
    assert lot.id is not None
    events = [epcis_event(session, r.id) for r in records_of_lot(session, lot.id) if r.kind == EVENT]
    return epcis.to_document(events, created=datetime.now(UTC), sender=sender)


@dataclass
class EpcisImportResult:
    created: list[int] = field(default_factory=list)  # ids of new trace events
    unchanged: int = 0  # events already stored (same event hash)


class _Resolver:
    """Project IRIs and GS1 Digital Link URIs back to rows."""

    def __init__(self, session: Session) -> None:
        self.session = session
        vocab = get_vocab()
        self.base = vocab.id_base.rstrip("/")
        self.prefix = vocab.prefix

    def _local(self, iri: str, kind: str) -> str | None:
        head = f"{self.base}/{kind}/"
        return iri[len(head) :] if iri.startswith(head) else None

    def lot(self, uri: str) -> Lot | None:
        if uri.startswith(GS1_CANONICAL_BASE + "/01/"):
            parts = uri[len(GS1_CANONICAL_BASE) + 1 :].split("/")
            if len(parts) == 4 and parts[2] == "10":
                return self.session.exec(
                    select(Lot).join(Product).where(Product.gtin == parts[1], Lot.lot_no == parts[3])
                ).first()
            return None
        code = self._local(uri, "t")
        if code is None:
            return None
        try:
            code = normalize_code(code)
        except ValueError:
            return None
        return self.session.exec(select(Lot).where(Lot.code == code)).first()

    def row(self, iri: str, kind: str, table: Any, key: str) -> Any:
        local = self._local(iri, kind)
        return None if local is None else self.session.exec(select(table).where(getattr(table, key) == local)).first()


def import_document(session: Session, doc: dict[str, Any] | str | bytes) -> EpcisImportResult:
    """Store the document's events (staged in `session`; the caller commits). Raises
    epcis.EpcisError listing every problem by JSON pointer; nothing is stored then."""
    events = epcis.from_document(doc)
    r = _Resolver(session)
    vocab = get_vocab()
    result = EpcisImportResult()
    errors: list[tuple[str, str]] = []
    staged: list[tuple[TraceEvent, list[tuple[int, str]]]] = []
    for i, ev in enumerate(events):
        at = f"/epcisBody/eventList/{i}"
        if session.exec(select(TraceEvent.id).where(TraceEvent.event_id == ev["eventID"])).first():
            result.unchanged += 1
            continue
        problems: list[tuple[str, str]] = []

        def lot_of(element: dict[str, Any], path: str, problems: list[tuple[str, str]] = problems) -> Lot | None:
            lot = r.lot(str(element.get("epcClass", "")))
            if lot is None:
                problems.append((path, f"unknown lot {element.get('epcClass')!r}: import the lot first"))
            return lot

        lot_id = None
        links: list[tuple[int, str]] = []
        if ev["type"] == "TransformationEvent":
            for role, key in (("input", "inputQuantityList"), ("output", "outputQuantityList")):
                for j, element in enumerate(ev.get(key, [])):
                    lot = lot_of(element, f"{at}/{key}/{j}")
                    if lot is not None and lot.id is not None:
                        links.append((lot.id, role))
        else:
            key = "childQuantityList" if ev["type"] == "AggregationEvent" else "quantityList"
            elements = ev.get(key, [])
            if len(elements) != 1:
                problems.append((f"{at}/{key}", "exactly one lot (class-level identifier) per event is supported"))
            else:
                lot = lot_of(elements[0], f"{at}/{key}/0")
                lot_id = lot.id if lot else None
        read_iri = str(ev.get("readPoint", {}).get("id", ""))
        plot = r.row(read_iri, "plot", Plot, "plot_no")
        facility = r.row(read_iri, "facility", Facility, "code")
        if plot is None and facility is None:
            problems.append((f"{at}/readPoint/id", f"unknown read point {read_iri!r} (a plot or facility IRI)"))
        village = r.row(str(ev.get("bizLocation", {}).get("id", "")), "village", Village, "code")
        if village is None:
            problems.append((f"{at}/bizLocation/id", "unknown village (a village IRI)"))
        actor_iri = str(ev.get(f"{r.prefix}:actor", ""))
        actor_farm = r.row(actor_iri, "farm", Farm, "code")
        actor_facility = r.row(actor_iri, "facility", Facility, "code")
        if actor_farm is None and actor_facility is None:
            problems.append((f"{at}/{r.prefix}:actor", f"unknown actor {actor_iri!r} (a farm or facility IRI)"))
        attrs = {
            k.split(":", 1)[1]: v for k, v in ev.items() if k.startswith(f"{r.prefix}:") and k != f"{r.prefix}:actor"
        }
        try:
            step = vocab.normalize_step(ev["bizStep"])
            attrs = vocab.validate_attributes(step, attrs)
        except UnknownTerm as e:
            problems.append((f"{at}/bizStep", str(e)))
            step = ""
        except AttributeErrors as e:
            problems += [(f"{at}/{r.prefix}:{name}", msg) for name, msg in e.errors]
        if problems:
            errors += problems
            continue
        when = datetime.fromisoformat(ev["eventTime"].replace("Z", "+00:00"))
        row = TraceEvent(
            event_id=ev["eventID"],
            event_type=ev["type"],
            action=ev.get("action"),
            biz_step=step,
            disposition=vocab.normalize_disposition(ev["disposition"]) if ev.get("disposition") else None,
            event_time=when.astimezone(UTC),
            event_time_zone_offset=ev.get("eventTimeZoneOffset", "+00:00"),
            lot_id=lot_id,
            parent_uri=ev.get("parentID"),
            read_point_plot_id=plot.id if plot else None,
            read_point_facility_id=facility.id if facility and not plot else None,
            biz_location=village.code,  # type: ignore[union-attr]
            attributes=attrs,
            actor_farm_id=actor_farm.id if actor_farm else None,
            actor_facility_id=actor_facility.id if actor_facility and not actor_farm else None,
        )
        staged.append((row, links))
    if errors:
        raise epcis.EpcisError(errors)
    for row, links in staged:
        session.add(row)
        session.flush()
        assert row.id is not None
        for lot_id, role in links:
            session.add(TraceEventLot(trace_event_id=row.id, lot_id=lot_id, role=role))
        result.created.append(row.id)
    session.flush()
    return result
