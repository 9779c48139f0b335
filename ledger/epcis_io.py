"""EPCIS 2.0 documents in and out of the trace database, for other traceability systems.

`export_lot` writes the events of a lot's trace (its own and its ancestors') as an EPCISDocument
(JSON-LD); `import_document` stores the events of a document whose lots, read points, locations
and actors are already in the registry and trace database, all or nothing. Events are matched by
their GS1 event hash (`eventID`), so importing the same document twice adds nothing, and an event
that is already stored under another notation is recognised as the same event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from sqlmodel import Session, select

from core.importing import ImportErrors
from core.models import Farm, Plot, Village
from core.scope import Scope
from ledger import epcis, trace_io
from ledger.codes import GS1_CANONICAL_BASE, normalize_code
from ledger.models import Facility, Lot, Product, TraceEvent
from ledger.records import EVENT, epcis_event, records_of_lot
from ledger.vocab import get_vocab


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


def _time_in_offset(event_time: str, offset: str) -> str:
    """The event time as RFC 3339 in the event's own offset (how the trace importer takes it)."""
    when = datetime.fromisoformat(event_time.replace("Z", "+00:00"))
    sign = -1 if offset.startswith("-") else 1
    hours, minutes = (int(x) for x in offset[1:].split(":"))
    return when.astimezone(timezone(sign * timedelta(hours=hours, minutes=minutes))).isoformat()


def _event_row(ev: dict[str, Any], at: str, r: _Resolver, problems: list[tuple[str, str]]) -> dict[str, Any]:
    """An EPCIS event as a row of the trace importer (ledger.trace_io `events`), its IRIs resolved to codes."""

    def lot_code(element: dict[str, Any], path: str) -> str | None:
        lot = r.lot(str(element.get("epcClass", "")))
        if lot is None:
            problems.append((path, f"unknown lot {element.get('epcClass')!r}: import the lot first"))
        return lot.code if lot else None

    row: dict[str, Any] = {
        "type": ev["type"],
        "step": ev.get("bizStep", ""),
        "time": _time_in_offset(ev["eventTime"], ev.get("eventTimeZoneOffset", "+00:00")),
    }
    for name, key in (("action", "action"), ("disposition", "disposition"), ("parent", "parentID")):
        if ev.get(key) is not None:
            row[name] = ev[key]
    if ev["type"] == "TransformationEvent":
        for name, key in (("inputs", "inputQuantityList"), ("outputs", "outputQuantityList")):
            row[name] = [lot_code(e, f"{at}/{key}/{j}") for j, e in enumerate(ev.get(key, []))]
    else:
        key = "childQuantityList" if ev["type"] == "AggregationEvent" else "quantityList"
        elements = ev.get(key, [])
        if len(elements) != 1:
            problems.append((f"{at}/{key}", "exactly one lot (class-level identifier) per event is supported"))
        else:
            row["lot"] = lot_code(elements[0], f"{at}/{key}/0")
    read_iri = str(ev.get("readPoint", {}).get("id", ""))
    if (plot := r.row(read_iri, "plot", Plot, "plot_no")) is not None:
        row["read_point"] = {"plot_no": plot.plot_no}
    elif (facility := r.row(read_iri, "facility", Facility, "code")) is not None:
        row["read_point"] = {"facility": facility.code}
    else:
        problems.append((f"{at}/readPoint/id", f"unknown read point {read_iri!r} (a plot or facility IRI)"))
    village = r.row(str(ev.get("bizLocation", {}).get("id", "")), "village", Village, "code")
    if village is None:
        problems.append((f"{at}/bizLocation/id", "unknown village (a village IRI)"))
    else:
        row["biz_location"] = village.code
    actor_iri = str(ev.get(f"{r.prefix}:actor", ""))
    if (farm := r.row(actor_iri, "farm", Farm, "code")) is not None:
        row["actor"] = {"farm": farm.code}
    elif (facility := r.row(actor_iri, "facility", Facility, "code")) is not None:
        row["actor"] = {"facility": facility.code}
    else:
        problems.append((f"{at}/{r.prefix}:actor", f"unknown actor {actor_iri!r} (a farm or facility IRI)"))
    row["attributes"] = {
        k.split(":", 1)[1]: v for k, v in ev.items() if k.startswith(f"{r.prefix}:") and k != f"{r.prefix}:actor"
    }
    return row


def import_document(
    session: Session, doc: dict[str, Any] | str | bytes, scope: Scope | None = None
) -> EpcisImportResult:
    """Store the document's events as `scope` (unrestricted by default), through the trace importer, so
    an EPCIS document is checked exactly like a trace file: vocabulary, references, the actor's area.
    Staged in `session` (the caller commits). Raises epcis.EpcisError listing every problem by JSON
    pointer; nothing is stored then. An event whose `eventID` is not the hash of what is stored (fields
    this system does not keep) is refused rather than stored under a name it does not have."""
    events = epcis.from_document(doc)
    r = _Resolver(session)
    result = EpcisImportResult()
    errors: list[tuple[str, str]] = []
    rows: list[dict[str, Any]] = []
    where: list[int] = []  # row index -> event index in the document
    for i, ev in enumerate(events):
        if session.exec(select(TraceEvent.id).where(TraceEvent.event_id == ev["eventID"])).first():
            result.unchanged += 1
            continue
        problems: list[tuple[str, str]] = []
        row = _event_row(ev, f"/epcisBody/eventList/{i}", r, problems)
        errors += problems
        rows.append(row)
        where.append(i)
    if errors:
        raise epcis.EpcisError(errors)
    if not rows:
        return result
    try:
        imported = trace_io.import_trace_data(session, {"events": rows}, source="EPCIS document", scope=scope)
    except ImportErrors as e:
        pointer = [
            (f"/epcisBody/eventList/{where[x.index]}" if x.index is not None else "/")
            + (f" ({x.field})" if x.field else "")
            for x in e.errors
        ]
        raise epcis.EpcisError([(p, x.message) for p, x in zip(pointer, e.errors, strict=True)]) from None
    wrong = []
    by_index = dict(zip(range(len(rows)), where, strict=True))
    for n, event_id in enumerate(imported.event_ids):
        stored = session.get(TraceEvent, event_id)
        given = events[by_index[n]]["eventID"]
        if stored is not None and stored.event_id != given:
            wrong.append(
                (
                    f"/epcisBody/eventList/{by_index[n]}/eventID",
                    f"{given} is not the hash of the event as "
                    f"recorded here ({stored.event_id}): it carries fields this system does not keep",
                )
            )
    if wrong:
        session.rollback()
        raise epcis.EpcisError(wrong)
    result.created = list(imported.event_ids)
    result.unchanged += sum(imported.unchanged.values())
    return result
